/**
 * The lifetime rule, in one place: **memory that KVM, a vCPU thread or a
 * device may touch stays mapped, and a descriptor they may use stays open,
 * until every user is provably done.**
 *
 * Each VM has one record in a SharedArrayBuffer (so every thread of the
 * process sees it: it travels in a {@linkcode KickTarget} and in the messages
 * to vCPU workers), made of a VM entry and one entry per vCPU it created:
 *
 * - Every entry counts its users (`REFS`): the owner object (`Vm`, `Vcpu`),
 *   a thread that adopted the vCPU (`Vcpu.adopt` with a kick target), a
 *   worker's `GuestRam`, and each vCPU entry holds its VM entry (a vCPU fd
 *   keeps the kernel's VM, and so its memory slots, alive).
 * - The owner's `close()` marks the entry CLOSING (no new user can join, a
 *   kick is a no-op), kicks the vCPU's runner out of `KVM_RUN` and drops its
 *   own count. Whoever drops the last count, on whatever thread, releases:
 *   it waits for kicks in flight, unmaps the run area, closes the fd, and
 *   drops the VM's count; the VM's last user closes the VM fd and unmaps the
 *   guest memory the VM allocated. What to release is data in the record,
 *   so any thread can do it.
 * - A user that never comes back (a thread stuck in native code) keeps its
 *   count: its memory stays mapped, a leak instead of a crash.
 *
 * Entries are never reused, so a stale target can only find its own closed
 * vCPU: there is no generation to compare.
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";
import { native } from "../ffi/library.ts";

/** Words of one entry. */
export const ENTRY_WORDS = 12;
/** Word offsets inside an entry. */
export const Entry = {
  /** Users holding the entry; 0 once released. */
  REFS: 0,
  /** {@linkcode LifeState}. */
  STATE: 1,
  /** vCPU: kicks in flight (each writes the run area). VM: guest mappings recorded. */
  KICKS: 2,
  /** The fd to close on release. */
  FD: 3,
  /** vCPU: kernel thread id of the thread that runs it. VM: vCPU entries used. */
  RUNNER: 4,
  /** vCPU: the run area's address, low 32 bits. */
  ADDR_LO: 5,
  /** vCPU: the run area's address, high 32 bits. */
  ADDR_HI: 6,
  /** vCPU: bytes of the run-area mapping. */
  SIZE: 7,
  /** vCPU: 1 while an adopting thread holds the entry (one at a time). */
  ADOPTED: 8,
  /** vCPU: 1 while a worker's guest-RAM views hold the entry. */
  RAM: 9,
  /**
   * vCPU: kicks sent, counted before each sets immediate_exit. `run()`
   * compares it with {@linkcode Entry.KICK_SEEN} after clearing the flag, so
   * a kick landing at any moment is either seen now or leaves the flag set
   * for the next `KVM_RUN` (see `Vcpu.run`).
   */
  KICK_SEQ: 10,
  /** vCPU: the {@linkcode Entry.KICK_SEQ} that the runner's last "interrupted" answered. */
  KICK_SEEN: 11,
} as const;

/** States of an entry. */
export const LifeState = {
  /** In use; users may join. */
  OPEN: 0,
  /** The owner closed it; the remaining users are finishing. */
  CLOSING: 1,
  /** Unmapped and closed. */
  RELEASED: 2,
} as const;

/** vCPU entries a VM record holds (entries are not reused). */
export const MAX_VCPU_ENTRIES = 1024;
/** Guest-memory mappings a VM record holds. */
export const MAX_MAPPINGS = 512;
const MAPPINGS_AT = (1 + MAX_VCPU_ENTRIES) * ENTRY_WORDS;
const RECORD_WORDS = MAPPINGS_AT + MAX_MAPPINGS * 4;

/** Index of word `field` of vCPU entry `slot` (entry 0 is the VM). */
export function vcpuWord(slot: number, field: number): number {
  return (1 + slot) * ENTRY_WORDS + field;
}

/** Which lease a non-owner user holds on a vCPU entry. */
export type Lease = typeof Entry.ADOPTED | typeof Entry.RAM;

/** One VM's lifetime record (see the module documentation). */
export class VmLife {
  /** The record, shared with every thread that got it. */
  readonly words: Int32Array;

  /** Wraps a record made by {@linkcode VmLife.create} (possibly on another thread). */
  constructor(words: Int32Array) {
    if (!(words.buffer instanceof SharedArrayBuffer) || words.length !== RECORD_WORDS) {
      throw new KvmError("VM lifetime", Errno.EINVAL, "not a VM lifetime record");
    }
    this.words = words;
  }

