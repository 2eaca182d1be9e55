/**
 * Reading a CPUID list from the kernel without guessing its length: start
 * with room for 64 entries and double on `E2BIG`.
 *
 * @module
 */

import { cpuidBuffer, type CpuidEntry, markCpuidSlots, readCpuidBuffer } from "../abi/cpuid.ts";
import { Errno, KvmError } from "../errors.ts";
import { pointerOf } from "./owned_fd.ts";

const FIRST_CAPACITY = 64;
const LAST_CAPACITY = 4096;

/**
 * Calls `ioctl` (which returns a result or `-errno`) with `struct kvm_cpuid2`
 * buffers of growing capacity until the entries fit, and returns them. With
 * `markSlots` (for `KVM_GET_CPUID2`, whose `nent` older kernels leave as it
 * was) the end of the list is found by the slots the kernel did not write.
 */
export function getCpuidList(
  operation: string,
  ioctl: (pointer: Deno.PointerValue) => number,
  detail: () => string,
  markSlots = false,
): CpuidEntry[] {
  for (let capacity = FIRST_CAPACITY;; capacity *= 2) {
    const empty = cpuidBuffer([], capacity);
    // The system ioctls insist on zeroed padding, and they do update `nent`.
    const bytes = markSlots ? markCpuidSlots(empty) : empty;
    const result = ioctl(pointerOf(bytes));
    if (result >= 0) return readCpuidBuffer(bytes);
    if (result !== -Errno.E2BIG || capacity >= LAST_CAPACITY) {
      throw new KvmError(operation, -result, `${detail()} (buffer of ${capacity} entries)`);
    }
  }
}
