/**
 * The port I/O bus: dispatches the guest's IN/OUT instructions to device
 * models by port range.
 *
 * Lookup is one typed-array read per access (a 64 Ki-entry table of device
 * indices), and the exit's data is read and written through one `DataView`
 * per run area, made on first use: handling an exit allocates nothing.
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";
import { hex } from "../kvm/constants.ts";

/** A device model on the port bus. `port` is the absolute port number. */
export interface PortDevice {
  /** Returns the value the guest reads (`size` is 1, 2 or 4 bytes). */
  portRead(port: number, size: number): number;
  /** Takes the value the guest wrote (`size` is 1, 2 or 4 bytes). */
  portWrite(port: number, size: number, value: number): void;
}

/** An access to a port no device claimed, as reported to {@linkcode IoBusOptions.onUnhandled}. */
export interface UnhandledAccess {
  /** `"in"` or `"out"`. */
  direction: "in" | "out";
  /** The port. */
  port: number;
  /** Bytes: 1, 2 or 4. */
  size: number;
  /** The value written (0 for reads). */
  value: number;
}

/** Options of {@linkcode IoBus}. */
export interface IoBusOptions {
  /**
   * Called on the FIRST access to each unclaimed port (so a guest that polls a
   * missing device does not flood a log). Reads of unclaimed ports return
   * all-ones, as on a PC bus with nothing behind the address; writes are dropped.
   */
  onUnhandled?: (access: UnhandledAccess) => void;
}

/** Reads as all-ones, ignores writes: an empty ISA bus. */
const NOTHING: PortDevice = {
  portRead: (_port, size) => size === 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff,
  portWrite: () => {},
};

/**
 * Port ranges mapped to device models.
 *
 * @example
 * ```ts
 * import { IoBus } from "@deno-kvm/kvm/vmm";
 * const bus = new IoBus();
 * let last = 0;
 * bus.register(0xe9, 1, { portRead: () => 0xe9, portWrite: (_p, _s, v) => last = v });
 * bus.write(0xe9, 1, 0x41);
 * console.log(last, bus.read(0xe9, 1), bus.read(0x1234, 2)); // 65 233 65535
 * ```
 */
export class IoBus {
  #owner = new Uint16Array(0x10000);
  #devices: PortDevice[] = [NOTHING];
  #seen = new Uint8Array(0x10000);
  #onUnhandled?: (access: UnhandledAccess) => void;
  #view: DataView = new DataView(new ArrayBuffer(0));

  /** Creates an empty bus. */
  constructor(options: IoBusOptions = {}) {
    this.#onUnhandled = options.onUnhandled;
  }

  /**
   * Gives `device` the ports `base .. base + length - 1`. Throws a RangeError
   * when a port is outside 0..0xffff or already taken.
   */
  register(base: number, length: number, device: PortDevice): void {
    if (!Number.isInteger(base) || !Number.isInteger(length) || length < 1) {
      throw new RangeError(`bad port range ${base} + ${length}`);
    }
    if (base < 0 || base + length > 0x10000) {
      throw new RangeError(`ports ${hex(base)}..${hex(base + length - 1)} exceed 0xffff`);
    }
    for (let p = base; p < base + length; p++) {
      if (this.#owner[p] !== 0) throw new RangeError(`port ${hex(p)} is already taken`);
    }
    const index = this.#devices.push(device) - 1;
    this.#owner.fill(index, base, base + length);
  }

  /** The device on `port`, or undefined. */
  deviceAt(port: number): PortDevice | undefined {
    const index = this.#owner[port & 0xffff];
    return index === 0 ? undefined : this.#devices[index];
  }

  /** One guest read of `size` bytes at `port`. */
  read(port: number, size: number): number {
    const index = this.#owner[port];
    if (index === 0) this.#unhandled("in", port, size, 0);
    return this.#devices[index].portRead(port, size);
  }

  /** One guest write of `size` bytes at `port`. */
  write(port: number, size: number, value: number): void {
    const index = this.#owner[port];
    if (index === 0) this.#unhandled("out", port, size, value);
    this.#devices[index].portWrite(port, size, value);
  }

  /**
   * Handles a whole port I/O exit (`Vcpu.run()`'s `"io"` exit, or the same
   * fields forwarded from another thread): `count` elements of `size` bytes in
   * `data`, read from it for `"out"`, written into it for `"in"`.
   *
   * The fields come from the run area the guest's exit filled (or from
   * another thread), so they are checked, not trusted: `size` must be 1, 2
   * or 4, `port` 0..0xffff, and `count` a whole number of elements that fit
   * in `data`; otherwise a {@linkcode KvmError} (`EINVAL`, operation
   * `"handle port I/O"`) is thrown before any device sees an access and
   * nothing outside `data` is read or written. The checks allocate nothing.
   */
  handle(
    direction: "in" | "out",
    port: number,
    size: number,
    count: number,
    data: Uint8Array,
  ): void {
    if (
      (size !== 1 && size !== 2 && size !== 4) || !(port >= 0 && port <= 0xffff) ||
      (port | 0) !== port || !(count >= 0) || (count >>> 0) !== count ||
      count * size > data.length
    ) {
      throw new KvmError(
        "handle port I/O",
        Errno.EINVAL,
        `port ${port}, size ${size}, count ${count}: ` +
          `size must be 1, 2 or 4, port 0..0xffff, count * size at most data's ${data.length} bytes`,
      );
    }
    if (this.#view.buffer !== data.buffer) {
      // Once per buffer (the run area, a mailbox), not per exit.
      this.#view = new DataView(data.buffer);
    }
    const view = this.#view;
    let at = data.byteOffset;
    for (let i = 0; i < count; i++, at += size) {
      if (direction === "out") {
        const value = size === 1
          ? view.getUint8(at)
          : size === 2
          ? view.getUint16(at, true)
          : view.getUint32(at, true);
        this.write(port, size, value);
      } else {
        const value = this.read(port, size);
        if (size === 1) view.setUint8(at, value);
        else if (size === 2) view.setUint16(at, value, true);
        else view.setUint32(at, value >>> 0, true);
      }
    }
  }

  #unhandled(direction: "in" | "out", port: number, size: number, value: number): void {
    if (this.#seen[port]) return;
    this.#seen[port] = 1;
    this.#onUnhandled?.({ direction, port, size, value });
  }
}
