/**
 * Host memory that backs guest RAM: an anonymous mapping seen from JavaScript
 * as a `Uint8Array` without any copy.
 *
 * @module
 */

import { Errno, KvmError, unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";
import {
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
} from "./constants.ts";

/** Options of {@linkcode GuestMemory.allocate}. */
export interface GuestMemoryOptions {
  /**
   * Share the pages (MAP_SHARED) instead of a private mapping. Either works
   * for KVM; shared pages survive a fork of the process.
   */
  shared?: boolean;
}

/**
 * A page-aligned anonymous mapping. Pages are reserved lazily (MAP_NORESERVE),
 * so a large guest costs only what it touches.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "../../mod.ts";
 * using ram = GuestMemory.allocate(2 * 1024 * 1024);
 * ram.bytes.set([0xf4], 0); // hlt
 * ```
 */
export class GuestMemory {
  #address: bigint;
  #buffer: ArrayBuffer;
  /** The memory, viewed without a copy. Length 0 after {@linkcode close}. */
  readonly bytes: Uint8Array;
  /** Size in bytes. */
  readonly size: number;

  private constructor(address: bigint, size: number) {
    this.#address = address;
    this.size = size;
    const pointer = Deno.UnsafePointer.create(address)!;
    this.#buffer = Deno.UnsafePointerView.getArrayBuffer(pointer, size);
    this.bytes = new Uint8Array(this.#buffer);
  }

  /** Maps `size` bytes (a positive multiple of 4096) of zeroed memory. */
  static allocate(size: number, options: GuestMemoryOptions = {}): GuestMemory {
    const operation = "mmap guest memory";
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new KvmError(
        operation,
        Errno.EINVAL,
        `size ${size} is not a positive multiple of the ${PAGE_SIZE}-byte page`,
      );
    }
    const out = new BigUint64Array(1);
    const flags = (options.shared ? MAP_SHARED : MAP_PRIVATE) | MAP_NORESERVE;
    unwrap(
      native().kvm_mmap(-1, BigInt(size), PROT_READ | PROT_WRITE, flags, 0n, out),
      operation,
      () => `${size} bytes`,
    );
    return new GuestMemory(out[0], size);
  }

  /** The host virtual address (for `userspace_addr`); 0n after close. */
  get address(): bigint {
    return this.#address;
  }

  /** Whether {@linkcode close} has been called. */
  get closed(): boolean {
    return this.#address === 0n;
  }

  /**
   * Unmaps the memory. Every view of {@linkcode bytes} becomes empty first
   * (its buffer is detached), so a stale view cannot touch unmapped memory.
   * Idempotent. Unmap only after the memory slots using it are removed or
   * their VM is closed: the VM does this for memory it allocated.
   */
  close(): void {
    if (this.#address === 0n) return;
    const address = this.#address;
    this.#address = 0n;
    this.#buffer.transfer(0);
    unwrap(
      native().kvm_munmap(Deno.UnsafePointer.create(address), BigInt(this.size)),
      "munmap guest memory",
    );
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
