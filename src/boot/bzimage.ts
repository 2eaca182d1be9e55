/**
 * A bzImage loader following the x86 Linux boot protocol
 * (Documentation/arch/x86/boot.rst): parse and check the setup header, plan
 * where the kernel, zero page, command line and initrd go in guest RAM, and
 * write them there.
 *
 * Planning is separate from writing so that every bad input (not a bzImage,
 * a truncated file, a command line or initrd that does not fit, too little
 * RAM) is refused with a {@linkcode BootImageError} before a VM exists.
 *
 * @module
 */

import { Errno } from "../errors.ts";
import { hex } from "../kvm/constants.ts";
import type { Vm } from "../kvm/vm.ts";
import { BootImageError } from "./boot_image_error.ts";
import { type ElfKernel, type ElfSegment, isElf, parseElfKernel } from "./elf.ts";
import { checkGuestLayout, type GuestRegion } from "./layout.ts";
import { DEFAULT_GDT_ADDRESS, DEFAULT_PAGE_TABLE_ADDRESS } from "./modes.ts";

export { BootImageError, type BootImageProblem } from "./boot_image_error.ts";
import {
  BOOT_FLAG,
  BootParams,
  CAN_USE_HEAP,
  E820_RAM,
  E820_RESERVED,
  type E820Entry,
  HDRS_MAGIC,
  LOADED_HIGH,
  SETUP_HEADER_OFFSET,
  SetupHeader,
  writeE820,
  XLF_KERNEL_64,
} from "./boot_params.ts";
import {
  CMDLINE_ADDRESS,
  EBDA_ADDRESS,
  HIGH_RAM_START,
  KERNEL_LOAD_ADDRESS,
  MMIO_HOLE_START,
  ZERO_PAGE_ADDRESS,
} from "./address_map.ts";

export {
  CMDLINE_ADDRESS,
  EBDA_ADDRESS,
  HIGH_RAM_START,
  KERNEL_LOAD_ADDRESS,
  MMIO_HOLE_START,
  ZERO_PAGE_ADDRESS,
};

/**
 * The longest command line (with its NUL) the layout holds: from
 * {@linkcode CMDLINE_ADDRESS} to the EBDA (the MP table), whatever a
 * header's `cmdline_size` claims.
 */
export const MAX_CMDLINE_BYTES = EBDA_ADDRESS - CMDLINE_ADDRESS;
/** Bytes the boot GDT takes at `DEFAULT_GDT_ADDRESS` (six 8-byte descriptors). */
const GDT_SIZE = 6 * 8;
/** Pages of the long-mode identity map at `DEFAULT_PAGE_TABLE_ADDRESS` (PML4, PDPT, 4 PDs). */
const PAGE_TABLE_PAGES = 2 + 4;

/** Lowest boot protocol version accepted: 2.06 added `cmdline_size`. */
export const MIN_PROTOCOL = 0x0206;
/** Protocol version that added `xloadflags` and with it the 64-bit entry. */
export const PROTOCOL_64BIT_ENTRY = 0x020c;

const MiB = 1024 * 1024;

/** What {@linkcode parseBzImage} found in a bzImage. */
export interface BzImage {
  /** The whole file. */
  readonly image: Uint8Array;
  /** Boot protocol version, e.g. `0x20f` for 2.15. */
  readonly protocol: number;
  /** Sectors of real-mode setup code after the boot sector. */
  readonly setupSects: number;
  /** Bytes before the protected-mode kernel: (setup_sects + 1) × 512. */
  readonly setupSize: number;
  /** The protected-mode kernel (everything after the setup code). */
  readonly kernel: Uint8Array;
  /** The setup header bytes to copy into the zero page (0x1f1 up to the end the jump names). */
  readonly headerBytes: Uint8Array;
  /** `loadflags`. */
  readonly loadflags: number;
  /** `xloadflags` (0 before protocol 2.12). */
  readonly xloadflags: number;
  /** Whether the 64-bit entry (load address + 0x200) may be used. */
  readonly has64BitEntry: boolean;
  /** Highest address the initrd may end at (`initrd_addr_max`, inclusive). */
  readonly initrdAddrMax: number;
  /** Longest command line without its NUL (`cmdline_size`). */
  readonly cmdlineSize: number;
  /** Physical alignment a relocatable kernel wants (`kernel_alignment`). */
  readonly kernelAlignment: number;
  /** Whether the kernel may run at another address than it was built for. */
  readonly relocatable: boolean;
  /** The address the kernel prefers to run at (`pref_address`, protocol 2.10+). */
  readonly prefAddress: number;
  /** Bytes the kernel needs from where it runs, while it decompresses (`init_size`). */
  readonly initSize: number;
  /** The kernel's version string, when the header points to one. */
  readonly version?: string;
}

