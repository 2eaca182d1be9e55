/**
 * The bus that devices sit on: one type for port I/O and MMIO, as
 * Firecracker's `Bus`. A device ({@linkcode BusDevice}) is inserted at a
 * base and a length; the bus finds it by address and hands it the OFFSET
 * into its range, so one model serves any base (COM1 at 0x3f8, COM2 at
 * 0x2f8, a UART in MMIO space) on either bus.
 *
 * A machine has two: a port bus (`space: "pio"`, addresses 0..0xffff) and an
 * MMIO bus (`space: "mmio"`, guest-physical addresses as numbers). Every vCPU
 * thread hands its exits to the same two methods, {@linkcode Bus.handlePio}
 * and {@linkcode Bus.handleMmio}; they check the exit's fields (they come
 * from a run area or a mailbox), and allocate nothing: lookup is a table read
 * (ports) or a binary search over the sorted ranges (MMIO), and string I/O
 * goes element by element through byte views made with the bus.
 *
 * Accesses no device claims read as all-ones and writes are dropped, as on a
 * PC bus with nothing behind the address. They are reported through
 * `onUnhandled`, bounded whatever the guest does: the first `reportLimit`
 * distinct addresses once each, then only a count (reported at each power of
 * two), kept in a fixed-size summary ({@linkcode Bus.unhandled}).
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";
import { hex } from "../kvm/constants.ts";
import type { BusDevice } from "./bus_device.ts";

/** Which address space a {@linkcode Bus} serves. */
export type BusSpace = "pio" | "mmio";

/** An access no device claimed, as reported to {@linkcode BusOptions.onUnhandled}. */
export interface UnhandledAccess {
  /** The bus's space. */
  readonly space: BusSpace;
  /** The port or guest-physical address. */
  readonly address: number;
  /** Bytes accessed. */
  readonly size: number;
  /** Whether the guest wrote (else it read, and got all-ones). */
  readonly isWrite: boolean;
  /**
   * 0 when this is the first access to `address` (reported once). Past the
   * report limit: how many accesses to addresses not reported one by one
   * there were so far (reported when it reaches a power of two).
   */
  readonly unreported: number;
}

/** What a bus saw of unclaimed accesses: a fixed-size summary. */
export interface UnhandledSummary {
  /** Every unclaimed access. */
  readonly accesses: number;
  /** Distinct addresses reported one by one (at most the report limit). */
  readonly reported: number;
  /** Accesses to addresses past the limit, only counted. */
  readonly unreported: number;
}

/** Options of {@linkcode Bus}. */
export interface BusOptions {
  /**
   * `"pio"`: ports 0..0xffff, looked up in a 64 Ki-entry table. `"mmio"`
   * (default): guest-physical addresses below 2^53, looked up by binary search.
   */
  space?: BusSpace;
  /** Called for unclaimed accesses, bounded (see the module's notes). */
  onUnhandled?: (access: UnhandledAccess) => void;
  /** Distinct unclaimed addresses reported one by one (default {@linkcode BUS_REPORT_LIMIT}). */
  reportLimit?: number;
}

/** A device's place on a bus, as listed by {@linkcode Bus.ranges}. */
export interface BusRange {
  /** The first address. */
  readonly base: number;
  /** How many addresses, from `base`. */
  readonly length: number;
  /** The device. */
  readonly device: BusDevice;
}

/** Default {@linkcode BusOptions.reportLimit}. */
export const BUS_REPORT_LIMIT = 256;

const PORTS = 0x10000;
/** MMIO addresses stay exact as numbers below 2^53 (guest-physical ones fit in 52 bits). */
const MMIO_LIMIT = Number.MAX_SAFE_INTEGER;

/**
 * Devices on one address space, found by address.
 *
 * @example
 * ```ts
 * import { Bus, COM1_PORT, Uart16550 } from "@deno-kvm/kvm/vmm";
 * let text = "";
 * const pio = new Bus({ space: "pio" });
 * pio.insert(COM1_PORT, 8, new Uart16550({ output: (b) => text += String.fromCharCode(b) }));
 * pio.insert(0x2f8, 8, new Uart16550()); // the same model as COM2: it sees offsets 0..7
 * const data = new Uint8Array([0x68]);
 * pio.write(COM1_PORT, data); // THR
 * pio.read(0x1234, data); // nothing there: reads as all-ones
 * console.log(text, data[0]); // h 255
 * ```
 */
export class Bus {
  /** The address space. */
  readonly space: BusSpace;
  // Ranges sorted by base; parallel arrays, rebuilt on insert/remove (rare), read per access.
  #bases: number[] = [];
  #ends: number[] = []; // exclusive
  #devices: BusDevice[] = [];
  /** Ports only: range index + 1 per port (0: nothing). */
  #table: Uint16Array | undefined;
  #limit: number;
  #onUnhandled?: (access: UnhandledAccess) => void;
  // Unclaimed addresses reported so far, sorted: bounded by the report limit.
  #reported: Float64Array;
  #reportedCount = 0;
  #unhandledAccesses = 0;
  #unreported = 0;
  // One view per access size, made once: string I/O elements go through them.
  #scratch: Uint8Array[] = [];

