/**
 * The ELF64 reader for uncompressed x86-64 kernels (`vmlinux`, or the payload
 * of a bzImage): the entry point and the loadable segments, checked against
 * the file, so a kernel can be placed at its physical addresses directly.
 * Also the one program-header walker of the loaders (ELF32 and ELF64): the
 * Multiboot loader and `compactElf` read their segments with it.
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
  /**
   * The bytes from the file (`p_filesz` of them), or, when the ELF was
   * parsed from its head only (`parseElfKernel`'s `fileSize`), the part of
   * them inside that head (usually none): see `fileSize`.
   */
  readonly bytes: Uint8Array;
  /** Size in memory (`p_memsz`); past the file bytes it is zero. */
  readonly memorySize: number;
  /** Where the segment's bytes start in the file (`p_offset`), for a segment of an ELF file. */
  readonly fileOffset?: number;
  /**
   * `p_filesz`, for a segment of an ELF file: more than `bytes.length` when
   * the rest is still in the file (to be read straight into guest RAM).
   */
  readonly fileSize?: number;
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

/** One entry of an ELF file's program-header table, as {@linkcode elfProgramHeaders} reads it. */
export interface ElfProgramHeader {
  /** Its index in the table. */
  readonly index: number;
  /** Where the entry itself lies in the file. */
  readonly at: number;
  /** `p_type` ({@linkcode PT_LOAD}: a segment to place in memory). */
  readonly type: number;
  /** `p_offset`: where the segment's bytes start in the file. */
  readonly offset: number;
  /** `p_paddr`. */
  readonly physicalAddress: number;
  /** `p_filesz`. */
  readonly fileSize: number;
  /** `p_memsz`. */
  readonly memorySize: number;
}

/**
 * The program headers of a little-endian ELF32 or ELF64 file (by `e_ident`'s
 * class byte; the caller has checked the magic, the class and that the file
 * holds the ELF header). 64-bit fields become numbers: values past 2^53 are
 * inexact, and too large for any check they meet. Throws `bad("the program
 * headers lie outside the file")` when the table does not fit in the file or
 * its entries are too small; segments' own ranges are the caller's to check
 * (see {@linkcode loadableSegments}).
 */
export function elfProgramHeaders(
  image: Uint8Array,
  bad: (detail: string) => Error,
): ElfProgramHeader[] {
  const is64 = image[4] === 2;
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  // ELF32 and ELF64 differ in field widths and places (the ELF spec's Elf32_Phdr / Elf64_Phdr).
  const word = is64
    ? (at: number) => Number(view.getBigUint64(at, true))
    : (at: number) => view.getUint32(at, true);
  const [offsetAt, paddrAt, fileszAt, memszAt] = is64 ? [8, 24, 32, 40] : [4, 12, 16, 20];
  const phoff = word(is64 ? 32 : 28);
  const phentsize = view.getUint16(is64 ? 54 : 42, true);
  const phnum = view.getUint16(is64 ? 56 : 44, true);
  if (phentsize < (is64 ? 56 : 32) || phoff + phnum * phentsize > image.length) {
    throw bad("the program headers lie outside the file");
  }
  const headers: ElfProgramHeader[] = [];
  for (let index = 0; index < phnum; index++) {
    const at = phoff + index * phentsize;
    headers.push({
      index,
      at,
      type: view.getUint32(at, true),
      offset: word(at + offsetAt),
      physicalAddress: word(at + paddrAt),
      fileSize: word(at + fileszAt),
      memorySize: word(at + memszAt),
    });
  }
  return headers;
}

/**
 * The `PT_LOAD` entries of `headers`, each checked to lie inside `image`
 * (or a file of `fileSize` bytes that `image` begins) with `p_filesz <=
 * p_memsz` (else `bad("segment N (... bytes at file offset ...) is
 * truncated")`).
 */
export function loadableSegments(
  image: Uint8Array,
  headers: readonly ElfProgramHeader[],
  bad: (detail: string) => Error,
  fileSize: number = image.length,
): ElfProgramHeader[] {
  const loads = headers.filter((h) => h.type === PT_LOAD);
  for (const h of loads) {
    if (h.offset + h.fileSize > fileSize || h.fileSize > h.memorySize) {
      throw bad(
        `segment ${h.index} (${h.fileSize} bytes at file offset ${hex(h.offset)}) is truncated`,
      );
    }
  }
  return loads;
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
 *
 * With `fileSize`, `image` is only the file's beginning (its ELF and program
 * headers at least) and the segments are checked against `fileSize`: each
 * segment's `bytes` is then the part inside `image`, and its `fileOffset` and
 * `fileSize` say where the rest is, for a loader that reads it from the file
 * straight into guest RAM.
 */
export function parseElfKernel(image: Uint8Array, options: { fileSize?: number } = {}): ElfKernel {
  const fileSize = options.fileSize ?? image.length;
  if (!isElf(image)) throw bad("no ELF magic");
  if (image.length < 64) throw bad(`${image.length} bytes is shorter than an ELF header`);
  if (!Number.isSafeInteger(fileSize) || fileSize < image.length) {
    throw bad(`a file of ${fileSize} bytes cannot begin with ${image.length}`);
  }
  if (image[4] !== 2 || image[5] !== 1) throw bad("not a 64-bit little-endian ELF");
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const machine = view.getUint16(18, true);
  if (machine !== EM_X86_64) throw bad(`machine ${machine} is not x86-64 (${EM_X86_64})`);
  const entry = view.getBigUint64(24, true);
  const segments: ElfSegment[] = [];
  for (const h of loadableSegments(image, elfProgramHeaders(image, bad), bad, fileSize)) {
    const { index, offset, physicalAddress: paddr, memorySize } = h;
    if (paddr < 0x100000 || !Number.isSafeInteger(paddr + memorySize)) {
      throw bad(`segment ${index} has physical address ${hex(paddr)}, below 1 MiB or too high`);
    }
    segments.push({
      physicalAddress: paddr,
      bytes: image.subarray(Math.min(offset, image.length), offset + h.fileSize),
      memorySize,
      fileOffset: offset,
      fileSize: h.fileSize,
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