  /** A record for the VM on `fd`, held once by its owner. */
  static create(fd: number): VmLife {
    const words = new Int32Array(new SharedArrayBuffer(RECORD_WORDS * 4));
    words[Entry.REFS] = 1;
    words[Entry.FD] = fd;
    return new VmLife(words);
  }

  /** Whether the VM entry is released (its fd closed, its memory unmapped). */
  get vmReleased(): boolean {
    return Atomics.load(this.words, Entry.STATE) === LifeState.RELEASED;
  }

  /**
   * Hands the unmapping of guest memory to the VM entry: it happens when the
   * VM's last user is done. ENOSPC past {@linkcode MAX_MAPPINGS}.
   */
  addMapping(address: bigint, size: number): void {
    const w = this.words;
    const n = w[Entry.KICKS];
    if (n >= MAX_MAPPINGS) {
      throw new KvmError(
        "allocate guest memory",
        Errno.ENOSPC,
        `a VM allocates at most ${MAX_MAPPINGS} memories`,
      );
    }
    const at = MAPPINGS_AT + n * 4;
    writeU64(w, at, address);
    writeU64(w, at + 2, BigInt(size));
    Atomics.store(w, Entry.KICKS, n + 1);
  }

  /** Records a new vCPU (its fd, run area and thread), held by its owner; returns its slot. */
  addVcpu(fd: number, runAddress: bigint, size: number, thread: number): number {
    const w = this.words;
    const slot = w[Entry.RUNNER];
    if (slot >= MAX_VCPU_ENTRIES) {
      throw new KvmError(
        "KVM_CREATE_VCPU",
        Errno.ENOSPC,
        `a VM creates at most ${MAX_VCPU_ENTRIES} vCPUs over its life`,
      );
    }
    if (!this.#acquire(0)) {
      throw new KvmError("KVM_CREATE_VCPU", Errno.EBADF, "the VM is closed");
    }
    w[Entry.RUNNER] = slot + 1;
    const base = vcpuWord(slot, 0);
    w[base + Entry.FD] = fd;
    writeU64(w, base + Entry.ADDR_LO, runAddress);
    w[base + Entry.SIZE] = size;
    w[base + Entry.RUNNER] = thread;
    Atomics.store(w, base + Entry.REFS, 1);
    return slot;
  }

  /** The owner closes the VM entry: no new users, its own count dropped. */
  closeVm(): void {
    Atomics.compareExchange(this.words, Entry.STATE, LifeState.OPEN, LifeState.CLOSING);
    this.#release(0);
  }

  /** Whether vCPU entry `slot` is open (an acquire-free read for the run loop's slow path). */
  vcpuOpen(slot: number): boolean {
    // A read-modify-write, not a load: it orders the caller's earlier plain store
    // (clearing immediate_exit) before this read (see Vcpu.run).
    return Atomics.or(this.words, vcpuWord(slot, Entry.STATE), 0) === LifeState.OPEN;
  }

  /**
   * For the runner of vCPU `slot`, after it cleared immediate_exit: whether a
   * kick was sent since its last "interrupted" (and marks it answered). The
   * read is a read-modify-write, so the caller's plain store clearing the flag
   * is ordered before it: a kick this read misses stores its flag after the
   * clear, and the next `KVM_RUN` returns at once and sees it.
   */
  takeKick(slot: number): boolean {
    const w = this.words;
    const seq = Atomics.or(w, vcpuWord(slot, Entry.KICK_SEQ), 0);
    const seen = vcpuWord(slot, Entry.KICK_SEEN);
    if (seq === w[seen]) return false;
    Atomics.store(w, seen, seq);
    return true;
  }

  /** The run area's address recorded for vCPU `slot`. */
  runAddress(slot: number): bigint {
    return readU64(this.words, vcpuWord(slot, Entry.ADDR_LO));
  }

  /** The fd recorded for vCPU `slot`. */
  vcpuFd(slot: number): number {
    return this.words[vcpuWord(slot, Entry.FD)];
  }

  /** Records the thread that runs vCPU `slot` (the one the owner's close kicks). */
  setRunner(slot: number, thread: number): void {
    Atomics.store(this.words, vcpuWord(slot, Entry.RUNNER), thread);
  }

