/**
 * Guest RAM seen from a vCPU worker: the main thread's mappings re-wrapped
 * from their addresses (native memory cannot become a SharedArrayBuffer, and
 * a pointer object cannot be posted, but addresses are process-wide).
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";
import { hex } from "../kvm/constants.ts";
import type { KickTarget } from "../kvm/kick.ts";
import { Entry, VmLife } from "../kvm/lifetime.ts";
import type { SlotInfo } from "./protocol.ts";

interface Slot {
  start: number;
  end: number;
  buffer: ArrayBuffer;
  bytes: Uint8Array;
}

/**
 * Views of guest RAM by guest physical address, without copies. The memory
 * stays mapped while this object is open, even if the context closes first
 * (it holds the vCPU's entry in the VM's lifetime record, see `lifetime.ts`):
 * views taken stay valid until the worker closes it, and {@linkcode view}
 * after the vCPU was closed is a KvmError(`EBADF`).
 *
 * @example
 * ```ts
 * import type { DeviceContext, VcpuDevice } from "@deno-kvm/kvm";
 * export default ({ memory }: DeviceContext): VcpuDevice => ({
 *   ioOut(_port, _size, data) {
 *     console.log(memory.view(0x500, 4)); // what the guest stored
 *   },
 * });
 * ```
 */
export class GuestRam {
  #slots: Slot[];
  #life: VmLife;
  #entry: number;
  #open = true;

  /**
   * @internal Wraps the posted slots, holding the vCPU that `owner` (its
   * owner's kick target) names: EBADF when it is already closed.
   */
  constructor(slots: readonly SlotInfo[], owner: KickTarget) {
    if (owner.life === undefined || owner.slot === undefined) {
      throw new KvmError("guest memory access", Errno.EINVAL, "no lifetime record given");
    }
    this.#life = new VmLife(owner.life);
    this.#entry = owner.slot;
    if (!this.#life.acquireLease(this.#entry, Entry.RAM, "guest memory access")) {
      throw new KvmError("guest memory access", Errno.EBADF, "the vCPU is closed");
    }
    this.#slots = slots.map((s) => {
      const buffer = Deno.UnsafePointerView.getArrayBuffer(
        Deno.UnsafePointer.create(s.hostAddress)!,
        s.size,
      );
      return {
        start: s.guestPhysAddr,
        end: s.guestPhysAddr + s.size,
        buffer,
        bytes: new Uint8Array(buffer),
      };
    });
  }

  /**
   * `length` bytes at guest physical `gpa`, inside one slot; otherwise a
   * KvmError with `EFAULT`. A negative or fractional `gpa` or `length` is
   * `EINVAL` naming it; after the vCPU (or this object) closed, `EBADF`.
   */
  view(gpa: number, length: number): Uint8Array {
    const op = "guest memory access";
    if (!Number.isSafeInteger(gpa) || gpa < 0) {
      throw new KvmError(op, Errno.EINVAL, `gpa ${gpa} is not a non-negative integer`);
    }
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new KvmError(op, Errno.EINVAL, `length ${length} is not a non-negative integer`);
    }
    if (!this.#open || !this.#life.vcpuOpen(this.#entry)) {
      throw new KvmError(op, Errno.EBADF, "the vCPU is closed");
    }
    for (const s of this.#slots) {
      if (gpa >= s.start && gpa + length <= s.end) {
        return s.bytes.subarray(gpa - s.start, gpa - s.start + length);
      }
    }
    throw new KvmError(
      "guest memory access",
      Errno.EFAULT,
      `${hex(gpa)}..${hex(gpa + length)} is not inside guest RAM`,
    );
  }

  /** @internal Detaches every view, then gives back its hold on the memory. Idempotent. */
  close(): void {
    for (const s of this.#slots) s.buffer.transfer(0);
    this.#slots = [];
    this.#open = false;
    this.#life.releaseLease(this.#entry, Entry.RAM);
  }
}
