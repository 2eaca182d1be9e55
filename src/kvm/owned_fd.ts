/**
 * The base of every kernel object: it owns one file descriptor, closes it once,
 * and refuses use after close with a typed error.
 *
 * @module
 */

import { Errno, KvmError, unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";

/** An owned kernel file descriptor. */
export abstract class OwnedFd {
  #fd: number;
  /** What this object is, for error messages ("vCPU 2"). */
  protected abstract readonly label: string;

  /** Takes ownership of `fd`. */
  protected constructor(fd: number) {
    this.#fd = fd;
  }

  /** The raw file descriptor. Unsafe: closing it behind this object's back breaks it. */
  get unsafeFd(): number {
    return this.#fd;
  }

  /** Whether {@linkcode close} has been called. */
  get closed(): boolean {
    return this.#fd < 0;
  }

  /** The open fd, or a KvmError(EBADF) naming `operation` after close. */
  protected fd(operation: string): number {
    if (this.#fd < 0) {
      throw new KvmError(operation, Errno.EBADF, `the ${this.label} is closed`);
    }
    return this.#fd;
  }

  /** An ioctl with a pointer argument, throwing a KvmError on failure. */
  protected ioctlPtr(
    operation: string,
    request: number,
    arg: Deno.PointerValue,
    detail?: () => string,
  ): number {
    return unwrap(native().kvm_ioctl_ptr(this.fd(operation), request, arg), operation, detail);
  }

  /** An ioctl with an integer argument, throwing a KvmError on failure. */
  protected ioctlVal(
    operation: string,
    request: number,
    arg: bigint | number,
    detail?: () => string,
  ): number {
    return unwrap(
      native().kvm_ioctl_val(this.fd(operation), request, BigInt(arg)),
      operation,
      detail,
    );
  }

  /** Releases what the subclass owns, before the fd is closed. */
  protected releaseResources(): void {}

  /**
   * Closes the fd at the end of {@linkcode close}. A subclass whose fd other
   * threads may still use hands it to its lifetime record instead (see
   * `lifetime.ts`).
   */
  protected closeFd(fd: number): void {
    native().kvm_close(fd);
  }

  /** Closes the object and everything it owns. Idempotent. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    try {
      this.releaseResources();
    } finally {
      this.#fd = -1;
      this.closeFd(fd);
    }
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Pointer to a struct codec's bytes, computed once per buffer. */
export function pointerOf(bytes: Uint8Array): Deno.PointerValue {
  return Deno.UnsafePointer.of(bytes as Uint8Array<ArrayBuffer>);
}
