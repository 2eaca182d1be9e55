/**
 * The guest programs of the benchmarks, byte for byte, and the VM set-up they
 * need. The C baseline (bench/baseline.c) receives the same bytes and the same
 * set-up on its command line ({@linkcode baselineArgs}), so both sides run
 * exactly the same guest.
 *
 * @module
 */

import { Kvm, type Vcpu, type Vm } from "../mod.ts";

/** A guest: where its code goes, how much RAM, and which CPU mode it starts in. */
export interface GuestSpec {
  /** `"real"`: 16-bit real mode, segments at 0. `"protected"`: 32-bit flat protected mode. */
  mode: "real" | "protected";
  /** Guest physical address of the first instruction (in slot 0, which starts at 0). */
  entry: number;
  /** The program. */
  code: readonly number[];
  /** Bytes of RAM in slot 0, at guest physical 0. */
  ramSize: number;
  /** Log dirty pages of slot 0 (`KVM_MEM_LOG_DIRTY_PAGES`). */
  logDirtyPages?: boolean;
  /** Enable the dirty ring with this many bytes per vCPU (before the vCPU is created). */
  dirtyRingBytes?: number;
}

/** The port the PIO and dirty-log guests write to. */
export const PIO_PORT = 0x10;
/** The MMIO guest's write address: ES = 0x2000, offset 0x10 (no memory slot there). */
export const MMIO_WRITE_ADDR = 0x20010;
/** The MMIO guest's read address. */
export const MMIO_READ_ADDR = 0x20020;

/**
 * Case 1: `out` in a tight loop. AL counts up by one per exit, so exit `k`
 * (from 0) carries `k & 0xff`.
 */
export const PIO_GUEST: GuestSpec = {
  mode: "real",
  entry: 0x1000,
  ramSize: 0x10000,
  // deno-fmt-ignore
  code: [
    0xe6, 0x10, // 0x1000: out 0x10, al
    0x40,       // 0x1002: inc ax
    0xeb, 0xfb, // 0x1003: jmp 0x1000
  ],
};

/**
 * Case 2: a write and a read of unmapped guest physical addresses in a loop:
 * two MMIO exits per iteration. The guest writes AL to 0x20010, reads AL back
 * from 0x20020 (the host answers with the written byte + 1) and increments it,
 * so written bytes go 0, 2, 4...
 */
export const MMIO_GUEST: GuestSpec = {
  mode: "real",
  entry: 0x1000,
  ramSize: 0x10000,
  // deno-fmt-ignore
  code: [
    0xbb, 0x00, 0x20,       // 0x1000: mov bx, 0x2000
    0x8e, 0xc3,             // 0x1003: mov es, bx          ; ES base 0x20000: no RAM there
    0x26, 0xa2, 0x10, 0x00, // 0x1005: mov [es:0x10], al   ; MMIO write at 0x20010
    0x26, 0xa0, 0x20, 0x00, // 0x1009: mov al, [es:0x20]   ; MMIO read at 0x20020
    0x40,                   // 0x100d: inc ax
    0xeb, 0xf5,             // 0x100e: jmp 0x1005
  ],
};

/** Guest RAM of the dirty-log case: 1 GiB. */
export const DIRTY_RAM = 1 << 30;
/** The dirty-log guest writes one byte in each 1 MiB, at this offset into it. */
export const DIRTY_OFFSET = 0x80000;
/** The dirty-log guest's stride. */
export const DIRTY_STRIDE = 0x100000;
/** Pages the dirty-log guest writes per pass: one per MiB of its 1 GiB. */
export const DIRTY_PAGES = DIRTY_RAM / DIRTY_STRIDE;

/**
 * Case 6: 32-bit flat protected mode, 1 GiB of RAM with dirty logging. Each
 * pass writes one byte at 0x80000 + k MiB for k = 0..1023 (so 1024 known
 * pages, none of them the code page), then reports the pass with `out 0x10`
 * and starts again.
 */