  /** Creates an empty bus. */
  constructor(options: BusOptions = {}) {
    this.space = options.space ?? "mmio";
    if (this.space !== "pio" && this.space !== "mmio") {
      throw new KvmError("create bus", Errno.EINVAL, `space ${this.space}: "pio" or "mmio"`);
    }
    this.#limit = this.space === "pio" ? PORTS : MMIO_LIMIT;
    if (this.space === "pio") this.#table = new Uint16Array(PORTS);
    this.#onUnhandled = options.onUnhandled;
    const limit = options.reportLimit ?? BUS_REPORT_LIMIT;
    if (!Number.isInteger(limit) || limit < 0 || limit > 0x10000) {
      throw new KvmError("create bus", Errno.EINVAL, `reportLimit ${limit}: 0 to 65536`);
    }
    this.#reported = new Float64Array(limit);
    const buffer = new ArrayBuffer(8);
    for (let n = 0; n <= 8; n++) this.#scratch.push(new Uint8Array(buffer, 0, n));
  }

  /**
   * Puts `device` at `base .. base + length - 1`. Throws a `KvmError`:
   * `EINVAL` when the range is not whole numbers inside the space (ports
   * 0..0xffff, MMIO below 2^53), `EEXIST` when it overlaps a device's.
   */
  insert(base: number, length: number, device: BusDevice): void {
    if (
      !Number.isSafeInteger(base) || !Number.isSafeInteger(length) || base < 0 || length < 1 ||
      base + length > this.#limit
    ) {
      throw new KvmError(
        "insert bus device",
        Errno.EINVAL,
        `${this.space} range ${base} + ${length}: whole numbers inside 0..${hex(this.#limit - 1)}`,
      );
    }
    const end = base + length;
    const i = this.#upperBound(base); // ranges [0, i) start at or before base
    if (i > 0 && this.#ends[i - 1] > base) throw this.#overlap(base, end, i - 1);
    if (i < this.#bases.length && this.#bases[i] < end) throw this.#overlap(base, end, i);
    this.#bases.splice(i, 0, base);
    this.#ends.splice(i, 0, end);
    this.#devices.splice(i, 0, device);
    this.#rebuildTable();
  }

  /** Takes away the device inserted at `base` and returns it (undefined when none starts there). */
  remove(base: number): BusDevice | undefined {
    const i = this.#upperBound(base) - 1;
    if (i < 0 || this.#bases[i] !== base) return undefined;
    const [device] = this.#devices.splice(i, 1);
    this.#bases.splice(i, 1);
    this.#ends.splice(i, 1);
    this.#rebuildTable();
    return device;
  }

  /** The devices and their ranges, by base. */
  ranges(): BusRange[] {
    return this.#devices.map((device, i) => ({
      base: this.#bases[i],
      length: this.#ends[i] - this.#bases[i],
      device,
    }));
  }

  /** The device whose range holds `address`, or undefined. */
  deviceAt(address: number): BusDevice | undefined {
    const i = this.#find(address);
    return i < 0 ? undefined : this.#devices[i];
  }

  /**
   * One guest read of `data.length` bytes at `address`: `data` is zeroed, then
   * filled by the device at its offset. Unclaimed, `data` reads as all-ones
   * and the access is reported. Returns whether a device claimed it.
   */
  read(address: number, data: Uint8Array): boolean {
    data.fill(0);
    const i = this.#find(address);
    if (i < 0) {
      data.fill(0xff);
      this.#unhandled(address, data.length, false);
      return false;
    }
    this.#devices[i].read(address - this.#bases[i], data);
    return true;
  }

  /** One guest write of `data` at `address`; unclaimed, dropped and reported. Returns whether claimed. */
  write(address: number, data: Uint8Array): boolean {
    const i = this.#find(address);
    if (i < 0) {
      this.#unhandled(address, data.length, true);
      return false;
    }
    this.#devices[i].write(address - this.#bases[i], data);
    return true;
  }

  /**
   * Serves a whole port I/O exit (`Vcpu.run()`'s `"io"` exit, or the same
   * fields forwarded from another thread): `count` elements of `size` bytes
   * in `data`, read from it for `"out"`, written into it for `"in"` (`rep
   * outs`/`ins` give `count > 1`: each element is one access).
   *
   * The fields are checked, not trusted: `size` must be 1, 2 or 4, `port`
   * 0..0xffff, and `count` a whole number of elements that fit in `data`;
   * otherwise a {@linkcode KvmError} (`EINVAL`, operation `"handle port
   * I/O"`) is thrown before any device sees an access, and nothing outside
   * `data` is read or written. Allocates nothing.
   */
  handlePio(
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
    const element = this.#scratch[size];
    const out = direction === "out";
    for (let i = 0, at = 0; i < count; i++, at += size) {
      if (out) {
        for (let b = 0; b < size; b++) element[b] = data[at + b];
        this.write(port, element);
      } else {
        this.read(port, element);
        for (let b = 0; b < size; b++) data[at + b] = element[b];
      }
    }
  }

