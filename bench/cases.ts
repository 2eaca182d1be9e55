/**
 * The benchmark cases of the run-loop hot path, shared by the `deno bench`
 * files and by `deno task bench` (bench/run.ts), which runs each one against
 * the C baseline (bench/baseline.c) with the same guest.
 *
 * A case is a {@linkcode BenchCase}; other files can add cases by exporting
 * `cases: BenchCase[]` (bench/context_bench.ts does, for the Worker and
 * KvmContext cases): bench/run.ts picks them up.
 *
 * @module
 */

import { DirtyBitmap, type DirtyRing, type IoExit, Kvm, type MmioExit, type Vcpu } from "../mod.ts";
import {
  DIRTY_GUEST,
  DIRTY_OFFSET,
  DIRTY_PAGES,
  DIRTY_RAM,
  DIRTY_RING_GUEST,
  DIRTY_STRIDE,
  type Guest,
  type GuestSpec,
  MMIO_GUEST,
  MMIO_READ_ADDR,
  MMIO_WRITE_ADDR,
  openGuest,
  PIO_GUEST,
  PIO_PORT,
  whyNoKvm,
} from "./guests.ts";

/** An opened case: a VM with its guest loaded, ready to measure. */
export interface BenchFixture {
  /**
   * Performs `n` operations (exits, ioctls, scans) and returns the
   * milliseconds spent in the measured part. Throws when the guest did not do
   * what the case expects.
   */
  measure(n: number): number | Promise<number>;
  /** Releases the VM (and anything else the case opened). */
  close(): void | Promise<void>;
}

/** One benchmark case. */
export interface BenchCase {
  /** Short id, e.g. `"pio"`. */
  id: string;
  /** What the table shows, e.g. `"1. PIO exit round trip"`. */
  title: string;
  /** What one operation is, for "per second" figures: `"exits"`, `"ioctls"`, `"scans"`. */
  unit: string;
  /**
   * Operations per block. `deno task bench` alternates blocks of the Deno
   * side and the C side, so both see the same machine, and keeps each side's
   * 10th-percentile block, which filters out time other processes stole.
   * Blocks must be long enough that the switch between the two processes
   * (cold caches at the start of each block) does not dominate: in the
   * sandbox, 50-exit blocks cost the Deno side 2-5% more than 500-exit ones.
   */
  block: number;
  /** Measured blocks per side (sized for the slow sandbox). */
  blocks: number;
  /** Untimed operations before measuring (JIT warm-up, faulting memory in). */
  warmup: number;
  /**
   * The C baseline case (`bench/baseline.c` argument) with the same guest
   * and handler, or null when there is none. The C program prints one JSON line.
   */
  baseline: { case: string; guest: GuestSpec } | null;
  /** Opens the case. */
  open(): BenchFixture | Promise<BenchFixture>;
}

/**
 * One PIO exit round trip on the calling thread: KVM_RUN, exit decode, the
 * handler (checks the port, reads the value), KVM_RUN again. The handler
 * checks the guest's counter so a lost or repeated exit is an error.
 */
export function pioStep(vcpu: Vcpu, expected: number): number {
  const exit = vcpu.run();
  if (exit.reason !== "io" || exit.port !== PIO_PORT) unexpected(exit.reason, "io");
  const value = (exit as IoExit).value;
  if (value !== (expected & 0xff)) throw new Error(`PIO guest sent ${value}, not ${expected}`);
  return expected + 1;
}

/**
 * One MMIO exit round trip: a write (remember the byte) or a read (answer the
 * remembered byte + 1), alternating. Returns the state for the next step.
 */
export function mmioStep(vcpu: Vcpu, last: number): number {
  const exit = vcpu.run() as MmioExit;
  if (exit.reason !== "mmio") unexpected(exit.reason, "mmio");
  if (exit.isWrite) {
    if (exit.address !== MMIO_WRITE_ADDR) throw new Error(`MMIO write at ${exit.address}`);
    return exit.value;
  }
  if (exit.address !== MMIO_READ_ADDR) throw new Error(`MMIO read at ${exit.address}`);
  exit.value = (last + 1) & 0xff;
  return last;
}

