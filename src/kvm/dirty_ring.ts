/**
 * A vCPU's dirty ring (`KVM_CAP_DIRTY_LOG_RING`): the kernel appends one
 * `struct kvm_dirty_gfn` per page the vCPU writes in a slot with
 * `logDirtyPages`, and userspace harvests them in order, with no bitmap to
 * scan. Documentation/virt/kvm/api.rst, sections
 * "KVM_CAP_DIRTY_LOG_RING/KVM_CAP_DIRTY_LOG_RING_ACQ_REL" and
 * "KVM_RESET_DIRTY_RINGS".
 *
 * @module
 */

import {
  KVM_DIRTY_GFN_F_DIRTY,
  KVM_DIRTY_GFN_F_RESET,
  KVM_DIRTY_LOG_PAGE_OFFSET,
  KvmDirtyGfn,
} from "../abi/dirty_ring.ts";
import { Errno, KvmError } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE } from "./constants.ts";
import { HostMapping } from "./host_mapping.ts";

/**
 * Called by {@linkcode DirtyRing.harvest} for each dirty page: `slot` is the
 * kernel's slot field (the slot id in bits 0-15, the address space in bits
 * 16-31: 0 except for SMM on x86) and `offset` the page's index inside the
 * slot (its guest address is the slot's `guestPhysAddr + offset * 4096`).
 */
export type DirtyPageVisitor = (slot: number, offset: number) => void;

/** 32-bit words per entry: flags, slot, offset low, offset high. */
const WORDS = KvmDirtyGfn.size / 4;

/**
 * One vCPU's dirty ring, mapped from its fd at page
 * `KVM_DIRTY_LOG_PAGE_OFFSET`. Made by `Vm.createVcpu` once
 * `Vm.enableDirtyRing` was called, and unmapped when that vCPU closes; get it
 * with `vm.dirtyRing(vcpu)`.
 *
 * The ring is shared with the kernel without a lock: an entry's flags are read
 * with acquire semantics (`Atomics.load` on the mapping) before its slot and
 * offset, as `KVM_CAP_DIRTY_LOG_RING_ACQ_REL` requires, so any thread may
 * harvest while the vCPU runs on another. The harvested mark is a plain store:
 * see {@linkcode DirtyRing.harvest} for why no release store is needed.
 *
 * @example
 * ```ts ignore
 * vm.enableDirtyRing(64 * 1024); // before any vCPU
 * const vcpu = vm.createVcpu(0);
 * // ... run the guest ...
 * const ring = vm.dirtyRing(vcpu);
 * ring.harvest((slot, offset) => copyPage(slot, offset));
 * vm.resetDirtyRings(); // write-protects the harvested pages again
 * ```
 */
export class DirtyRing extends HostMapping {
  /** Names the mapping in error messages. */
  protected readonly kind = "dirty ring";
  /** Capacity in entries (the ring's bytes / 16); the vCPU exits as full before it is reached. */
  readonly entries: number;
  #words: Uint32Array;
  #mask: number;
  /** The next entry to harvest; only userspace keeps this index. */
  #next = 0;
  #label: string;

  private constructor(address: bigint, size: number, label: string) {
    super(address, size);
    this.entries = size / KvmDirtyGfn.size;
    this.#mask = this.entries - 1;
    this.#words = new Uint32Array(this.bytes.buffer, this.bytes.byteOffset, size / 4);
    this.#label = label;
  }

  /**
   * Maps the dirty ring of the vCPU whose fd is `vcpuFd` (a `Vcpu`'s
   * `unsafeFd`); `bytes` must be the size given to `Vm.enableDirtyRing`. For
   * a vCPU made by `Vm.createVcpu` the VM already did this: use
   * `vm.dirtyRing(vcpu)`. The caller owns the result and must close it.
   */
  static map(vcpuFd: number, bytes: number, label = `vCPU fd ${vcpuFd}`): DirtyRing {
    const op = "mmap dirty ring";
    if (!Number.isInteger(bytes) || bytes < PAGE_SIZE || (bytes & (bytes - 1)) !== 0) {
      throw new KvmError(op, Errno.EINVAL, `${label}: ${bytes} bytes is not a power of two ≥ 4096`);
    }
    const out = new BigUint64Array(1);
    const result = native().kvm_mmap(
      vcpuFd,
      BigInt(bytes),
      PROT_READ | PROT_WRITE,
      MAP_SHARED,
      BigInt(KVM_DIRTY_LOG_PAGE_OFFSET * PAGE_SIZE),
      out,
    );
    if (result < 0) {
      throw new KvmError(
        op,
        -result,
        `${label}: ${bytes} bytes at page ${KVM_DIRTY_LOG_PAGE_OFFSET} (is the dirty ring enabled?)`,
      );
    }
    return new DirtyRing(out[0], bytes, label);
  }

