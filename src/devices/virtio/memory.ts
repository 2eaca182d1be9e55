/**
 * Guest RAM as a virtio device sees it: a few regions of guest physical
 * addresses backed by host memory. Every address a driver hands over
 * (queue rings, descriptor buffers) is checked here before it is touched:
 * the whole range must lie in one region, without wrapping, or the lookup
 * fails and the caller reports the driver's error.
 *
 * @module
 */

/** One region of guest RAM: guest physical `[gpa, gpa + bytes.length)`. */
export interface RamRegion {
  /** First guest physical address. */
  readonly gpa: number;
  /** The bytes (host memory, no copy). */
  readonly bytes: Uint8Array;
}

/**
 * Guest RAM by guest physical address. Every range is checked before use:
 * {@linkcode slice} answers a view of exactly the asked range, or `null`
 * when any byte of it is outside RAM; {@linkcode locate} answers which
 * region holds the range whole (or -1), and the allocation-free readers
 * ({@linkcode regionBytes}, {@linkcode regionView}: a whole region) are only
 * used within ranges `locate` accepted (`DescriptorChain` keeps each
 * buffer's offset and length for that).
 *
 * @example
 * ```ts
 * import { VirtioMemory } from "./memory.ts";
 * const mem = new VirtioMemory([{ gpa: 0x1000, bytes: new Uint8Array(0x1000) }]);
 * console.log(mem.slice(0x1ff0, 16)?.length, mem.slice(0x1ff0, 17)); // 16 null
 * ```
 */
export class VirtioMemory {
  #regions: RamRegion[];
  #u16: Uint16Array[];
  /** Each region's host address, found on first use (-1 until then): see {@linkcode hostAddress}. */
  #hosts: number[];
  /** A DataView of each region, made once (descriptor tables are read through them). */
  #views: DataView[];

  /**
   * Wraps the regions (they must not overlap; each starts at an even guest
   * address and an even offset into its buffer, as page-aligned RAM does).
   */
  constructor(regions: readonly RamRegion[]) {
    this.#regions = [...regions];
    // 16-bit views for the ring indices, which the spec aligns to 2 bytes.
    this.#u16 = this.#regions.map((r) => {
      const b = r.bytes;
      if (b.byteOffset % 2 !== 0 || r.gpa % 2 !== 0) {
        throw new RangeError(`RAM region at ${r.gpa} is not 2-byte aligned`);
      }
      return new Uint16Array(b.buffer, b.byteOffset, b.length >>> 1);
    });
    this.#hosts = this.#regions.map(() => -1);
    this.#views = this.#regions.map((r) =>
      new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength)
    );
  }

  /** The regions. */
  get regions(): readonly RamRegion[] {
    return this.#regions;
  }

  /** Which region holds `[gpa, gpa + length)` whole, or -1. */
  #find(gpa: number, length: number): number {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || !Number.isSafeInteger(length) || length < 0) {
      return -1;
    }
    const end = gpa + length; // exact: both are below 2^53 and the sum is checked below
    if (!Number.isSafeInteger(end)) return -1;
    for (let i = 0; i < this.#regions.length; i++) {
      const r = this.#regions[i];
      if (gpa >= r.gpa && end <= r.gpa + r.bytes.length) return i;
    }
    return -1;
  }

  /**
   * Which region holds `[gpa, gpa + length)` whole, or -1 unless all of it
   * is guest RAM: the allocation-free form of {@linkcode slice} (the range
   * starts `gpa - regions[i].gpa` bytes into region `i`).
   */
  locate(gpa: number, length: number): number {
    return this.#find(gpa, length);
  }

  /** Region `i`'s bytes, all of them (no copy). */
  regionBytes(i: number): Uint8Array {
    return this.#regions[i].bytes;
  }

  /** A DataView of region `i`, all of it (made once). */
  regionView(i: number): DataView {
    return this.#views[i];
  }

  /** A view of `length` bytes at `gpa`, or `null` unless all of them are guest RAM. */
  slice(gpa: number, length: number): Uint8Array | null {
    const i = this.#find(gpa, length);
    if (i < 0) return null;
    const r = this.#regions[i];
    return r.bytes.subarray(gpa - r.gpa, gpa - r.gpa + length);
  }

  /**
   * The host address of guest physical `gpa` when `[gpa, gpa + length)` is
   * guest RAM whole, else -1: what a `struct iovec` handed to the kernel
   * (`preadv`, `writev`) points at. The range is checked exactly as by
   * {@linkcode slice}. A region's address is read once (`Deno.UnsafePointer.of`,
   * which needs `--allow-ffi`); x86-64 user addresses are below 2^47, so a
   * number holds them exactly.
   */
  hostAddress(gpa: number, length: number): number {
    const i = this.#find(gpa, length);
    if (i < 0) return -1;
    const host = this.regionHost(i);
    return host < 0 ? -1 : host + (gpa - this.#regions[i].gpa);
  }

  /** Region `i`'s host address (read once, see {@linkcode hostAddress}), or -1 for an empty region. */
  regionHost(i: number): number {
    let host = this.#hosts[i];
    if (host < 0) {
      const r = this.#regions[i];
      const p = r.bytes.length > 0 ? Deno.UnsafePointer.of(r.bytes) : null;
      if (p === null) return -1;
      host = this.#hosts[i] = Number(Deno.UnsafePointer.value(p));
    }
    return host;
  }

  /**
   * The 16-bit word at `gpa` (even, inside RAM) as an array and an index, or
   * `null`. Ring indices are read and written with `Atomics` through it, so a
   * store is seen whole and in program order by the vCPU threads. Made once
   * per queue setup, not per access.
   */
  word16(gpa: number): { array: Uint16Array; index: number } | null {
    if (gpa % 2 !== 0) return null;
    const i = this.#find(gpa, 2);
    if (i < 0) return null;
    const r = this.#regions[i];
    return { array: this.#u16[i], index: (gpa - r.gpa) >>> 1 };
  }
}