function unexpected(reason: string, wanted: string): never {
  throw new Error(`guest exit ${reason}, expected ${wanted}`);
}

function time(body: () => void): number {
  const t0 = performance.now();
  body();
  return performance.now() - t0;
}

/** Case 1. */
export const pioCase: BenchCase = {
  id: "pio",
  title: "1. PIO exit round trip",
  unit: "exits",
  block: 500,
  blocks: 60,
  // Enough exits for V8 to compile the loop with TurboFan (until then each FFI
  // call takes a slower path: ~170 ns more per call, bench/RESULTS.md).
  warmup: 50_000,
  baseline: { case: "pio", guest: PIO_GUEST },
  open() {
    const guest = openGuest(PIO_GUEST);
    let next = 0;
    return {
      measure: (n) =>
        time(() => {
          const vcpu = guest.vcpu;
          let k = next;
          for (let i = 0; i < n; i++) k = pioStep(vcpu, k);
          next = k;
        }),
      close: () => guest.close(),
    };
  },
};

/** Case 2. */
export const mmioCase: BenchCase = {
  id: "mmio",
  title: "2. MMIO exit round trip",
  unit: "exits",
  block: 500,
  blocks: 60,
  warmup: 50_000, // as case 1: the loop's TurboFan code, not its first tiers
  baseline: { case: "mmio", guest: MMIO_GUEST },
  open() {
    const guest = openGuest(MMIO_GUEST);
    let state = 0;
    let exits = 0;
    return {
      measure: (n) =>
        time(() => {
          const vcpu = guest.vcpu;
          let s = state;
          for (let i = 0; i < n; i++) s = mmioStep(vcpu, s);
          state = s;
          exits += n;
          // Written bytes go 0, 2, 4...: after 2k exits the last write was 2(k-1).
          const writes = Math.ceil(exits / 2);
          if (s !== ((writes - 1) * 2 & 0xff)) throw new Error(`MMIO guest wrote ${s}`);
        }),
      close: () => guest.close(),
    };
  },
};

/** Case 5a. */
export const getRegsCase: BenchCase = {
  id: "get-regs",
  title: "5a. KVM_GET_REGS",
  unit: "ioctls",
  block: 1_000,
  blocks: 200,
  warmup: 5_000,
  baseline: { case: "get-regs", guest: PIO_GUEST },
  open() {
    const guest = openGuest(PIO_GUEST);
    return {
      measure: (n) => {
        const ms = time(() => {
          const vcpu = guest.vcpu;
          for (let i = 0; i < n; i++) vcpu.getRegs();
        });
        const rip = guest.vcpu.getRegs().rip;
        if (rip !== BigInt(PIO_GUEST.entry)) throw new Error(`RIP ${rip}`);
        return ms;
      },
      close: () => guest.close(),
    };
  },
};

/** Case 5b. */
export const setRegsCase: BenchCase = {
  id: "set-regs",
  title: "5b. KVM_SET_REGS",
  unit: "ioctls",
  block: 1_000,
  blocks: 200,
  warmup: 5_000,
  baseline: { case: "set-regs", guest: PIO_GUEST },
  open() {
    const guest = openGuest(PIO_GUEST);
    const regs = guest.vcpu.getRegs();
    return {
      measure: (n) =>
        time(() => {
          const vcpu = guest.vcpu;
          for (let i = 0; i < n; i++) vcpu.setRegs(regs);
        }),
      close: () => guest.close(),
    };
  },
};

/** Bit `p` of the dirty bitmap is page `p` of the slot. */
const EXPECTED_FIRST = DIRTY_OFFSET / 4096;
const EXPECTED_STRIDE = DIRTY_STRIDE / 4096;
/** The stride is a power of two: the scans test `page - first` with this mask (C's `%` compiles to it). */
const STRIDE_MASK = EXPECTED_STRIDE - 1;
if ((EXPECTED_STRIDE & STRIDE_MASK) !== 0) {
  throw new Error("DIRTY_STRIDE / 4096 must be a power of two");
}
const PAGES = DIRTY_RAM / 4096;

