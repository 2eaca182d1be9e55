/**
 * The Multiboot (version 1) loader: finds and checks the Multiboot header of
 * a kernel image, places its segments (from the ELF program headers, or from
 * the header's own addresses, the "a.out kludge"), and lays out the Multiboot
 * information structure (memory sizes, a memory map, the command line and
 * modules) after the kernel, where QEMU's loader puts it. The machine then
 * enters the kernel in flat 32-bit protected mode with paging off,
 * `EAX = 0x2BADB002` and `EBX` = the information structure
 * (the Multiboot Specification 0.6.96, section 3.2, "Machine state").
 *
 * Every check runs before any VM exists; a refused image raises a
 * {@linkcode MultibootError} that names the check.
 *
 * @example
 * ```ts
 * import { planMultibootBoot } from "@deno-kvm/kvm/vmm";
 * const kernel = Deno.readFileSync("x86/msr.flat");
 * const plan = planMultibootBoot(kernel, {
 *   memorySize: 256 << 20,
 *   cmdline: "x86/msr.flat",
 *   modules: [{ data: new TextEncoder().encode("NR_CPUS=1\n"), cmdline: "env" }],
 * });
 * console.log(plan.entry.toString(16), plan.infoAddress.toString(16));
 * ```
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";
import { hex } from "../kvm/constants.ts";
import { elfProgramHeaders, loadableSegments } from "./elf.ts";
import { BIOS_AREA_ADDRESS, EBDA_ADDRESS } from "./address_map.ts";

/** The magic number that starts a Multiboot header. */
export const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
/** What the loader leaves in EAX for the kernel. */
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;
/** The header must lie within the image's first 8192 bytes, 4-byte aligned. */
export const MULTIBOOT_SEARCH = 8192;

/** Header flags (bits 0-15 are requirements: a loader that lacks one must refuse). */
export const MultibootHeaderFlag = {
  /** Modules page-aligned. */
  PAGE_ALIGN: 1 << 0,
  /** mem_* and mmap_* fields wanted. */
  MEMORY_INFO: 1 << 1,
  /** A video mode wanted (not offered by this loader). */
  VIDEO_MODE: 1 << 2,
  /** The header's address fields are valid: load by them, not by ELF ("a.out kludge"). */
  AOUT_KLUDGE: 1 << 16,
} as const;

/** Information-structure flags set by this loader. */
export const MultibootInfoFlag = {
  /** mem_lower / mem_upper. */
  MEMORY: 1 << 0,
  /** cmdline. */
  CMDLINE: 1 << 2,
  /** mods_count / mods_addr. */
  MODS: 1 << 3,
  /** mmap_length / mmap_addr. */
  MMAP: 1 << 6,
  /** boot_loader_name. */
  LOADER_NAME: 1 << 9,
} as const;

/** Memory-map entry types. */
export const MultibootMemoryType = {
  /** Usable RAM. */
  AVAILABLE: 1,
  /** Reserved. */
  RESERVED: 2,
} as const;

/** Size of the information structure written (up to and including the APM table field). */
export const MULTIBOOT_INFO_SIZE = 88;

/** Why an image or its companions were refused. */
export type MultibootProblem =
  /** No Multiboot header in the first 8 KiB. */
  | "no-header"
  /** The header's checksum does not make magic + flags + checksum zero. */
  | "bad-checksum"
  /** The header asks for something this loader does not do (bits 0-15). */
  | "unsupported-flags"
  /** The a.out-kludge addresses are inconsistent or outside the file. */
  | "bad-address-fields"
  /** Not a loadable 32/64-bit little-endian x86 ELF executable. */
  | "bad-elf"
  /** A segment, the information structure or a module does not fit in guest RAM. */
  | "does-not-fit"
  /** The memory size is not usable. */
  | "bad-memory-size";

/**
 * A Multiboot image, module, command line or memory size refused by the
 * loader, before any VM is created. A {@linkcode KvmError} (operation
 * `"load multiboot kernel"`) whose `problem` says which check failed.
 */
export class MultibootError extends KvmError {
  /** Which check failed. */
  readonly problem: MultibootProblem;

  /** Creates the error; `detail` is the human-readable reason. */
  constructor(problem: MultibootProblem, errno: number, detail: string) {
    super("load multiboot kernel", errno, detail);
    this.name = "MultibootError";
    this.problem = problem;
  }
}

