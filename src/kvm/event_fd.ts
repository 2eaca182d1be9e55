/**
 * Linux eventfds: the counters KVM signals (ioeventfd) or listens to (irqfd).
 *
 * @module
 */

import { Errno, unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { OwnedFd } from "./owned_fd.ts";
import { u32, u64 } from "./validate.ts";

const EFD_SEMAPHORE = 1;
const EFD_NONBLOCK = 0o4000;

/** Options of {@linkcode EventFd.create}. */
export interface EventFdOptions {
  /** Initial counter value; default 0. */
  initialValue?: number;
  /**
   * Non-blocking reads and writes (`EFD_NONBLOCK`); default true, so that
   * {@linkcode EventFd.read} returns 0n instead of waiting when nothing was
   * signalled. With `false`, a read on a zero counter blocks the thread.
   */
  nonBlocking?: boolean;
  /** Each read takes 1 from the counter instead of all of it (`EFD_SEMAPHORE`). */
  semaphore?: boolean;
}

/**
 * An owned eventfd (`eventfd(2)`): a 64-bit counter that a write adds to and a
 * read takes and zeroes. Pass it to `Vm.registerIrqfd` (writing it raises a
 * guest interrupt) or `Vm.registerIoevent` (a guest write signals it without
 * a vCPU exit).
 *
 * @example
 * ```ts
 * import { EventFd } from "@deno-kvm/kvm";
 * using efd = EventFd.create();
 * efd.write(2n);
 * efd.write(3n);
 * console.log(efd.read()); // 5n
 * console.log(efd.read()); // 0n: nothing pending
 * ```
 */
export class EventFd extends OwnedFd {
  /** Names this object in error messages. */
  protected readonly label = "EventFd";
  #out = new BigUint64Array(1);
  #nonBlocking: boolean;

  private constructor(fd: number, nonBlocking: boolean) {
    super(fd);
    this.#nonBlocking = nonBlocking;
  }

  /** Creates an eventfd (close-on-exec). */
  static create(options: EventFdOptions = {}): EventFd {
    const nonBlocking = options.nonBlocking ?? true;
    const flags = (nonBlocking ? EFD_NONBLOCK : 0) | (options.semaphore ? EFD_SEMAPHORE : 0);
    const initialValue = u32("eventfd", "initialValue", options.initialValue ?? 0);
    const fd = unwrap(native().kvm_eventfd(initialValue, flags), "eventfd");
    return new EventFd(fd, nonBlocking);
  }

  /**
   * Reads the counter and resets it (or takes 1 in semaphore mode). Returns
   * 0n when the counter is zero and the eventfd is non-blocking.
   */
  read(): bigint {
    const result = native().kvm_read_u64(this.fd("read eventfd"), this.#out);
    if (result === -Errno.EAGAIN && this.#nonBlocking) return 0n;
    unwrap(result, "read eventfd", () => this.label);
    return this.#out[0];
  }

  /** Adds `value` (default 1) to the counter, waking whoever waits on it. */
  write(value: bigint | number = 1n): void {
    unwrap(
      native().kvm_write_u64(this.fd("write eventfd"), u64("write eventfd", "value", value)),
      "write eventfd",
      () => `${this.label}, value ${value}`,
    );
  }
}