/**
 * A dirty-log fixture: runs one guest pass (untimed), then times the
 * retrieval of the 1 GiB slot's dirty bitmap and its scan: the library's
 * {@linkcode DirtyBitmap} lists the dirty pages (WebAssembly SIMD), then each
 * listed page is checked against the guest's set, as C checks each page it
 * finds.
 */
export class DirtyLogFixture implements BenchFixture {
  /** The VM and vCPU. */
  readonly guest: Guest;
  /** The bitmap and the list of dirty pages, allocated once (32 KiB and 1 MiB for 1 GiB). */
  readonly dirty: DirtyBitmap = new DirtyBitmap(DIRTY_RAM);
  /** The bitmap `getDirtyLog` fills. */
  readonly bitmap: Uint8Array = this.dirty.bytes;

  constructor() {
    this.guest = openGuest(DIRTY_GUEST);
    this.#warmJit();
  }

  /**
   * Runs the measured code hot until V8 has optimised it: the case has few
   * blocks, each after a long guest pass, so without this its figure is that
   * of code not yet optimised (a migration loop calls it often; C is compiled
   * ahead of time). The WebAssembly scan starts in V8's baseline compiler
   * (Liftoff, ~7 us here) and is recompiled optimised (~3.5 us) after ~200
   * calls; its JavaScript entry after 1,000. No pass here: each retrieval
   * finds a clean bitmap, and the guest's pattern is then written into it
   * for the scan.
   */
  #warmJit(): void {
    const words = new Int32Array(this.bitmap.buffer, this.bitmap.byteOffset, PAGES / 32);
    for (let i = 0; i < 2_000; i++) {
      this.guest.vm.getDirtyLog(0, this.bitmap);
      for (let page = EXPECTED_FIRST; page < PAGES; page += EXPECTED_STRIDE) {
        words[page >> 5] |= 1 << (page & 31);
      }
      if (checkDirtyPages(this.dirty.pages, this.dirty.scan()) !== DIRTY_PAGES) {
        throw new Error("dirty-log warm-up: bad pattern");
      }
    }
  }

  /** Lets the guest dirty its 1024 pages once. */
  pass(): void {
    const exit = this.guest.vcpu.run();
    if (exit.reason !== "io" || exit.port !== PIO_PORT) unexpected(exit.reason, "io");
  }

  /**
   * `KVM_GET_DIRTY_LOG` of slot 0, the list of its dirty pages and the check
   * of each; throws unless exactly the guest's 1024 pages were dirty.
   */
  scan(): void {
    this.guest.vm.getDirtyLog(0, this.bitmap);
    const dirty = checkDirtyPages(this.dirty.pages, this.dirty.scan());
    if (dirty !== DIRTY_PAGES) throw new Error(`${dirty} dirty pages, expected ${DIRTY_PAGES}`);
  }

  /** `n` passes and scans; the scans' time. */
  measure(n: number): number {
    let ms = 0;
    for (let i = 0; i < n; i++) {
      this.pass();
      ms += time(() => this.scan());
    }
    return ms;
  }

  /** Closes the VM. */
  close(): void {
    this.guest.close();
  }
}

/**
 * Checks the first `count` pages of an ascending list of the dirty-log
 * guest's slot against the guest's known set, and counts those it wrote. The
 * pages below the first expected one hold the code; a nested MMU may report
 * those dirty too, so they are skipped (see shared/NESTED_KVM.md).
 */
export function checkDirtyPages(pages: Uint32Array, count: number): number {
  let i = 0;
  while (i < count && pages[i] < EXPECTED_FIRST) i++;
  const first = i;
  // Every page from here on is tested; a page off the guest's stride leaves
  // bits in `off`, and the error names the first one. Without a branch per
  // page this loop took 1.1-1.4 us for 1024 pages, with one 1.6-2.3 us.
  let off = 0;
  for (; i < count; i++) off |= (pages[i] - EXPECTED_FIRST) & STRIDE_MASK;
  if (off !== 0) {
    const page = pages.subarray(first, count).find((p) =>
      ((p - EXPECTED_FIRST) & STRIDE_MASK) !== 0
    );
    throw new Error(`page ${page} is dirty but the guest never wrote it`);
  }
  return count - first;
}