/** The Multiboot header as found in the image. */
export interface MultibootHeader {
  /** Offset of the header in the file. */
  readonly offset: number;
  /** The flags word. */
  readonly flags: number;
  /** With {@linkcode MultibootHeaderFlag.AOUT_KLUDGE}: the header's physical address. */
  readonly headerAddr: number;
  /** With the a.out kludge: where the text segment starts (physical). */
  readonly loadAddr: number;
  /** With the a.out kludge: end of the data to load (0: to the end of the file). */
  readonly loadEndAddr: number;
  /** With the a.out kludge: end of the bss (0: no bss). */
  readonly bssEndAddr: number;
  /** With the a.out kludge: the entry point. */
  readonly entryAddr: number;
}

/** One piece of the image to place in guest memory. */
export interface MultibootSegment {
  /** Guest physical address. */
  readonly address: number;
  /** The bytes from the file. */
  readonly bytes: Uint8Array;
  /** Size in memory; past `bytes` it is zero (bss). */
  readonly memorySize: number;
}

/** What {@linkcode parseMultiboot} found. */
export interface MultibootImage {
  /** The header. */
  readonly header: MultibootHeader;
  /** How the segments were found. */
  readonly format: "elf" | "aout-kludge";
  /** The physical entry point (entered in 32-bit protected mode). */
  readonly entry: number;
  /** Segments to load. */
  readonly segments: readonly MultibootSegment[];
  /** The lowest physical address used. */
  readonly start: number;
  /** The first physical address past every segment (bss included). */
  readonly end: number;
}

/** A module handed to the kernel (an initrd; for kvm-unit-tests, its environment file). */
export interface MultibootModule {
  /** The module's bytes. */
  readonly data: Uint8Array;
  /** Its command line (a name; QEMU passes the file name). */
  readonly cmdline?: string;
}

/** One entry of the memory map. */
export interface MultibootMemoryRange {
  /** Start address. */
  readonly base: number;
  /** Length in bytes. */
  readonly length: number;
  /** {@linkcode MultibootMemoryType}. */
  readonly type: number;
}

/** Options of {@linkcode planMultibootBoot}. */
export interface MultibootBootOptions {
  /** Guest RAM in bytes. */
  memorySize: number;
  /**
   * Where RAM beyond `lowMemoryLimit` is mapped instead (default 4 GiB): RAM
   * is `[0, min(memorySize, lowMemoryLimit))` plus the rest from here.
   */
  highMemoryStart?: number;
  /** The most RAM placed below 4 GiB (default 3 GiB: the PCI hole above stays free). */
  lowMemoryLimit?: number;
  /** The kernel's command line (by convention its first word is the kernel's name). */
  cmdline?: string;
  /** Modules, in order. */
  modules?: readonly MultibootModule[];
  /** The loader's name (`boot_loader_name`; default "deno-kvm"). */
  loaderName?: string;
}

/** A placed module. */
export interface PlacedModule {
  /** Start address. */
  readonly start: number;
  /** First address past it. */
  readonly end: number;
}