function u8(image: Uint8Array, at: number): number {
  return image[at];
}

/**
 * Parses and checks a bzImage: the boot sector flag `0xaa55`, the `"HdrS"`
 * magic, protocol version ≥ 2.06, a kernel loaded high (`LOADED_HIGH`), and
 * a file long enough for the `syssize` the header declares.
 */
export function parseBzImage(image: Uint8Array): BzImage {
  const headerEnd = SETUP_HEADER_OFFSET + SetupHeader.size;
  if (image.length < 0x206) {
    throw new BootImageError(
      "not-bzimage",
      Errno.ENOEXEC,
      `${image.length} bytes is too short for a bzImage (its setup header alone ends at ${
        hex(headerEnd)
      })`,
    );
  }
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const magic = view.getUint32(0x202, true);
  const bootFlag = view.getUint16(0x1fe, true);
  if (magic !== HDRS_MAGIC || bootFlag !== BOOT_FLAG) {
    throw new BootImageError(
      "not-bzimage",
      Errno.ENOEXEC,
      `not a Linux bzImage: no "HdrS" magic at 0x202 (found ${hex(magic)}) or boot flag ` +
        `0xaa55 at 0x1fe (found ${hex(bootFlag)})`,
    );
  }
  if (image.length < headerEnd) {
    throw new BootImageError(
      "truncated",
      Errno.ENOEXEC,
      `the bzImage is truncated: ${image.length} bytes end inside its setup header`,
    );
  }
  const hdr = new SetupHeader(image.subarray(SETUP_HEADER_OFFSET, headerEnd));
  const protocol = hdr.version;
  const protocolText = `${protocol >> 8}.${(protocol & 0xff).toString().padStart(2, "0")}`;
  if (protocol < MIN_PROTOCOL) {
    throw new BootImageError(
      "unsupported-protocol",
      Errno.ENOEXEC,
      `boot protocol ${protocolText} is too old: 2.06 or newer is needed (kernel 2.6.22+)`,
    );
  }
  if (!(hdr.loadflags & LOADED_HIGH)) {
    throw new BootImageError(
      "unsupported-protocol",
      Errno.ENOEXEC,
      "a zImage (loaded below 1 MiB) is not supported: LOADED_HIGH is clear",
    );
  }
  const setupSects = hdr.setupSects || 4;
  const setupSize = (setupSects + 1) * 512;
  const kernelSize = hdr.syssize * 16;
  if (image.length < setupSize + kernelSize) {
    throw new BootImageError(
      "truncated",
      Errno.ENOEXEC,
      `the bzImage is truncated: ${image.length} bytes, but its header declares ` +
        `${setupSize} bytes of setup code and ${kernelSize} bytes of kernel (syssize)`,
    );
  }
  // The header's length is given by the jump at 0x200: 0x202 + its displacement byte.
  const copyEnd = Math.min(0x202 + u8(image, 0x201), headerEnd, image.length);
  const xloadflags = protocol >= PROTOCOL_64BIT_ENTRY ? hdr.xloadflags : 0;
  let version: string | undefined;
  if (hdr.kernelVersion !== 0) {
    const at = hdr.kernelVersion + 0x200;
    const end = image.indexOf(0, at);
    if (at < setupSize && end > at && end < setupSize) {
      version = new TextDecoder().decode(image.subarray(at, end));
    }
  }
  return {
    image,
    protocol,
    setupSects,
    setupSize,
    kernel: image.subarray(setupSize, image.length),
    headerBytes: image.subarray(SETUP_HEADER_OFFSET, copyEnd),
    loadflags: hdr.loadflags,
    xloadflags,
    has64BitEntry: (xloadflags & XLF_KERNEL_64) !== 0,
    initrdAddrMax: hdr.initrdAddrMax,
    cmdlineSize: hdr.cmdlineSize,
    kernelAlignment: hdr.kernelAlignment,
    relocatable: hdr.relocatableKernel !== 0,
    prefAddress: protocol >= 0x020a ? Number(hdr.prefAddress) : KERNEL_LOAD_ADDRESS,
    initSize: protocol >= 0x020a ? hdr.initSize : 0,
    version,
  };
}

