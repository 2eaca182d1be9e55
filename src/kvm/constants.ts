/**
 * Small constants shared by the kernel-object layer.
 *
 * @module
 */

/** The x86 page size, the granule of memory slots and dirty logs. */
export const PAGE_SIZE = 4096;

/** The only KVM API version there has ever been (`KVM_GET_API_VERSION`). */
export const KVM_API_VERSION = 12;

/** Hex formatting for messages: `0x100000`. */
export function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}
