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

/** mmap(2) protection and flag bits used for guest RAM and vCPU run areas. */
export const PROT_READ = 1;
/** See {@linkcode PROT_READ}. */
export const PROT_WRITE = 2;
/** See {@linkcode PROT_READ}. */
export const MAP_SHARED = 0x01;
/** See {@linkcode PROT_READ}. */
export const MAP_PRIVATE = 0x02;
/** See {@linkcode PROT_READ}. */
export const MAP_NORESERVE = 0x4000;
/** See {@linkcode PROT_READ}. */
export const MAP_POPULATE = 0x8000;
/** The size of an x86 huge page (a PMD mapping), the unit KVM maps guest RAM in when it can. */
export const HUGE_PAGE_SIZE = 2 * 1024 * 1024;
/** madvise(2) advice: back the range with transparent huge pages. */
export const MADV_HUGEPAGE = 14;
/** open(2) flags (`fcntl.h`, x86-64): read only, read and write, non-blocking. */
export const O_RDONLY = 0;
/** See {@linkcode O_RDONLY}. */
export const O_RDWR = 2;
/** See {@linkcode O_RDONLY}. */
export const O_NONBLOCK = 0o4000;
