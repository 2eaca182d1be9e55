/**
 * The ELF64 reader for uncompressed x86-64 kernels (`vmlinux`, or the payload
 * of a bzImage): the entry point and the loadable segments, checked against
 * the file, so a kernel can be placed at its physical addresses directly.
 *
 * @module
 */

import { Errno } from "../errors.ts";
import { hex } from "../kvm/constants.ts";
import { BootImageError } from "./boot_image_error.ts";

/** `PT_LOAD`: a segment to place in memory. */
export const PT_LOAD = 1;
/** `EM_X86_64`. */
export const EM_X86_64 = 62;
/** Where Linux maps its kernel image in virtual memory (`__START_KERNEL_map`). */
export const START_KERNEL_MAP = 0xffffffff80000000n;

/** One `PT_LOAD` segment of an ELF kernel. */
export interface ElfSegment {
  /** Guest physical address to load at (`p_paddr`). */
  readonly physicalAddress: number;
  /** The bytes from the file (`p_filesz` of them). */
  readonly bytes: Uint8Array;
  /** Size in memory (`p_memsz`); past the file bytes it is zero. */
  readonly memorySize: number;
}

/** What {@linkcode parseElfKernel} found. */
export interface ElfKernel {
  /** The physical address to enter at (64-bit mode). */
  readonly entry: number;
  /** Loadable segments, in file order. */
  readonly segments: readonly ElfSegment[];
  /** The lowest physical address a segment uses. */
  readonly start: number;
  /** The first physical address past every segment. */
  readonly end: number;
}

/** Whether `image` starts with the ELF magic. */
export function isElf(image: Uint8Array): boolean {
  return image.length >= 4 && image[0] === 0x7f && image[1] === 0x45 && image[2] === 0x4c &&
    image[3] === 0x46;
}

function bad(detail: string): BootImageError {
  return new BootImageError(
    "bad-elf",
    Errno.ENOEXEC,
    `not a loadable x86-64 ELF kernel: ${detail}`,
  );
}

/**
 * Parses a 64-bit little-endian x86-64 ELF executable and its `PT_LOAD`
 * segments; every segment must lie inside the file and above 1 MiB. The entry
 * (`e_entry`) may be physical or in the kernel map; it is returned physical.
 */
export function parseElfKernel(image: Uint8Array): ElfKernel {
  if (!isElf(image)) throw bad("no ELF magic");
  if (image.length < 64) throw bad(`${image.length} bytes is shorter than an ELF header`);
  if (image[4] !== 2 || image[5] !== 1) throw bad("not a 64-bit little-endian ELF");
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const machine = view.getUint16(18, true);
  if (machine !== EM_X86_64) throw bad(`machine ${machine} is not x86-64 (${EM_X86_64})`);
  const entry = view.getBigUint64(24, true);
  const phoff = Number(view.getBigUint64(32, true));
  const phentsize = view.getUint16(54, true);
  const phnum = view.getUint16(56, true);
  if (phentsize < 56 || phoff + phnum * phentsize > image.length) {
    throw bad("the program headers lie outside the file");
  }
  const segments: ElfSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (view.getUint32(at, true) !== PT_LOAD) continue;
    const offset = Number(view.getBigUint64(at + 8, true));
    const paddr = Number(view.getBigUint64(at + 24, true));
    const filesz = Number(view.getBigUint64(at + 32, true));
    const memsz = Number(view.getBigUint64(at + 40, true));
    if (offset + filesz > image.length || filesz > memsz) {
      throw bad(`segment ${i} (${filesz} bytes at file offset ${hex(offset)}) is truncated`);
    }
    if (paddr < 0x100000 || !Number.isSafeInteger(paddr + memsz)) {
      throw bad(`segment ${i} has physical address ${hex(paddr)}, below 1 MiB or too high`);
    }
    segments.push({
      physicalAddress: paddr,
      bytes: image.subarray(offset, offset + filesz),
      memorySize: memsz,
    });
  }
  if (segments.length === 0) throw bad("no loadable segment");
  const start = Math.min(...segments.map((s) => s.physicalAddress));
  const end = Math.max(...segments.map((s) => s.physicalAddress + s.memorySize));
  const physicalEntry = Number(entry >= START_KERNEL_MAP ? entry - START_KERNEL_MAP : entry);
  if (physicalEntry < start || physicalEntry >= end) {
    throw bad(`the entry point ${hex(entry)} is outside the loadable segments`);
  }
  return { entry: physicalEntry, segments, start, end };
}
