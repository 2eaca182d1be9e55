/**
 * A single-producer, single-consumer byte ring in a `SharedArrayBuffer`, for
 * the console's bytes between the machine's thread and the device thread.
 * The indices count bytes for ever (wrapping at 2^32); the data area is a
 * power of two.
 *
 * @module
 */

const WRITE = 0;
const READ = 1;
const HEADER_BYTES = 8;

/** One end of a byte ring (both ends construct it from the same buffer). */
export class ByteRing {
  /** The shared buffer: pass it to the other thread. */
  readonly buffer: SharedArrayBuffer;
  readonly #index: Int32Array;
  readonly #data: Uint8Array;
  readonly #mask: number;

  /** A new ring of `capacity` bytes (a power of two), or the other end of `buffer`. */
  constructor(capacityOrBuffer: number | SharedArrayBuffer) {
    this.buffer = typeof capacityOrBuffer === "number"
      ? new SharedArrayBuffer(HEADER_BYTES + capacityOrBuffer)
      : capacityOrBuffer;
    const capacity = this.buffer.byteLength - HEADER_BYTES;
    if (capacity <= 0 || (capacity & (capacity - 1)) !== 0) {
      throw new RangeError(`byte ring capacity ${capacity} is not a power of two`);
    }
    this.#index = new Int32Array(this.buffer, 0, 2);
    this.#data = new Uint8Array(this.buffer, HEADER_BYTES);
    this.#mask = capacity - 1;
  }

  /** Bytes waiting to be read. */
  get available(): number {
    return (Atomics.load(this.#index, WRITE) - Atomics.load(this.#index, READ)) >>> 0;
  }

  /** Room for more bytes. */
  get free(): number {
    return this.#mask + 1 - this.available;
  }

  /** Appends as much of `bytes` as fits; returns how many. (Producer only.) */
  write(bytes: Uint8Array): number {
    const n = Math.min(bytes.length, this.free);
    let w = Atomics.load(this.#index, WRITE) >>> 0;
    for (let i = 0; i < n; i++, w++) this.#data[w & this.#mask] = bytes[i];
    Atomics.store(this.#index, WRITE, w | 0);
    Atomics.notify(this.#index, WRITE);
    return n;
  }

  /** Takes up to `out.length` bytes into `out`; returns how many. (Consumer only.) */
  read(out: Uint8Array): number {
    const n = Math.min(out.length, this.available);
    let r = Atomics.load(this.#index, READ) >>> 0;
    for (let i = 0; i < n; i++, r++) out[i] = this.#data[r & this.#mask];
    Atomics.store(this.#index, READ, r | 0);
    Atomics.notify(this.#index, READ);
    return n;
  }

  /** Waits (bounded) until the consumer read something; for a full producer. */
  waitForRoom(timeoutMs: number): void {
    const r = Atomics.load(this.#index, READ);
    if (this.free > 0) return;
    Atomics.wait(this.#index, READ, r, timeoutMs);
  }
}
