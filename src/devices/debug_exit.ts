/**
 * QEMU's `isa-debug-exit` device: a port through which a test guest ends the
 * machine with an exit status. A write of `code` ends the run with status
 * `code << 1 | 1` (so a guest can never report 0: a 0 from QEMU means the
 * guest did not use the device). kvm-unit-tests writes its result to port
 * 0xf4 with `outl`: 1 is a pass, 3 a failure, 77 a skip.
 *
 * @example
 * ```ts
 * import { DebugExitDevice } from "@deno-kvm/kvm/vmm";
 * let status = -1;
 * const dev = new DebugExitDevice((s) => status = s);
 * dev.write(0, new Uint8Array(4)); // the guest's exit(0): outl of 0 to port 0xf4
 * console.log(status); // 1
 * ```
 *
 * @module
 */

import { type BusDevice, loadLe } from "./bus_device.ts";

/** The port kvm-unit-tests (and QEMU's `iobase=0xf4`) use. */
export const DEBUG_EXIT_PORT = 0xf4;
/** Ports the device claims (`iosize=0x4`). */
export const DEBUG_EXIT_SIZE = 4;

/** The exit status of a write of `code` of `size` bytes: `code << 1 | 1`. */
export function debugExitStatus(code: number, size = 4): number {
  const mask = size === 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff;
  return ((code & mask) * 2 + 1);
}

/**
 * The debug-exit port device. Reads return 0 (QEMU's device reads as 0);
 * each write, at any offset, calls `onExit` with {@linkcode debugExitStatus}
 * of the value written. Ending the run is the machine's business: the
 * callback should stop its vCPUs.
 */
export class DebugExit implements BusDevice {
  #onExit: (status: number) => void;
  /** The status of the last write, or undefined before any. */
  status: number | undefined;

  /** Creates the device; `onExit` receives the exit status. */
  constructor(onExit: (status: number) => void) {
    this.#onExit = onExit;
  }

  /** Reads as 0. */
  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  /** Ends the run with status `value << 1 | 1`. */
  write(_offset: number, data: Uint8Array): void {
    this.status = debugExitStatus(loadLe(data), data.length);
    this.#onExit(this.status);
  }
}