  /**
   * Takes `lease` on vCPU `slot`: false when the vCPU is closed (or being
   * closed); EBUSY when another user holds that lease.
   */
  acquireLease(slot: number, lease: Lease, operation: string): boolean {
    const w = this.words;
    const at = vcpuWord(slot, lease);
    if (Atomics.compareExchange(w, at, 0, 1) !== 0) {
      throw new KvmError(operation, Errno.EBUSY, `vCPU entry ${slot} is already held`);
    }
    if (this.#acquire(vcpuWord(slot, 0))) return true;
    Atomics.store(w, at, 0);
    return false;
  }

  /**
   * Gives back `lease` on vCPU `slot`, once: a second call (say, the context
   * releasing for a worker whose thread is gone) does nothing. Returns
   * whether this call released it.
   */
  releaseLease(slot: number, lease: Lease): boolean {
    if (Atomics.compareExchange(this.words, vcpuWord(slot, lease), 1, 0) !== 1) return false;
    this.#release(vcpuWord(slot, 0));
    return true;
  }

  /** Whether `lease` on vCPU `slot` is held. */
  leaseHeld(slot: number, lease: Lease): boolean {
    return Atomics.load(this.words, vcpuWord(slot, lease)) === 1;
  }

  /** The thread recorded as running vCPU `slot`. */
  runner(slot: number): number {
    return Atomics.load(this.words, vcpuWord(slot, Entry.RUNNER));
  }

  /**
   * The owner closes vCPU `slot`: marks it CLOSING (kicks become no-ops, no
   * one can adopt it), makes its runner leave `KVM_RUN` (immediate_exit,
   * then the kick signal, unless the runner is the calling thread), and
   * drops the owner's count.
   */
  closeVcpu(slot: number): void {
    const w = this.words;
    const base = vcpuWord(slot, 0);
    Atomics.compareExchange(w, base + Entry.STATE, LifeState.OPEN, LifeState.CLOSING);
    if (Atomics.load(w, base + Entry.REFS) > 1) {
      // Someone else still uses it: while the owner's count is held the run area is mapped.
      const lib = native();
      const runner = Atomics.load(w, base + Entry.RUNNER);
      const tid = runner === lib.kvm_thread_id() ? 0 : runner;
      Atomics.add(w, base + Entry.KICK_SEQ, 1);
      lib.kvm_kick(tid, Deno.UnsafePointer.create(this.runAddress(slot) + 1n));
    }
    this.#release(base);
  }

  /** Joins entry `base` as a user: only while it is open and held. */
  #acquire(base: number): boolean {
    const w = this.words;
    for (;;) {
      const refs = Atomics.load(w, base + Entry.REFS);
      if (refs <= 0 || Atomics.load(w, base + Entry.STATE) !== LifeState.OPEN) return false;
      if (Atomics.compareExchange(w, base + Entry.REFS, refs, refs + 1) !== refs) continue;
      if (Atomics.load(w, base + Entry.STATE) === LifeState.OPEN) return true;
      // Closed in between: the owner may not have seen this user (nor kicked it). Leave,
      // releasing if this was the last count.
      this.#release(base);
      return false;
    }
  }

  #release(base: number): void {
    const w = this.words;
    const left = Atomics.sub(w, base + Entry.REFS, 1) - 1;
    if (left > 0) return;
    if (left < 0) throw new Error("VM lifetime: released more often than held");
    const lib = native();
    if (base !== 0) {
      // A kick that saw the entry OPEN may still be writing immediate_exit: wait it out
      // (a store and a tgkill, microseconds).
      for (
        let k = Atomics.load(w, base + Entry.KICKS);
        k !== 0;
        k = Atomics.load(w, base + Entry.KICKS)
      ) {
        Atomics.wait(w, base + Entry.KICKS, k, 1);
      }
      const address = readU64(w, base + Entry.ADDR_LO);
      lib.kvm_munmap(Deno.UnsafePointer.create(address), BigInt(w[base + Entry.SIZE]));
      lib.kvm_close(w[base + Entry.FD]);
      Atomics.store(w, base + Entry.STATE, LifeState.RELEASED);
      this.#release(0);
      return;
    }
    lib.kvm_close(w[Entry.FD]);
    const n = Atomics.load(w, Entry.KICKS);
    for (let i = 0; i < n; i++) {
      const at = MAPPINGS_AT + i * 4;
      lib.kvm_munmap(Deno.UnsafePointer.create(readU64(w, at)), readU64(w, at + 2));
    }
    Atomics.store(w, Entry.STATE, LifeState.RELEASED);
  }
}

function writeU64(w: Int32Array, at: number, value: bigint): void {
  w[at] = Number(value & 0xffff_ffffn) | 0;
  w[at + 1] = Number(value >> 32n) | 0;
}

function readU64(w: Int32Array, at: number): bigint {
  return BigInt(w[at] >>> 0) | (BigInt(w[at + 1] >>> 0) << 32n);
}