/** `cmdline_size` assumed for a bare ELF kernel (x86's `COMMAND_LINE_SIZE`). */
export const DEFAULT_CMDLINE_SIZE = 2048;
/** `initrd_addr_max` assumed for a bare ELF kernel (what every 2.6.31+ kernel declares). */
export const DEFAULT_INITRD_ADDR_MAX = 0x7fffffff;

/** Options of {@linkcode planLinuxBoot}. */
export interface LinuxBootOptions {
  /** Guest RAM in bytes, a multiple of 4 KiB. */
  memorySize: number;
  /**
   * The bzImage's kernel, uncompressed (an ELF `vmlinux`, see `extractVmlinux`):
   * loaded at its physical addresses and entered at its 64-bit entry, so the
   * guest skips the kernel's decompressor. The bzImage still supplies the
   * setup header. Such a kernel runs where it was linked (no KASLR).
   */
  vmlinux?: Uint8Array;
  /**
   * The same as `vmlinux`, still in its file: its segments are read from the
   * file straight into guest RAM by {@linkcode writeLinuxBoot} (no copy in
   * host memory of its own), then checked. Give one or the other.
   */
  vmlinuxFile?: VmlinuxFile;
  /** The kernel command line. */
  cmdline?: string;
  /** An initrd / initramfs image. */
  initrd?: Uint8Array;
}

/**
 * An uncompressed kernel (ELF `vmlinux`) to load from its file: a cache entry
 * (`lookupVmlinuxAsync` with `direct`). Reading with `read(2)` into guest RAM
 * cannot fault the way a mapping of the file can when the file shrinks (a
 * short read is an error, not a SIGBUS).
 */
export interface VmlinuxFile {
  /** The file's first bytes: its ELF header and program headers at least. */
  readonly head: Uint8Array;
  /** The file's size in bytes. */
  readonly size: number;
  /** Reads exactly `into.length` bytes at `offset` of the file into `into`, or throws. */
  read(offset: number, into: Uint8Array): void;
  /**
   * Checks the loaded kernel before it runs, given each segment's file bytes
   * where they now lie (guest RAM) with their file offsets; throws when the
   * file is damaged (the bytes in guest RAM must then not be run).
   */
  check(loaded: readonly { fileOffset: number; bytes: Uint8Array }[]): void;
}

