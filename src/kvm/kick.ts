/**
 * Kicking a vCPU out of `KVM_RUN` from any thread. A module of its own, with
 * only the FFI layer and the lifetime record below it, so that small Workers
 * (a watchdog, an input pump) can kick without loading the whole `Vcpu` class.
 *
 * @module
 */

import { unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { Entry, LifeState, vcpuWord } from "./lifetime.ts";

/**
 * What another thread needs to kick a vCPU out of `KVM_RUN`: numbers and a
 * view of a SharedArrayBuffer, so it can be posted to a Worker. Get one from
 * `Vcpu.kickTarget`; the kick goes through the vCPU's lifetime record, so a
 * target of a closed vCPU kicks nothing (see `lifetime.ts`).
 */
export interface KickTarget {
  /** Kernel thread id of the thread that runs the vCPU (0: set immediate_exit only). */
  threadId: number;
  /** Host address of the run area, for information: a kick writes where the record says. */
  runAddress: bigint;
  /**
   * The VM's lifetime record. A target without it (made by hand) kicks only a
   * vCPU this thread's module instance knows by `runAddress`, else nothing.
   */
  life?: Int32Array;
  /** The vCPU's entry in {@linkcode KickTarget.life}. */
  slot?: number;
}

/** Run areas of the vCPUs known to this thread (targets made by hand find their record here). */
const known = new Map<bigint, { life: Int32Array; slot: number }>();

/** @internal Lets targets without a record find this vCPU's (see {@linkcode KickTarget.life}). */
export function registerKickable(runAddress: bigint, life: Int32Array, slot: number): void {
  known.set(runAddress, { life, slot });
}

/** @internal Forgets a vCPU registered with {@linkcode registerKickable}. */
export function unregisterKickable(runAddress: bigint, life: Int32Array): void {
  if (known.get(runAddress)?.life === life) known.delete(runAddress);
}

/**
 * Makes the vCPU's current or next `KVM_RUN` return `EINTR`: sets the run
 * area's `immediate_exit`, then signals the vCPU's thread. Thread-safe. A
 * closed (or closing) vCPU, or a target this library cannot trace to a live
 * vCPU, is a no-op: the kick counts itself in the vCPU's record while it
 * writes, and the run area is unmapped only once no kick is in flight.
 */
export function kickVcpu(target: KickTarget): void {
  let life = target.life;
  let slot = target.slot ?? 0;
  if (life === undefined) {
    const entry = known.get(target.runAddress);
    if (entry === undefined) return;
    ({ life, slot } = entry);
  }
  const kicks = vcpuWord(slot, Entry.KICKS);
  Atomics.add(life, kicks, 1);
  try {
    if (Atomics.load(life, vcpuWord(slot, Entry.STATE)) !== LifeState.OPEN) return;
    // Counted before the flag is set: the runner clears the flag, then reads the count
    // (VmLife.takeKick), so it either sees this kick now or finds the flag set again.
    Atomics.add(life, vcpuWord(slot, Entry.KICK_SEQ), 1);
    const at = vcpuWord(slot, Entry.ADDR_LO);
    const runAddress = BigInt(life[at] >>> 0) | (BigInt(life[at + 1] >>> 0) << 32n);
    const immediateExit = Deno.UnsafePointer.create(runAddress + 1n);
    unwrap(native().kvm_kick(target.threadId, immediateExit), "tgkill (vCPU kick)");
  } finally {
    if (Atomics.sub(life, kicks, 1) === 1) Atomics.notify(life, kicks);
  }
}