/** Everything to write into guest RAM and the register values at entry. */
export interface MultibootBootPlan {
  /** The parsed image. */
  readonly image: MultibootImage;
  /** The entry point (EIP). */
  readonly entry: number;
  /** Address of the information structure (EBX). */
  readonly infoAddress: number;
  /** The information structure and what it points to (memory map, strings, module list). */
  readonly info: Uint8Array;
  /** Where the modules go. */
  readonly modules: readonly PlacedModule[];
  /** The memory map given to the kernel. */
  readonly memoryMap: readonly MultibootMemoryRange[];
  /** RAM below `lowMemoryLimit`, mapped at 0. */
  readonly lowMemorySize: number;
  /** RAM mapped at `highMemoryStart` (0 when none). */
  readonly highMemorySize: number;
  /** Where the high RAM starts. */
  readonly highMemoryStart: number;
  /** The first address past everything the loader placed. */
  readonly end: number;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const PAGE = 4096;

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

/**
 * Finds the Multiboot header: the first 4-byte-aligned magic in the first
 * 8 KiB whose checksum is right. Returns null when there is no magic at all;
 * throws {@linkcode MultibootError} `"bad-checksum"` when every magic found has
 * a wrong checksum.
 */
export function findMultibootHeader(image: Uint8Array): MultibootHeader | null {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const limit = Math.min(MULTIBOOT_SEARCH, image.length) - 12;
  let badChecksumAt = -1;
  for (let at = 0; at <= limit; at += 4) {
    if (view.getUint32(at, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = view.getUint32(at + 4, true);
    const checksum = view.getUint32(at + 8, true);
    if (((MULTIBOOT_HEADER_MAGIC + flags + checksum) >>> 0) !== 0) {
      if (badChecksumAt < 0) badChecksumAt = at;
      continue;
    }
    const field = (i: number) =>
      at + 12 + 4 * i + 4 <= image.length ? view.getUint32(at + 12 + 4 * i, true) : 0;
    return {
      offset: at,
      flags,
      headerAddr: field(0),
      loadAddr: field(1),
      loadEndAddr: field(2),
      bssEndAddr: field(3),
      entryAddr: field(4),
    };
  }
  if (badChecksumAt >= 0) {
    throw new MultibootError(
      "bad-checksum",
      Errno.ENOEXEC,
      `the Multiboot header at offset ${hex(badChecksumAt)} has a wrong checksum`,
    );
  }
  return null;
}

/** Whether `image` carries a valid Multiboot header (never throws). */
export function isMultiboot(image: Uint8Array): boolean {
  try {
    return findMultibootHeader(image) !== null;
  } catch {
    return false;
  }
}

function badElf(detail: string): MultibootError {
  return new MultibootError(
    "bad-elf",
    Errno.ENOEXEC,
    `not a loadable x86 ELF executable: ${detail}`,
  );
}

/** ELF32 or ELF64 (`EM_386` / `EM_X86_64`), `PT_LOAD` segments at their physical addresses. */
function parseElfSegments(image: Uint8Array): { entry: number; segments: MultibootSegment[] } {
  if (
    image.length < 52 || image[0] !== 0x7f || image[1] !== 0x45 || image[2] !== 0x4c ||
    image[3] !== 0x46
  ) {
    throw badElf("no ELF magic and no a.out-kludge addresses in the Multiboot header");
  }
  const is64 = image[4] === 2;
  if ((image[4] !== 1 && !is64) || image[5] !== 1) throw badElf("not a little-endian ELF32/ELF64");
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (view.getUint16(16, true) !== 2) throw badElf("not an executable (ET_EXEC)");
  const machine = view.getUint16(18, true);
  if (machine !== 3 && machine !== 62) throw badElf(`machine ${machine} is not x86 (3 or 62)`);
  if (is64 && image.length < 64) throw badElf("truncated ELF64 header");
  const entry = is64 ? Number(view.getBigUint64(24, true)) : view.getUint32(24, true);
  const segments: MultibootSegment[] = [];
  for (const h of loadableSegments(image, elfProgramHeaders(image, badElf), badElf)) {
    if (h.memorySize === 0) continue;
    segments.push({
      address: h.physicalAddress,
      bytes: image.subarray(h.offset, h.offset + h.fileSize),
      memorySize: h.memorySize,
    });
  }
  if (segments.length === 0) throw badElf("no loadable segment");
  return { entry, segments };
}

/**
 * Parses a Multiboot kernel: the header (required flags checked), then its
 * segments from the a.out-kludge addresses when flag 16 is set, else from the
 * ELF program headers. The entry must lie inside a segment and everything
 * below 4 GiB. Throws {@linkcode MultibootError}.
 */
export function parseMultiboot(image: Uint8Array): MultibootImage {
  const header = findMultibootHeader(image);
  if (!header) {
    throw new MultibootError(
      "no-header",
      Errno.ENOEXEC,
      `no Multiboot header (magic ${
        hex(MULTIBOOT_HEADER_MAGIC)
      }) in the first ${MULTIBOOT_SEARCH} bytes`,
    );
  }
  const known = MultibootHeaderFlag.PAGE_ALIGN | MultibootHeaderFlag.MEMORY_INFO;
  const unknown = header.flags & 0xffff & ~known;
  if (unknown !== 0) {
    throw new MultibootError(
      "unsupported-flags",
      Errno.ENOEXEC,
      `the Multiboot header requires flags ${hex(unknown)} (${
        unknown & MultibootHeaderFlag.VIDEO_MODE ? "a video mode" : "unknown features"
      }), which this loader does not offer`,
    );
  }
  let format: MultibootImage["format"];
  let entry: number;
  let segments: MultibootSegment[];
  if (header.flags & MultibootHeaderFlag.AOUT_KLUDGE) {
    format = "aout-kludge";
    const { offset, headerAddr, loadAddr, loadEndAddr, bssEndAddr, entryAddr } = header;
    const bad = (detail: string) =>
      new MultibootError("bad-address-fields", Errno.ENOEXEC, `a.out-kludge header: ${detail}`);
    if (offset + 32 > image.length) {
      throw bad("the address fields are cut off by the end of the file");
    }
    if (loadAddr > headerAddr) {
      throw bad(`load_addr ${hex(loadAddr)} is above header_addr ${hex(headerAddr)}`);
    }
    const fileStart = offset - (headerAddr - loadAddr);
    if (fileStart < 0) throw bad(`header_addr - load_addr reaches before the start of the file`);
    const loadEnd = loadEndAddr === 0 ? loadAddr + (image.length - fileStart) : loadEndAddr;
    if (loadEnd < loadAddr || fileStart + (loadEnd - loadAddr) > image.length) {
      throw bad(`load_end_addr ${hex(loadEndAddr)} lies outside the file`);
    }
    const bssEnd = bssEndAddr === 0 ? loadEnd : bssEndAddr;
    if (bssEnd < loadEnd) throw bad(`bss_end_addr ${hex(bssEndAddr)} is below load_end_addr`);
    entry = entryAddr;
    segments = [{
      address: loadAddr,
      bytes: image.subarray(fileStart, fileStart + (loadEnd - loadAddr)),
      memorySize: bssEnd - loadAddr,
    }];
  } else {
    format = "elf";
    ({ entry, segments } = parseElfSegments(image));
  }
  const start = Math.min(...segments.map((s) => s.address));
  const end = Math.max(...segments.map((s) => s.address + s.memorySize));
  if (end > 4 * GiB) {
    throw new MultibootError(
      "does-not-fit",
      Errno.ENOEXEC,
      `a segment ends at ${hex(end)}, above 4 GiB`,
    );
  }
  if (!segments.some((s) => entry >= s.address && entry < s.address + s.memorySize)) {
    throw new MultibootError(
      format === "elf" ? "bad-elf" : "bad-address-fields",
      Errno.ENOEXEC,
      `the entry point ${hex(entry)} is outside the loaded segments`,
    );
  }
  return { header, format, entry, segments, start, end };
}

/**
 * Parses `kernel` and lays out the boot: RAM split at `lowMemoryLimit`, the
 * information structure, memory map, command lines and module list on the
 * first page after the kernel, then each module on its own page (as QEMU's
 * Multiboot loader does). Checks that everything fits in the low RAM.
 */
export function planMultibootBoot(
  kernel: Uint8Array,
  options: MultibootBootOptions,
): MultibootBootPlan {
  const { memorySize } = options;
  const lowLimit = options.lowMemoryLimit ?? 3 * GiB;
  const highStart = options.highMemoryStart ?? 4 * GiB;
  if (!Number.isSafeInteger(memorySize) || memorySize < 2 * MiB || memorySize % PAGE !== 0) {
    throw new MultibootError(
      "bad-memory-size",
      Errno.EINVAL,
      `memory size ${memorySize}: at least 2 MiB, a multiple of 4 KiB`,
    );
  }
  const image = parseMultiboot(kernel);
  const lowMemorySize = Math.min(memorySize, lowLimit);
  const highMemorySize = memorySize - lowMemorySize;
  for (const s of image.segments) {
    if (s.address + s.memorySize > lowMemorySize) {
      throw new MultibootError(
        "does-not-fit",
        Errno.ENOMEM,
        `segment at ${hex(s.address)} (${s.memorySize} bytes) ends past the ${
          lowMemorySize >> 20
        } MiB of low RAM`,
      );
    }
  }
  const encoder = new TextEncoder();
  const cstr = (s: string) => {
    const b = encoder.encode(s);
    const out = new Uint8Array(b.length + 1);
    out.set(b);
    return out;
  };
  const memoryMap: MultibootMemoryRange[] = [
    { base: 0, length: EBDA_ADDRESS, type: MultibootMemoryType.AVAILABLE },
    { base: EBDA_ADDRESS, length: 0xa0000 - EBDA_ADDRESS, type: MultibootMemoryType.RESERVED },
    {
      base: BIOS_AREA_ADDRESS,
      length: 0x100000 - BIOS_AREA_ADDRESS,
      type: MultibootMemoryType.RESERVED,
    },
    { base: MiB, length: lowMemorySize - MiB, type: MultibootMemoryType.AVAILABLE },
  ];
  if (highMemorySize > 0) {
    memoryMap.push({
      base: highStart,
      length: highMemorySize,
      type: MultibootMemoryType.AVAILABLE,
    });
  }
  const modules = options.modules ?? [];
  const cmdline = cstr(options.cmdline ?? "");
  const loaderName = cstr(options.loaderName ?? "deno-kvm");
  const moduleNames = modules.map((m) => cstr(m.cmdline ?? ""));
  // Layout of the info page(s): info | mmap | module list | strings.
  const infoAddress = alignUp(image.end, PAGE);
  const mmapOffset = MULTIBOOT_INFO_SIZE;
  const mmapLength = memoryMap.length * 24;
  const modsOffset = mmapOffset + mmapLength;
  let stringsOffset = modsOffset + modules.length * 16;
  const cmdlineOffset = stringsOffset;
  stringsOffset += cmdline.length;
  const loaderOffset = stringsOffset;
  stringsOffset += loaderName.length;
  const nameOffsets = moduleNames.map((n) => {
    const at = stringsOffset;
    stringsOffset += n.length;
    return at;
  });
  const info = new Uint8Array(stringsOffset);
  const view = new DataView(info.buffer);
  let at = alignUp(infoAddress + info.length, PAGE);
  const placed: PlacedModule[] = modules.map((m) => {
    const start = at;
    at = alignUp(start + m.data.length, PAGE);
    return { start, end: start + m.data.length };
  });
  const end = at;
  if (end > lowMemorySize) {
    throw new MultibootError(
      "does-not-fit",
      Errno.ENOMEM,
      `the information structure and modules end at ${hex(end)}, past the ${
        lowMemorySize >> 20
      } MiB of low RAM`,
    );
  }
  const u32 = (offset: number, value: number) => view.setUint32(offset, value >>> 0, true);
  u32(
    0,
    MultibootInfoFlag.MEMORY | MultibootInfoFlag.CMDLINE | MultibootInfoFlag.MODS |
      MultibootInfoFlag.MMAP | MultibootInfoFlag.LOADER_NAME,
  );
  u32(4, EBDA_ADDRESS / KiB); // mem_lower: KiB from 0
  u32(8, (lowMemorySize - MiB) / KiB); // mem_upper: KiB from 1 MiB to the first hole
  u32(12, 0xffffffff); // boot_device: none
  u32(16, infoAddress + cmdlineOffset);
  u32(20, modules.length);
  u32(24, infoAddress + modsOffset);
  u32(44, mmapLength);
  u32(48, infoAddress + mmapOffset);
  u32(64, infoAddress + loaderOffset);
  memoryMap.forEach((r, i) => {
    const o = mmapOffset + i * 24;
    u32(o, 20); // size of the entry after this field
    view.setBigUint64(o + 4, BigInt(r.base), true);
    view.setBigUint64(o + 12, BigInt(r.length), true);
    u32(o + 20, r.type);
  });
  placed.forEach((p, i) => {
    const o = modsOffset + i * 16;
    u32(o, p.start);
    u32(o + 4, p.end);
    u32(o + 8, infoAddress + nameOffsets[i]);
  });
  info.set(cmdline, cmdlineOffset);
  info.set(loaderName, loaderOffset);
  moduleNames.forEach((n, i) => info.set(n, nameOffsets[i]));
  return {
    image,
    entry: image.entry,
    infoAddress,
    info,
    modules: placed,
    memoryMap,
    lowMemorySize,
    highMemorySize,
    highMemoryStart: highStart,
    end,
  };
}

/**
 * Writes a planned boot into guest RAM through `write(address, bytes)`:
 * segments (bss zeroed), the information page, the modules. `memoryIsZero`
 * skips zeroing the bss of fresh RAM.
 */
export function writeMultibootBoot(
  write: (address: number, bytes: Uint8Array) => void,
  plan: MultibootBootPlan,
  modules: readonly MultibootModule[],
  options: { memoryIsZero?: boolean } = {},
): void {
  for (const s of plan.image.segments) {
    write(s.address, s.bytes);
    if (!options.memoryIsZero && s.memorySize > s.bytes.length) {
      write(s.address + s.bytes.length, new Uint8Array(s.memorySize - s.bytes.length));
    }
  }
  write(plan.infoAddress, plan.info);
  modules.forEach((m, i) => write(plan.modules[i].start, m.data));
}