/** Case 6. */
export const dirtyLogCase: BenchCase = {
  id: "dirty-log",
  title: "6. dirty log of 1 GiB (1024 dirty pages)",
  unit: "scans",
  // Ten scans per block: a block of one scan (~40 us) measured mostly the
  // machine's noise (the same build gave 0.53-1.11 of C in three runs).
  block: 10,
  blocks: 30,
  warmup: 10, // the scan runs few times: give the JIT time to optimise it
  baseline: { case: "dirty-log", guest: DIRTY_GUEST },
  open: () => new DirtyLogFixture(),
};

/**
 * The dirty-ring fixture: runs one guest pass (untimed), then times the
 * harvest of the vCPU's ring and `KVM_RESET_DIRTY_RINGS`: the ring's
 * counterpart of {@linkcode DirtyLogFixture}'s retrieval and scan.
 */
export class DirtyRingFixture implements BenchFixture {
  /** The VM and vCPU. */
  readonly guest: Guest;
  readonly #ring: DirtyRing;
  #dirty = 0;
  /** Made once: the harvest calls it per entry without allocating. */
  readonly #visit = (slot: number, offset: number): void => {
    if (slot !== 0) throw new Error(`an entry for slot ${slot}`);
    if (offset < EXPECTED_FIRST) return; // the code's pages (see checkDirtyPages)
    if ((offset - EXPECTED_FIRST) % EXPECTED_STRIDE !== 0) {
      throw new Error(`page ${offset} is dirty but the guest never wrote it`);
    }
    this.#dirty++;
  };

  constructor() {
    this.guest = openGuest(DIRTY_RING_GUEST);
    this.#ring = this.guest.vm.dirtyRing(this.guest.vcpu);
  }

  /** Lets the guest dirty its 1024 pages once. */
  pass(): void {
    const exit = this.guest.vcpu.run();
    if (exit.reason !== "io" || exit.port !== PIO_PORT) unexpected(exit.reason, "io");
  }

  /** Harvests the ring and resets it; throws unless exactly the guest's 1024 pages came. */
  scan(): void {
    this.#dirty = 0;
    this.#ring.harvest(this.#visit);
    this.guest.vm.resetDirtyRings();
    if (this.#dirty !== DIRTY_PAGES) {
      throw new Error(`${this.#dirty} dirty pages, expected ${DIRTY_PAGES}`);
    }
  }

  /** `n` passes and harvests; the harvests' time. */
  measure(n: number): number {
    let ms = 0;
    for (let i = 0; i < n; i++) {
      this.pass();
      ms += time(() => this.scan());
    }
    return ms;
  }

  /** Closes the VM. */
  close(): void {
    this.guest.close();
  }
}

/** Case 6b. */
export const dirtyRingCase: BenchCase = {
  id: "dirty-ring",
  title: "6b. dirty ring, 1 GiB (1024 dirty pages): harvest + reset",
  unit: "harvests",
  block: 10, // as case 6
  blocks: 30,
  warmup: 10,
  baseline: { case: "dirty-ring", guest: DIRTY_RING_GUEST },
  open: () => new DirtyRingFixture(),
};

/** Null when this machine's KVM has the dirty ring, else why not. */
export function whyNoDirtyRing(): string | null {
  const noKvm = whyNoKvm();
  if (noKvm) return noKvm;
  using kvm = Kvm.open();
  return kvm.checkExtension("DIRTY_LOG_RING") > 0 ? null : "the KVM lacks KVM_CAP_DIRTY_LOG_RING";
}

/** This file's cases, in table order (case 6b where the KVM has the dirty ring). */
export const cases: BenchCase[] = [
  pioCase,
  mmioCase,
  getRegsCase,
  setRegsCase,
  dirtyLogCase,
  ...(whyNoDirtyRing() === null ? [dirtyRingCase] : []),
];