  /**
   * Serves an MMIO exit (`Vcpu.run()`'s `"mmio"` exit, or the same fields
   * forwarded from another thread): `data` holds the 1 to 8 bytes written,
   * or receives those read. A `KvmError` (`EINVAL`, operation `"handle
   * MMIO"`) for an address that is not a whole number below 2^64 or a length
   * outside 1..8. Allocates nothing.
   */
  handleMmio(address: number, isWrite: boolean, data: Uint8Array): void {
    if (
      !(address >= 0 && address < 2 ** 64) || Math.floor(address) !== address ||
      data.length < 1 || data.length > 8
    ) {
      throw new KvmError(
        "handle MMIO",
        Errno.EINVAL,
        `address ${address}, ${data.length} bytes: a whole address below 2^64 and 1 to 8 bytes`,
      );
    }
    if (isWrite) this.write(address, data);
    else this.read(address, data);
  }

  /** What unclaimed accesses the bus saw (fixed size, however many there were). */
  get unhandled(): UnhandledSummary {
    return {
      accesses: this.#unhandledAccesses,
      reported: this.#reportedCount,
      unreported: this.#unreported,
    };
  }

  /** The range holding `address`: its index, or -1. */
  #find(address: number): number {
    const table = this.#table;
    if (table !== undefined) {
      // Ports: one typed-array read (out-of-range addresses read undefined, then -1).
      return (table[address] ?? 0) - 1;
    }
    const i = this.#upperBound(address) - 1;
    return i >= 0 && address < this.#ends[i] ? i : -1;
  }

  /** How many ranges start at or before `address` (binary search over the sorted bases). */
  #upperBound(address: number): number {
    const bases = this.#bases;
    let lo = 0;
    let hi = bases.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (bases[mid] <= address) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  #rebuildTable(): void {
    const table = this.#table;
    if (table === undefined) return;
    table.fill(0);
    for (let i = 0; i < this.#bases.length; i++) table.fill(i + 1, this.#bases[i], this.#ends[i]);
  }

  #overlap(base: number, end: number, i: number): KvmError {
    return new KvmError(
      "insert bus device",
      Errno.EEXIST,
      `${this.space} range ${hex(base)}..${hex(end - 1)} overlaps the device at ${
        hex(this.#bases[i])
      }..${hex(this.#ends[i] - 1)}`,
    );
  }

  /** Counts an unclaimed access; reports the first of each address up to the limit, then counts. */
  #unhandled(address: number, size: number, isWrite: boolean): void {
    this.#unhandledAccesses++;
    const reported = this.#reported;
    const n = this.#reportedCount;
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (reported[mid] < address) lo = mid + 1;
      else hi = mid;
    }
    if (lo < n && reported[lo] === address) return;
    if (n < reported.length) {
      reported.copyWithin(lo + 1, lo, n);
      reported[lo] = address;
      this.#reportedCount = n + 1;
      this.#onUnhandled?.({ space: this.space, address, size, isWrite, unreported: 0 });
      return;
    }
    const count = ++this.#unreported;
    if ((count & (count - 1)) === 0) {
      this.#onUnhandled?.({ space: this.space, address, size, isWrite, unreported: count });
    }
  }
}

/**
 * `device` seen from `delta` addresses into its own range: a device with
 * registers in two places (the i8042's 0x60 and 0x64) is inserted as two
 * one-port ranges, the second through `deviceWindow(device, 4)`.
 */
export function deviceWindow(device: BusDevice, delta: number): BusDevice {
  return {
    read: (offset, data) => device.read(offset + delta, data),
    write: (offset, data) => device.write(offset + delta, data),
  };
}

/**
 * Words for an unclaimed access, for logs: `"port 0x2f8 in (1 byte)"`,
 * `"MMIO read at 0xfee00000"`, or past the report limit
 * `"64 MMIO accesses beyond the first 256 addresses (latest 0x...), not reported one by one"`.
 */
export function describeUnhandled(access: UnhandledAccess, reportLimit = BUS_REPORT_LIMIT): string {
  const { space, address, size, isWrite, unreported } = access;
  if (unreported > 0) {
    return `${unreported} ${
      space === "pio" ? "port" : "MMIO"
    } accesses beyond the first ${reportLimit} addresses (latest ${
      hex(address)
    }), not reported one by one`;
  }
  return space === "pio"
    ? `port ${hex(address)} ${isWrite ? "out" : "in"} (${size} byte${size > 1 ? "s" : ""})`
    : `MMIO ${isWrite ? "write" : "read"} at ${hex(address)}`;
}
