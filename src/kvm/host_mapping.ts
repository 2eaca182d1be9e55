/**
 * The base of this library's memory mappings (guest RAM, mapped files): an
 * mmap(2) region owned by one object, seen from JavaScript as a `Uint8Array`
 * without a copy, unmapped by `close()`.
 *
 * @module
 */

import { unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";

/**
 * A region of this process's memory from mmap(2), owned by this object. After
 * {@linkcode close} every view of {@linkcode bytes} is empty (its buffer is
 * detached before the unmap), so a stale view cannot touch unmapped memory.
 */
export abstract class HostMapping {
  #address: bigint;
  #buffer: ArrayBuffer;
  #unmapsItself = true;
  /** The memory, viewed without a copy. Length 0 after {@linkcode close}. */
  readonly bytes: Uint8Array;
  /** Size in bytes. */
  readonly size: number;
  /** Names the mapping in error messages ("guest memory", "file"). */
  protected abstract readonly kind: string;

  /** Takes ownership of `size` bytes mapped at `address`. */
  protected constructor(address: bigint, size: number) {
    this.#address = address;
    this.size = size;
    const pointer = Deno.UnsafePointer.create(address)!;
    this.#buffer = Deno.UnsafePointerView.getArrayBuffer(pointer, size);
    this.bytes = new Uint8Array(this.#buffer);
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
   * @internal The unmapping now belongs to a lifetime record (see
   * `lifetime.ts`): {@linkcode close} only empties this object's views.
   */
  handOverUnmap(): void {
    this.#unmapsItself = false;
  }

  /**
   * Unmaps the memory; views of {@linkcode bytes} become empty first. Memory
   * handed to a VM's lifetime record is unmapped when the VM and every
   * thread using it are done. Idempotent.
   */
  close(): void {
    if (this.#address === 0n) return;
    const address = this.#address;
    this.#address = 0n;
    this.#buffer.transfer(0);
    if (!this.#unmapsItself) return;
    unwrap(
      native().kvm_munmap(Deno.UnsafePointer.create(address), BigInt(this.size)),
      `munmap ${this.kind}`,
    );
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
