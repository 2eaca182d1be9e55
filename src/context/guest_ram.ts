/**
 * Guest RAM seen from a vCPU worker: the main thread's mappings re-wrapped
 * from their addresses (native memory cannot become a SharedArrayBuffer, and
 * a pointer object cannot be posted, but addresses are process-wide).
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";
import { hex } from "../kvm/constants.ts";
import type { SlotInfo } from "./protocol.ts";

interface Slot {
  start: number;
  end: number;
  buffer: ArrayBuffer;
  bytes: Uint8Array;
}

/**
 * Views of guest RAM by guest physical address, without copies. Only valid
 * while the context is open: the context ends every worker before unmapping.
 *
 * @example
 * ```ts
 * import type { DeviceContext, VcpuDevice } from "../../mod.ts";
 * export default ({ memory }: DeviceContext): VcpuDevice => ({
 *   ioOut(_port, _size, data) {
 *     console.log(memory.view(0x500, 4)); // what the guest stored
 *   },
 * });
 * ```
 */
export class GuestRam {
  #slots: Slot[];

  /** @internal Wraps the posted slots. */
  constructor(slots: readonly SlotInfo[]) {
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
   * KvmError with `EFAULT`.
   */
  view(gpa: number, length: number): Uint8Array {
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

  /** @internal Detaches every view (before the worker ends). */
  close(): void {
    for (const s of this.#slots) s.buffer.transfer(0);
    this.#slots = [];
  }
}