export const DIRTY_GUEST: GuestSpec = {
  mode: "protected",
  entry: 0x1000,
  ramSize: DIRTY_RAM,
  logDirtyPages: true,
  // deno-fmt-ignore
  code: [
    0xb8, 0x00, 0x00, 0x08, 0x00, // 0x1000: mov eax, 0x80000
    0x88, 0x00,                   // 0x1005: mov [eax], al       ; dirty this page
    0x05, 0x00, 0x00, 0x10, 0x00, // 0x1007: add eax, 0x100000   ; next MiB
    0x3d, 0x00, 0x00, 0x00, 0x40, // 0x100c: cmp eax, 0x40000000 ; end of 1 GiB?
    0x72, 0xf2,                   // 0x1011: jb 0x1005
    0xe6, 0x10,                   // 0x1013: out 0x10, al        ; pass done
    0xeb, 0xe9,                   // 0x1015: jmp 0x1000
  ],
};

/**
 * Bytes of the dirty ring in case 6b: 4096 entries, so the guest's 1024 pages
 * per pass stay far below the point where the kernel calls the ring full.
 * The C baseline uses the same size (`DIRTY_RING_BYTES` in baseline.c).
 */
export const DIRTY_RING_BYTES = 64 * 1024;

/**
 * Case 6b: the guest of case 6, its written pages harvested from the dirty
 * ring instead of the bitmap.
 */
export const DIRTY_RING_GUEST: GuestSpec = { ...DIRTY_GUEST, dirtyRingBytes: DIRTY_RING_BYTES };

/** A VM with one slot and one vCPU, ready to run a {@linkcode GuestSpec}. */
export interface Guest extends Disposable {
  /** The system handle (closing it closes the rest). */
  kvm: Kvm;
  /** The VM. */
  vm: Vm;
  /** vCPU 0, at the guest's entry. */
  vcpu: Vcpu;
  /** Closes everything. */
  close(): void;
}

/**
 * Creates the VM for `spec`: slot 0 at guest physical 0, the code at `entry`,
 * vCPU 0 in the guest's mode with all segments based at 0. The C baseline does
 * the same steps (see `setup_guest` in baseline.c).
 */
export function openGuest(spec: GuestSpec): Guest {
  const kvm = Kvm.open();
  try {
    const vm = kvm.createVm();
    const ram = vm.allocateMemory(spec.ramSize);
    vm.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 0,
      memorySize: spec.ramSize,
      memory: ram,
      logDirtyPages: spec.logDirtyPages ?? false,
    });
    ram.bytes.set(spec.code, spec.entry);
    if (spec.dirtyRingBytes) vm.enableDirtyRing(spec.dirtyRingBytes);
    const vcpu = vm.createVcpu(0);
    const sregs = vcpu.getSregs();
    const segments = [sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss];
    for (const seg of segments) {
      seg.base = 0n;
      seg.selector = 0;
    }
    if (spec.mode === "protected") {
      // Flat 4 GiB segments written straight into the hidden descriptor
      // parts: the guest never reloads a segment register, so it needs no GDT.
      sregs.cr0 |= 1n; // PE
      for (const seg of segments) {
        seg.assign({ limit: 0xffffffff, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1 });
        seg.type = 3; // data, read/write, accessed
        seg.selector = 0x10;
      }
      sregs.cs.type = 11; // code, execute/read, accessed
      sregs.cs.selector = 0x08;
    }
    vcpu.setSregs(sregs);
    vcpu.setRegs(
      vcpu.getRegs().clear().assign({ rip: BigInt(spec.entry), rflags: 2n, rsp: 0x8000n }),
    );
    const close = () => kvm.close();
    return { kvm, vm, vcpu, close, [Symbol.dispose]: close };
  } catch (error) {
    kvm.close();
    throw error;
  }
}

/** The guest part of the C baseline's command line: mode, RAM size, entry, dirty flag, code. */
export function baselineArgs(spec: GuestSpec): string[] {
  return [
    spec.mode,
    String(spec.ramSize),
    String(spec.entry),
    spec.logDirtyPages ? "1" : "0",
    spec.code.map((b) => b.toString(16).padStart(2, "0")).join(""),
  ];
}

/** Null when `/dev/kvm` is usable here, else why not (in words). */
export function whyNoKvm(): string | null {
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
    return null;
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) return "no permission (run with -A)";
    if (error instanceof Deno.errors.NotFound) return "no /dev/kvm on this machine";
    return `/dev/kvm cannot be opened: ${error instanceof Error ? error.message : error}`;
  }
}
