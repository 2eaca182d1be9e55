/**
 * Codecs of the x86 Linux boot protocol's structures
 * (`arch/x86/include/uapi/asm/bootparam.h`, Documentation/arch/x86/boot.rst):
 * the setup header found in a bzImage at offset 0x1f1, and the "zero page"
 * (`struct boot_params`) a boot loader hands the kernel. They are not KVM
 * structs, so they live here rather than in `src/abi/`.
 *
 * @module
 */

import { defineStruct, type StructDef } from "../abi/struct.ts";

/** Where the setup header starts, both in a bzImage and in `struct boot_params`. */
export const SETUP_HEADER_OFFSET = 0x1f1;
/** `"HdrS"` read as a little-endian u32: the setup header's magic. */
export const HDRS_MAGIC = 0x53726448;
/** The `boot_flag` value (the old boot sector signature). */
export const BOOT_FLAG = 0xaa55;

/** `loadflags` bit: the protected-mode code is loaded at 1 MiB. */
export const LOADED_HIGH = 0x01;
/** `loadflags` bit: `heap_end_ptr` is valid. */
export const CAN_USE_HEAP = 0x80;
/** `xloadflags` bit: the kernel has the 64-bit entry point at load address + 0x200. */
export const XLF_KERNEL_64 = 0x01;
/** `xloadflags` bit: the kernel, boot_params, command line and ramdisk may live above 4 GiB. */
export const XLF_CAN_BE_LOADED_ABOVE_4G = 0x02;

/** E820 type of usable RAM. */
export const E820_RAM = 1;
/** E820 type of reserved memory. */
export const E820_RESERVED = 2;
/** Entries `boot_params.e820_table` holds. */
export const E820_MAX_ENTRIES = 128;
/** Offset of `e820_table` in `struct boot_params`. */
export const E820_TABLE_OFFSET = 0x2d0;
/** Size of one packed `struct boot_e820_entry`. */
export const E820_ENTRY_SIZE = 20;

/** Field layout of the setup header, offsets from its start at 0x1f1. */
export const setupHeaderFields = {
  setupSects: { offset: 0x00, type: "u8" },
  rootFlags: { offset: 0x01, type: "u16" },
  syssize: { offset: 0x03, type: "u32" },
  ramSize: { offset: 0x07, type: "u16" },
  vidMode: { offset: 0x09, type: "u16" },
  rootDev: { offset: 0x0b, type: "u16" },
  bootFlag: { offset: 0x0d, type: "u16" },
  jump: { offset: 0x0f, type: "u16" },
  header: { offset: 0x11, type: "u32" },
  version: { offset: 0x15, type: "u16" },
  realmodeSwtch: { offset: 0x17, type: "u32" },
  startSysSeg: { offset: 0x1b, type: "u16" },
  kernelVersion: { offset: 0x1d, type: "u16" },
  typeOfLoader: { offset: 0x1f, type: "u8" },
  loadflags: { offset: 0x20, type: "u8" },
  setupMoveSize: { offset: 0x21, type: "u16" },
  code32Start: { offset: 0x23, type: "u32" },
  ramdiskImage: { offset: 0x27, type: "u32" },
  ramdiskSize: { offset: 0x2b, type: "u32" },
  bootsectKludge: { offset: 0x2f, type: "u32" },
  heapEndPtr: { offset: 0x33, type: "u16" },
  extLoaderVer: { offset: 0x35, type: "u8" },
  extLoaderType: { offset: 0x36, type: "u8" },
  cmdLinePtr: { offset: 0x37, type: "u32" },
  initrdAddrMax: { offset: 0x3b, type: "u32" },
  kernelAlignment: { offset: 0x3f, type: "u32" },
  relocatableKernel: { offset: 0x43, type: "u8" },
  minAlignment: { offset: 0x44, type: "u8" },
  xloadflags: { offset: 0x45, type: "u16" },
  cmdlineSize: { offset: 0x47, type: "u32" },
  hardwareSubarch: { offset: 0x4b, type: "u32" },
  hardwareSubarchData: { offset: 0x4f, type: "u64" },
  payloadOffset: { offset: 0x57, type: "u32" },
  payloadLength: { offset: 0x5b, type: "u32" },
  setupData: { offset: 0x5f, type: "u64" },
  prefAddress: { offset: 0x67, type: "u64" },
  initSize: { offset: 0x6f, type: "u32" },
  handoverOffset: { offset: 0x73, type: "u32" },
  kernelInfoOffset: { offset: 0x77, type: "u32" },
} as const;
/** `struct setup_header` (packed, 0x7b bytes as of boot protocol 2.15). */
export const SetupHeader: StructDef<typeof setupHeaderFields> = defineStruct(
  "struct setup_header",
  0x7b,
  setupHeaderFields,
);

/** Field layout of the zero page: the members a boot loader fills in. */
export const bootParamsFields = {
  acpiRsdpAddr: { offset: 0x070, type: "u64" },
  extRamdiskImage: { offset: 0x0c0, type: "u32" },
  extRamdiskSize: { offset: 0x0c4, type: "u32" },
  extCmdLinePtr: { offset: 0x0c8, type: "u32" },
  altMemK: { offset: 0x1e0, type: "u32" },
  e820Entries: { offset: 0x1e8, type: "u8" },
  sentinel: { offset: 0x1ef, type: "u8" },
  hdr: { offset: SETUP_HEADER_OFFSET, type: SetupHeader },
} as const;
/** `struct boot_params`, the 4 KiB zero page. */
export const BootParams: StructDef<typeof bootParamsFields> = defineStruct(
  "struct boot_params",
  4096,
  bootParamsFields,
);

/** One E820 memory map entry. */
export interface E820Entry {
  /** Start address. */
  addr: number;
  /** Length in bytes. */
  size: number;
  /** {@linkcode E820_RAM}, {@linkcode E820_RESERVED}, ... */
  type: number;
}

/**
 * Writes `entries` into the zero page's `e820_table` and sets `e820_entries`.
 * Throws a RangeError past {@linkcode E820_MAX_ENTRIES}.
 */
export function writeE820(zeroPage: Uint8Array, entries: readonly E820Entry[]): void {
  if (entries.length > E820_MAX_ENTRIES) {
    throw new RangeError(`${entries.length} E820 entries exceed ${E820_MAX_ENTRIES}`);
  }
  const view = new DataView(zeroPage.buffer, zeroPage.byteOffset, zeroPage.byteLength);
  entries.forEach((e, i) => {
    const at = E820_TABLE_OFFSET + i * E820_ENTRY_SIZE;
    view.setBigUint64(at, BigInt(e.addr), true);
    view.setBigUint64(at + 8, BigInt(e.size), true);
    view.setUint32(at + 16, e.type, true);
  });
  view.setUint8(0x1e8, entries.length);
}