/** Where everything goes, as decided by {@linkcode planLinuxBoot}. */
export interface LinuxBootPlan {
  /** The parsed bzImage (absent when booting a bare ELF kernel). */
  readonly kernel?: BzImage;
  /** The ELF kernel loaded directly, when there is one. */
  readonly elf?: ElfKernel;
  /** Where the ELF kernel's segments are read from, when it was given as a file. */
  readonly vmlinuxFile?: VmlinuxFile;
  /** What to copy into guest RAM for the kernel, and where. */
  readonly segments: readonly ElfSegment[];
  /** The zero page, ready to copy to {@linkcode ZERO_PAGE_ADDRESS}. */
  readonly zeroPage: Uint8Array;
  /** The command line with its NUL. */
  readonly cmdline: Uint8Array;
  /** The initrd, if any. */
  readonly initrd?: Uint8Array;
  /** Guest physical address of the initrd (0 without one). */
  readonly initrdAddress: number;
  /** `"64"`: enter at the 64-bit entry in long mode; `"32"`: at `code32_start` in protected mode. */
  readonly entryMode: "64" | "32";
  /** Guest physical address to start at. */
  readonly entry: number;
  /** The RAM layout given to the kernel. */
  readonly e820: readonly E820Entry[];
  /** RAM below the 32-bit MMIO hole, in bytes. */
  readonly lowMemorySize: number;
  /** RAM above 4 GiB, in bytes (0 for guests up to 3 GiB). */
  readonly highMemorySize: number;
  /** The first address past what the kernel needs (while it decompresses, for a bzImage). */
  readonly kernelEnd: number;
  /**
   * Every region of guest memory the boot uses (GDT, zero page, page tables,
   * command line, the EBDA with the MP table, the kernel, the initrd), as
   * checked by {@linkcode checkGuestLayout}: inside RAM, no two overlapping.
   */
  readonly regions: readonly GuestRegion[];
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

function mib(n: number): string {
  return `${(n / MiB).toFixed(n % MiB === 0 ? 0 : 1)} MiB`;
}

/**
 * Checks a bzImage (or an ELF `vmlinux`) with its command line, initrd and
 * memory size, and decides the guest layout: the compressed kernel at 1 MiB
 * (or the ELF's segments at their physical addresses), the zero page at 0x7000, the command
 * line at 0x20000, the initrd as high as `initrd_addr_max` and the RAM allow,
 * and an E820 map (conventional RAM, the EBDA reserved for the MP table, the
 * BIOS area reserved, RAM from 1 MiB; RAM past 3 GiB continues at 4 GiB).
 * Throws a {@linkcode BootImageError} for anything that cannot boot.
 */
export function planLinuxBoot(image: Uint8Array, options: LinuxBootOptions): LinuxBootPlan {
  const bare = isElf(image);
  const kernel = bare ? undefined : parseBzImage(image);
  const file = bare ? undefined : options.vmlinuxFile;
  const elf = bare
    ? parseElfKernel(image)
    : options.vmlinux
    ? parseElfKernel(options.vmlinux)
    : file
    ? parseElfKernel(file.head, { fileSize: file.size })
    : undefined;
  const { memorySize, cmdline = "", initrd } = options;
  const cmdlineSize = kernel?.cmdlineSize ?? DEFAULT_CMDLINE_SIZE;
  if (!Number.isSafeInteger(memorySize) || memorySize <= 0 || memorySize % 4096 !== 0) {
    throw new BootImageError(
      "memory-too-small",
      Errno.EINVAL,
      `memory size ${memorySize} is not a positive multiple of 4 KiB`,
    );
  }
  const cmdlineBytes = new TextEncoder().encode(`${cmdline}\0`);
  if (cmdlineBytes.length > MAX_CMDLINE_BYTES) {
    // A header may claim any cmdline_size (0xffffffff): the layout decides.
    throw new BootImageError(
      "cmdline-too-long",
      Errno.E2BIG,
      `the command line is ${cmdlineBytes.length - 1} bytes; at most ${
        MAX_CMDLINE_BYTES - 1
      } fit between ${hex(CMDLINE_ADDRESS)} and the MP table at ${hex(EBDA_ADDRESS)} ` +
        `(this kernel's cmdline_size says ${cmdlineSize})`,
    );
  }
  if (cmdlineBytes.length - 1 > cmdlineSize) {
    throw new BootImageError(
      "cmdline-too-long",
      Errno.E2BIG,
      `the command line is ${cmdlineBytes.length - 1} bytes; this kernel accepts at most ` +
        `${cmdlineSize} (cmdline_size)`,
    );
  }
  const lowMemorySize = Math.min(memorySize, MMIO_HOLE_START);
  const highMemorySize = memorySize - lowMemorySize;
  let kernelEnd: number;
  let segments: ElfSegment[];
  if (elf) {
    kernelEnd = elf.end;
    segments = [...elf.segments];
    if (kernelEnd > lowMemorySize) {
      throw new BootImageError(
        "memory-too-small",
        Errno.ENOMEM,
        `${mib(memorySize)} of RAM is too small for this kernel: its segments end at ${
          hex(kernelEnd)
        }, so at least ${mib(alignUp(kernelEnd, MiB))}`,
      );
    }
  } else {
    const k = kernel!;
    // A relocatable kernel decompresses at its load address rounded up to kernel_alignment,
    // but never below pref_address (LOAD_PHYSICAL_ADDR); it needs init_size bytes from there.
    const runAddress = k.relocatable
      ? Math.max(alignUp(KERNEL_LOAD_ADDRESS, k.kernelAlignment || 1), k.prefAddress)
      : k.prefAddress;
    kernelEnd = Math.max(runAddress + k.initSize, KERNEL_LOAD_ADDRESS + k.kernel.length);
    segments = [{
      physicalAddress: KERNEL_LOAD_ADDRESS,
      bytes: k.kernel,
      memorySize: k.kernel.length,
    }];
    if (kernelEnd > lowMemorySize) {
      throw new BootImageError(
        "memory-too-small",
        Errno.ENOMEM,
        `${mib(memorySize)} of RAM is too small for this kernel: it needs ${
          hex(k.initSize)
        } bytes (init_size) from ${hex(runAddress)}, so at least ${mib(alignUp(kernelEnd, MiB))}`,
      );
    }
  }
  let initrdAddress = 0;
  if (initrd && initrd.length > 0) {
    const top = Math.min((kernel?.initrdAddrMax ?? DEFAULT_INITRD_ADDR_MAX) + 1, lowMemorySize);
    initrdAddress = Math.floor((top - initrd.length) / 4096) * 4096;
    if (initrdAddress < kernelEnd) {
      const room = Math.max(0, Math.floor((top - kernelEnd) / 4096) * 4096);
      throw new BootImageError(
        "initrd-too-large",
        Errno.EFBIG,
        `the initrd (${initrd.length} bytes) does not fit: between the kernel's end ${
          hex(kernelEnd)
        } and ${hex(top)} (the lower of initrd_addr_max + 1 and the end of low RAM of ${
          mib(memorySize)
        }) there are ${room} bytes`,
      );
    }
  }

  const regions: GuestRegion[] = [
    { name: "GDT", address: DEFAULT_GDT_ADDRESS, size: GDT_SIZE },
    { name: "zero page", address: ZERO_PAGE_ADDRESS, size: 4096 },
    { name: "page tables", address: DEFAULT_PAGE_TABLE_ADDRESS, size: PAGE_TABLE_PAGES * 4096 },
    { name: "command line", address: CMDLINE_ADDRESS, size: cmdlineBytes.length },
    { name: "EBDA (MP table)", address: EBDA_ADDRESS, size: 0xa0000 - EBDA_ADDRESS },
    ...(elf
      ? segments.map((s, i) => ({
        name: `kernel segment ${i}`,
        address: s.physicalAddress,
        size: s.memorySize,
      }))
      : [{
        name: "kernel (with its decompression area)",
        address: KERNEL_LOAD_ADDRESS,
        size: kernelEnd - KERNEL_LOAD_ADDRESS,
      }]),
    { name: "initrd", address: initrdAddress, size: initrd?.length ?? 0 },
  ];
  checkGuestLayout(regions, [
    { start: 0, end: 0xa0000 },
    { start: KERNEL_LOAD_ADDRESS, end: lowMemorySize },
    ...(highMemorySize > 0
      ? [{ start: HIGH_RAM_START, end: HIGH_RAM_START + highMemorySize }]
      : []),
  ]);

  const e820: E820Entry[] = [
    { addr: 0, size: EBDA_ADDRESS, type: E820_RAM },
    { addr: EBDA_ADDRESS, size: 0xa0000 - EBDA_ADDRESS, type: E820_RESERVED },
    { addr: 0xf0000, size: 0x10000, type: E820_RESERVED },
    { addr: KERNEL_LOAD_ADDRESS, size: lowMemorySize - KERNEL_LOAD_ADDRESS, type: E820_RAM },
  ];
  if (highMemorySize > 0) e820.push({ addr: HIGH_RAM_START, size: highMemorySize, type: E820_RAM });

  const zeroPage = new Uint8Array(4096);
  const params = new BootParams(zeroPage);
  const hdr = params.hdr;
  if (kernel) {
    zeroPage.set(kernel.headerBytes, SETUP_HEADER_OFFSET);
  } else {
    // A bare ELF kernel has no setup header: write the fields the kernel reads.
    hdr.bootFlag = BOOT_FLAG;
    hdr.header = HDRS_MAGIC;
    hdr.version = 0x020f;
    hdr.loadflags = LOADED_HIGH;
    hdr.kernelAlignment = 0x200000;
    hdr.cmdlineSize = DEFAULT_CMDLINE_SIZE;
    hdr.initrdAddrMax = DEFAULT_INITRD_ADDR_MAX;
  }
  hdr.typeOfLoader = 0xff; // "undefined" boot loader
  hdr.vidMode = 0xffff; // "normal" video mode
  hdr.loadflags = (hdr.loadflags | CAN_USE_HEAP) & 0xff;
  hdr.heapEndPtr = 0xfe00 - 0x200; // end of the setup heap, relative to the setup code, minus 0x200
  hdr.cmdLinePtr = CMDLINE_ADDRESS;
  if (initrd && initrd.length > 0) {
    hdr.ramdiskImage = initrdAddress;
    hdr.ramdiskSize = initrd.length;
  }
  if (kernel && !elf && (kernel.protocol < 0x020a || !kernel.relocatable)) {
    hdr.code32Start = KERNEL_LOAD_ADDRESS;
  }
  writeE820(zeroPage, e820);

  const entryMode = elf || kernel!.has64BitEntry ? "64" : "32";
  return {
    kernel,
    elf,
    ...(file ? { vmlinuxFile: file } : {}),
    segments,
    zeroPage,
    cmdline: cmdlineBytes,
    initrd: initrd && initrd.length > 0 ? initrd : undefined,
    initrdAddress,
    entryMode,
    entry: elf ? elf.entry : entryMode === "64" ? KERNEL_LOAD_ADDRESS + 0x200 : KERNEL_LOAD_ADDRESS,
    e820,
    lowMemorySize,
    highMemorySize,
    kernelEnd,
    regions,
  };
}

/**
 * Writes a planned boot into guest RAM: the kernel's segments (the
 * protected-mode kernel at 1 MiB for a bzImage), the zero page, the command
 * line and the initrd. (The vCPU's mode and registers are set by the caller:
 * RSI/ESI = {@linkcode ZERO_PAGE_ADDRESS}.) The part of a segment past its
 * file bytes is zeroed, unless `memoryIsZero` says the RAM is fresh (zero
 * already: writing zeros would only make the host allocate the pages early).
 * A kernel given as a file (`vmlinuxFile`) is read from it into place and
 * checked there (`VmlinuxFile.check` throws for a damaged one).
 */
export function writeLinuxBoot(
  vm: Vm,
  plan: LinuxBootPlan,
  options: { memoryIsZero?: boolean } = {},
): void {
  const fromFile: { fileOffset: number; bytes: Uint8Array }[] = [];
  for (const segment of plan.segments) {
    const { physicalAddress, bytes } = segment;
    const fileSize = segment.fileSize ?? bytes.length;
    vm.writeGuest(physicalAddress, bytes);
    if (fileSize > bytes.length) {
      // The rest of the segment is still in the file: read straight into guest RAM.
      const file = plan.vmlinuxFile;
      if (!file) {
        throw new BootImageError(
          "truncated",
          Errno.ENOEXEC,
          `kernel segment at ${hex(physicalAddress)}: ${fileSize} bytes, ${bytes.length} given`,
        );
      }
      file.read(
        segment.fileOffset! + bytes.length,
        vm.guestMemory(physicalAddress + bytes.length, fileSize - bytes.length),
      );
    }
    if (plan.vmlinuxFile) {
      fromFile.push({
        fileOffset: segment.fileOffset!,
        bytes: vm.guestMemory(physicalAddress, fileSize),
      });
    }
    const tail = segment.memorySize - fileSize;
    if (tail > 0 && !options.memoryIsZero) {
      vm.guestMemory(physicalAddress + fileSize, tail).fill(0);
    }
  }
  // Before anything else is written: a damaged file leaves nothing that could run.
  plan.vmlinuxFile?.check(fromFile);
  vm.writeGuest(ZERO_PAGE_ADDRESS, plan.zeroPage);
  vm.writeGuest(CMDLINE_ADDRESS, plan.cmdline);
  if (plan.initrd) vm.writeGuest(plan.initrdAddress, plan.initrd);
}
