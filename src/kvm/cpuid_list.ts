/**
 * Reading a CPUID list from the kernel without guessing its length: start
 * with room for 64 entries and double on `E2BIG`.
 *
 * @module
 */

import { cpuidBuffer, type CpuidEntry, readCpuidBuffer } from "../abi/cpuid.ts";
import { Errno, KvmError } from "../errors.ts";
import { pointerOf } from "./owned_fd.ts";

const FIRST_CAPACITY = 64;
const LAST_CAPACITY = 4096;

/**
 * Calls `ioctl` (which returns a result or `-errno`) with `struct kvm_cpuid2`
 * buffers of growing capacity until the entries fit, and returns them.
 */
export function getCpuidList(
  operation: string,
  ioctl: (pointer: Deno.PointerValue) => number,
  detail: () => string,
): CpuidEntry[] {
  for (let capacity = FIRST_CAPACITY;; capacity *= 2) {
    const bytes = cpuidBuffer([], capacity);
    const result = ioctl(pointerOf(bytes));
    if (result >= 0) return readCpuidBuffer(bytes);
    if (result !== -Errno.E2BIG || capacity >= LAST_CAPACITY) {
      throw new KvmError(operation, -result, `${detail()} (buffer of ${capacity} entries)`);
    }
  }
}