  /**
   * Calls `visit(slot, offset)` for each page the kernel pushed since the last
   * harvest, oldest first, and marks each entry harvested (`KVM_DIRTY_GFN_F_RESET`).
   * Returns the number of entries. Allocates nothing. The pages stay writable
   * for the guest, and their entries occupied, until `Vm.resetDirtyRings()`;
   * a page written again after that reset comes back in a later harvest.
   * If `visit` throws, that entry stays unharvested and comes first next time.
   */
  harvest(visit?: DirtyPageVisitor): number {
    const words = this.#words;
    if (words.length === 0) {
      throw new KvmError("harvest dirty ring", Errno.EBADF, `${this.#label} is closed`);
    }
    const mask = this.#mask;
    let next = this.#next;
    // The kernel stores an entry's slot and offset, then sets DIRTY in its
    // flags with a release store (smp_wmb before it without ACQ_REL), so the
    // flags must be read with acquire before slot and offset. The first entry
    // of the batch is read with Atomics.load. The later ones with plain loads,
    // which measured ~7 ns less per entry than Atomics.load on the mapping (a
    // plain ArrayBuffer) natively, and are acquire loads here all the same:
    // - the CPU: x86-64 (the only architecture this library supports) is TSO,
    //   it never reorders a load with a later load, and the kernel's stores
    //   become visible in the order it made them;
    // - the JIT: V8 keeps typed-array loads in program order (they are nodes
    //   of its effect chain; it may drop a repeated load, never move one above
    //   an earlier load or a branch it depends on), and slot and offset are
    //   read only on the path where the flags load saw DIRTY.
    // A weakly ordered CPU would need Atomics.load for every entry.
    if ((Atomics.load(words, (next & mask) * WORDS) & KVM_DIRTY_GFN_F_DIRTY) === 0) return 0;
    const first = next;
    try {
      for (;;) {
        const at = (next & mask) * WORDS;
        if ((words[at] & KVM_DIRTY_GFN_F_DIRTY) === 0) break;
        const slot = words[at + 1];
        // An offset below 2^31 stays a small integer for the JIT: arithmetic on
        // it in an inlined visitor (a modulo, a shift) is then integer
        // arithmetic, not a float64 one (a modulo of doubles is a call to fmod).
        const low = words[at + 2];
        const high = words[at + 3];
        const offset = high === 0 && low < 0x8000_0000 ? low | 0 : low + high * 0x1_0000_0000;
        visit?.(slot, offset);
        // A plain store, not a release (Atomics.store, a locked xchg on x86). The kernel reads the RESET mark only inside
        // KVM_RESET_DIRTY_RINGS (kvm_dirty_ring_reset() in virt/kvm/dirty_ring.c);
        // kvm_dirty_ring_push() never reads flags: it writes only entries that a
        // reset returned to it, and counts fullness by its indices. So the mark
        // and the reads of slot and offset above must only be complete before
        // that ioctl, which they are: on this thread by program order (the FFI
        // call is opaque to the JIT, which cannot sink the store past it, and a
        // system call is a full barrier); on another thread by whatever told it
        // the harvest was done (an Atomics operation or a message), which orders
        // this thread's earlier stores before its later ioctl.
        words[at] = KVM_DIRTY_GFN_F_RESET;
        next = (next + 1) >>> 0;
      }
    } finally {
      // Also when `visit` throws: the next harvest starts at the entry it threw on.
      this.#next = next;
    }
    return (next - first) >>> 0;
  }

  /** Entries the kernel pushed and {@linkcode harvest} has not visited yet (reads only). */
  get pending(): number {
    const words = this.#words;
    let n = 0;
    while (
      n < this.entries &&
      (Atomics.load(words, ((this.#next + n) & this.#mask) * WORDS) & KVM_DIRTY_GFN_F_DIRTY) !== 0
    ) n++;
    return n;
  }
}
