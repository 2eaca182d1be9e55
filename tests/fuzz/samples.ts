// Small valid inputs for the loaders, built here (no distribution kernel
// needed): a 256-byte ELF kernel, the same compressed with xz-utils
// (`xz --check=crc32 --x86`), and a bzImage around it. The fuzzers mutate
// them; the regression tests bend one header field each.

import { SETUP_HEADER_OFFSET, SetupHeader } from "../../src/boot/boot_params.ts";

const data = (name: string) => Deno.readFileSync(new URL(`data/${name}`, import.meta.url));

/** An x86-64 ELF kernel: one PT_LOAD of 64 `hlt`s at 16 MiB and a PT_NOTE inside it. */
export function tinyElf(): Uint8Array<ArrayBuffer> {
  return data("tiny_vmlinux.elf");
}

/** {@linkcode tinyElf} compressed by xz-utils. */
export function tinyXz(): Uint8Array<ArrayBuffer> {
  return data("tiny_vmlinux.xz");
}

/** Fields of {@linkcode tinyBzImage} to override. */
export interface BzImageFields {
  /** `cmdline_size` (default 2047). */
  cmdlineSize?: number;
  /** `init_size` (default 16 MiB). */
  initSize?: number;
  /** `initrd_addr_max` (default 0x7fffffff). */
  initrdAddrMax?: number;
}

/**
 * A bzImage (boot protocol 2.15, 64-bit entry, relocatable) whose kernel is
 * an xz payload of {@linkcode tinyElf}, as `extractVmlinux` expects it: the
 * stream followed by the decompressed size (le32).
 */
export function tinyBzImage(fields: BzImageFields = {}): Uint8Array<ArrayBuffer> {
  const xz = tinyXz();
  const elf = tinyElf();
  const setupSects = 1;
  const setupSize = (setupSects + 1) * 512;
  const payloadOffset = 0x40;
  const kernel = new Uint8Array(Math.ceil((payloadOffset + xz.length + 4) / 16) * 16);
  kernel.set(xz, payloadOffset);
  new DataView(kernel.buffer).setUint32(payloadOffset + xz.length, elf.length, true);
  const image = new Uint8Array(setupSize + kernel.length);
  image.set(kernel, setupSize);
  const hdr = new SetupHeader(
    image.subarray(SETUP_HEADER_OFFSET, SETUP_HEADER_OFFSET + SetupHeader.size),
  );
  hdr.setupSects = setupSects;
  hdr.syssize = kernel.length / 16;
  hdr.bootFlag = 0xaa55;
  hdr.jump = 0x78eb; // jmp short over the header (0x202 + 0x78 = 0x27a)
  hdr.header = 0x53726448;
  hdr.version = 0x020f;
  hdr.loadflags = 0x01;
  hdr.kernelAlignment = 0x200000;
  hdr.relocatableKernel = 1;
  hdr.xloadflags = 0x03;
  hdr.cmdlineSize = fields.cmdlineSize ?? 2047;
  hdr.initrdAddrMax = fields.initrdAddrMax ?? 0x7fffffff;
  hdr.payloadOffset = payloadOffset;
  hdr.payloadLength = xz.length + 4;
  hdr.prefAddress = 0x1000000n;
  hdr.initSize = fields.initSize ?? 0x1000000;
  return image;
}

/** {@linkcode tinyElf} with its PT_NOTE's `p_filesz` set to `size`. */
export function elfWithNoteSize(size: bigint): Uint8Array<ArrayBuffer> {
  const elf = tinyElf();
  new DataView(elf.buffer).setBigUint64(64 + 56 + 32, size, true);
  return elf;
}
