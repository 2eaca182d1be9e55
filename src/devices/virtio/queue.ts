/**
 * Split virtqueues (virtio 1.x, spec 2.7): the descriptor table, the
 * available ring the driver fills and the used ring the device returns
 * buffers on.
 *
 * Everything here is guest-controlled, so every value is checked before use:
 * queue sizes (a power of two up to the device's maximum), ring addresses
 * (aligned, inside guest RAM, no wrap), the available index (at most a
 * queue's worth ahead), descriptor indices, buffer addresses and lengths, and
 * chain lengths (bounded by the table's size, so a loop in `next` ends).
 * A violation throws {@linkcode VirtioError}; the device then sets
 * `DEVICE_NEEDS_RESET` and stops using the queue. Nothing allocates in
 * proportion to a guest-supplied length, and serving a chain allocates
 * nothing at all: buffers are ranges of guest RAM.
 *
 * @module
 */

import { hex } from "../../kvm/constants.ts";
import { DescFlags } from "./constants.ts";
import type { VirtioMemory } from "./memory.ts";

/**
 * A driver broke the virtio protocol (a malformed queue or request): the
 * device stops and asks for a reset (`DEVICE_NEEDS_RESET`). Never a host
 * failure.
 */
export class VirtioError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "VirtioError";
  }
}

/** Bit 0 of the available ring's flags: the driver asks for no interrupt (ignored with EVENT_IDX). */
const VRING_AVAIL_F_NO_INTERRUPT = 1;

/** Most entries of an indirect descriptor table a device accepts (Linux uses far fewer). */
export const MAX_INDIRECT_DESCRIPTORS = 1024;
/** `IOV_MAX`: most `struct iovec`s one `readv`/`preadv` call takes on Linux. */
export const IOV_MAX = 1024;
/** Bytes of one `struct iovec` (x86-64: `void *iov_base; size_t iov_len`). */
export const IOVEC_BYTES = 16;

/**
 * Writes entry `n` of `iov`, `struct iovec`s as 32-bit words (base low, base
 * high, length low, length high): `base` is a host address (below 2^53, so a
 * number holds it exactly), `length` below 2^32.
 */
function setIovec(iov: Uint32Array, n: number, base: number, length: number): void {
  const w = 4 * n;
  iov[w] = base >>> 0; // ToUint32 is exact modulo 2^32 for any safe integer
  iov[w + 1] = Math.floor(base / 0x1_0000_0000);
  iov[w + 2] = length;
  iov[w + 3] = 0;
}

/**
 * Drops the first `n` bytes from the `count` iovecs at the start of `iov`
 * (after a short transfer), moving the rest to the front; returns how many
 * remain.
 */
export function advanceIovec(iov: Uint32Array, count: number, n: number): number {
  let first = 0;
  while (first < count && n >= iov[4 * first + 2]) n -= iov[4 * first++ + 2];
  if (first === count) return 0;
  const w = 4 * first;
  setIovec(iov, first, iov[w] + iov[w + 1] * 0x1_0000_0000 + n, iov[w + 2] - n);
  iov.copyWithin(0, w, 4 * count);
  return count - first;
}

/** Where a driver put a queue, as written to the transport's registers. */
export interface QueueConfig {
  /** Queue size chosen by the driver (`QueueNum`). */
  size: number;
  /** Guest physical address of the descriptor table. */
  desc: number;
  /** Guest physical address of the available ring ("driver area"). */
  avail: number;
  /** Guest physical address of the used ring ("device area"). */
  used: number;
}

/**
 * `vring_need_event` (spec 2.7.7.2 and 2.7.10): whether moving an index from
 * `old` to `now` passed `event`, i.e. `event` lies in `[old, now)` counted
 * modulo 2^16 (the indices wrap; `now - old` is at most a queue's worth).
 */
export function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}

/**
 * One descriptor chain popped from the available ring: its head index and
 * its buffers in order, each a range of guest RAM with its direction. One
 * object per queue, refilled by every {@linkcode SplitQueue.pop} without
 * allocating: a buffer is its region of guest RAM ({@linkcode bytesOf}) and
 * its place there ({@linkcode offsets}, {@linkcode lengths}); {@linkcode buffer}
 * makes a view of one when a device wants it as an array.
 */
export class DescriptorChain {
  /** The head descriptor's index (returned on the used ring). */
  head = 0;
  /** How many buffers the chain holds (zero-length descriptors are skipped). */
  count = 0;
  /** Whether each buffer is device-writable. */
  readonly writable: Uint8Array;
  /** Each buffer's guest physical address. */
  readonly addresses: Float64Array;
  /** Each buffer's length in bytes. */
  readonly lengths: Uint32Array;
  /** Where each buffer starts in its region's bytes ({@linkcode bytesOf}). */
  readonly offsets: Float64Array;
  /** Total bytes of the device-readable buffers. */
  readableBytes = 0;
  /** Total bytes of the device-writable buffers. */
  writableBytes = 0;

  /** Each buffer's region of guest RAM (an index into the memory's regions). */
  readonly #regions: Int32Array;
  #mem: VirtioMemory;

  /** A chain that can hold `capacity` buffers of `mem`. */
  constructor(capacity: number, mem: VirtioMemory) {
    this.writable = new Uint8Array(capacity);
    this.addresses = new Float64Array(capacity);
    this.lengths = new Uint32Array(capacity);
    this.offsets = new Float64Array(capacity);
    this.#regions = new Int32Array(capacity);
    this.#mem = mem;
  }

  /** How many buffers the chain can hold. */
  get capacity(): number {
    return this.writable.length;
  }

  /**
   * Appends the buffer of `length` bytes at `gpa`; false (nothing added)
   * unless all of it is guest RAM. Throws {@linkcode VirtioError} when the
   * chain is full. For {@linkcode SplitQueue.pop} (and tests).
   */
  add(gpa: number, length: number, writable: boolean): boolean {
    // A descriptor's length is 32 bits; a longer one could not be kept in `lengths`.
    if (!(length >= 0 && length <= 0xffff_ffff)) return false;
    const region = this.#mem.locate(gpa, length);
    if (region < 0) return false;
    const n = this.count;
    if (n === this.writable.length) throw new VirtioError("descriptor chain too long");
    this.writable[n] = writable ? 1 : 0;
    this.addresses[n] = gpa;
    this.lengths[n] = length;
    this.offsets[n] = gpa - this.#mem.regions[region].gpa;
    this.#regions[n] = region;
    this.count = n + 1;
    if (writable) this.writableBytes += length;
    else this.readableBytes += length;
    return true;
  }

  /** Empties the chain for the chain at `head`. */
  clear(head: number): void {
    this.head = head;
    this.count = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
  }

  /**
   * The whole region of guest RAM that holds buffer `i` (below
   * {@linkcode count}; no copy, no allocation): the buffer is its
   * `lengths[i]` bytes from `offsets[i]`, and nothing outside them is the
   * chain's to touch.
   */
  bytesOf(i: number): Uint8Array {
    return this.#mem.regionBytes(this.#regions[i]);
  }

  /** Buffer `i` (below {@linkcode count}) as a view of guest RAM (a new view each call). */
  buffer(i: number): Uint8Array {
    const at = this.offsets[i];
    return this.bytesOf(i).subarray(at, at + this.lengths[i]);
  }

  /**
   * Describes the device-writable (or readable) buffers as `struct iovec`s
   * for one `preadv`/`readv`-style system call straight into guest RAM,
   * leaving out the first `skip` and the last `trim` bytes of that direction
   * (a block request's header and status byte). `iov` holds 32-bit words,
   * four per entry (base low, base high, length low, length high); nothing
   * is allocated. Returns the entries written, or -1 when they do not fit
   * `iov` (at most {@linkcode IOV_MAX} are ever wanted) or a region has no
   * host address (an empty one: cannot hold a popped buffer, checked anyway).
   */
  iovec(iov: Uint32Array, writable: boolean, skip: number, trim: number): number {
    const mem = this.#mem;
    const want = writable ? 1 : 0;
    const end = (writable ? this.writableBytes : this.readableBytes) - trim;
    let at = 0; // offset of buffer i in its direction
    let n = 0;
    for (let i = 0; i < this.count && at < end; i++) {
      if (this.writable[i] !== want) continue;
      const length = this.lengths[i];
      const from = Math.max(skip, at);
      const to = Math.min(end, at + length);
      if (from < to) {
        if (4 * (n + 1) > iov.length) return -1;
        const host = mem.regionHost(this.#regions[i]);
        if (host < 0) return -1;
        setIovec(iov, n++, host + this.offsets[i] + (from - at), to - from);
      }
      at += length;
    }
    return n;
  }

  /**
   * Copies up to `out.length` bytes of the readable buffers, starting
   * `skip` bytes into them, to `out`; returns how many. Allocates nothing
   * for the few bytes of a request's header.
   */
  readInto(out: Uint8Array, skip = 0): number {
    let done = 0;
    for (let i = 0; i < this.count && done < out.length; i++) {
      if (this.writable[i]) continue;
      const length = this.lengths[i];
      if (skip >= length) {
        skip -= length;
        continue;
      }
      const n = Math.min(length - skip, out.length - done);
      copyBytes(this.bytesOf(i), this.offsets[i] + skip, out, done, n);
      done += n;
      skip = 0;
    }
    return done;
  }

  /**
   * Copies up to `data.length` bytes of `data` into the writable buffers,
   * starting `skip` bytes into them; returns how many.
   */
  writeFrom(data: Uint8Array, skip = 0): number {
    let done = 0;
    for (let i = 0; i < this.count && done < data.length; i++) {
      if (!this.writable[i]) continue;
      const length = this.lengths[i];
      if (skip >= length) {
        skip -= length;
        continue;
      }
      const n = Math.min(length - skip, data.length - done);
      copyBytes(data, done, this.bytesOf(i), this.offsets[i] + skip, n);
      done += n;
      skip = 0;
    }
    return done;
  }
}

/**
 * Copies `n` bytes from `from[fromAt..]` to `to[toAt..]`: a loop for a few
 * bytes (a header, a TCP ACK: no view allocated), `set` over a view for more.
 * Both ranges must already be checked (the loop would not throw on an index
 * past the end).
 */
export function copyBytes(
  from: Uint8Array,
  fromAt: number,
  to: Uint8Array,
  toAt: number,
  n: number,
): void {
  if (n <= 128) {
    for (let k = 0; k < n; k++) to[toAt + k] = from[fromAt + k];
  } else {
    to.set(from.subarray(fromAt, fromAt + n), toAt);
  }
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/**
 * A split virtqueue set up by a driver. {@linkcode create} validates the
 * configuration; {@linkcode pop} and {@linkcode pushUsed} then serve it.
 *
 * The ring indices are read and written with `Atomics` on 16-bit views: the
 * driver runs on other threads (vCPUs), and a used index must be published
 * after the used element it covers (x86 keeps stores in order; `Atomics`
 * keeps the JIT from reordering or splitting them).
 *
 * With `VIRTIO_F_EVENT_IDX` (spec 2.7.7.2, 2.7.10) the driver's `used_event`
 * (after the available ring) says after which used entry it wants an
 * interrupt ({@linkcode needsInterrupt}), and the device's `avail_event`
 * (after the used ring) says after which available entry it wants a kick
 * ({@linkcode rearm}). Both sides store their index, then load the other's
 * (a Dekker pair): a sequentially consistent `Atomics.store` followed by an
 * `Atomics.load` keeps that order on x86 (V8 makes the store an `xchg`), as
 * the driver's `virtio_mb()` does on its side.
 */
export class SplitQueue {
  /** The queue size. */
  readonly size: number;
  readonly #mem: VirtioMemory;
  readonly #desc: DataView;
  readonly #avail: DataView;
  readonly #availIdx: Uint16Array;
  readonly #availIdxAt: number;
  readonly #used: DataView;
  readonly #usedIdx: Uint16Array;
  readonly #usedIdxAt: number;
  readonly #indirect: boolean;
  /** Whether `VIRTIO_F_EVENT_IDX` was negotiated. */
  readonly #eventIdx: boolean;
  /** `used_event` (driver area, after the ring) and `avail_event` (device area, after the ring). */
  readonly #usedEvent: Uint16Array;
  readonly #usedEventAt: number;
  readonly #availEvent: Uint16Array;
  readonly #availEventAt: number;
  /** The next available-ring entry to take (wraps at 2^16). */
  #lastAvail = 0;
  /** The available index as last read (wraps at 2^16). */
  #availSeen = 0;
  /** The next used-ring entry to fill (wraps at 2^16). */
  #nextUsed = 0;
  /** The used index at the last {@linkcode needsInterrupt} (wraps at 2^16). */
  #signalled = 0;
  /** Whether {@linkcode needsInterrupt} answered since the queue was set up. */
  #signalledValid = false;
  /** Whether used entries were published since the last {@linkcode needsInterrupt}. */
  #published = false;
  /** See {@linkcode notifyOnNext}. */
  #notifyOnNext = false;
  /** The chain {@linkcode pop} fills. */
  readonly chain: DescriptorChain;

  private constructor(
    mem: VirtioMemory,
    config: QueueConfig,
    desc: Uint8Array,
    avail: Uint8Array,
    used: Uint8Array,
    indirect: boolean,
    eventIdx: boolean,
  ) {
    this.size = config.size;
    this.#mem = mem;
    this.#indirect = indirect;
    this.#eventIdx = eventIdx;
    this.#desc = new DataView(desc.buffer, desc.byteOffset, desc.byteLength);
    this.#avail = new DataView(avail.buffer, avail.byteOffset, avail.byteLength);
    this.#used = new DataView(used.buffer, used.byteOffset, used.byteLength);
    const a = mem.word16(config.avail + 2)!;
    this.#availIdx = a.array;
    this.#availIdxAt = a.index;
    const u = mem.word16(config.used + 2)!;
    this.#usedIdx = u.array;
    this.#usedIdxAt = u.index;
    // Inside the areas checked by `create` (their sizes include the event words).
    const ue = mem.word16(config.avail + 4 + 2 * config.size)!;
    this.#usedEvent = ue.array;
    this.#usedEventAt = ue.index;
    const ae = mem.word16(config.used + 4 + 8 * config.size)!;
    this.#availEvent = ae.array;
    this.#availEventAt = ae.index;
    // A device starts where the rings are (zero after a reset, or where a
    // driver left them): the spec has both indices start at 0.
    this.#lastAvail = 0;
    this.#nextUsed = 0;
    this.chain = new DescriptorChain(
      config.size + (indirect ? MAX_INDIRECT_DESCRIPTORS : 0),
      mem,
    );
  }

  /**
   * Checks a driver's queue configuration against guest RAM and the device's
   * maximum size: a {@linkcode VirtioError} names what is wrong.
   * `indirect` says whether `VIRTIO_RING_F_INDIRECT_DESC` was negotiated,
   * `eventIdx` whether `VIRTIO_F_EVENT_IDX` was.
   */
  static create(
    mem: VirtioMemory,
    config: QueueConfig,
    maxSize: number,
    indirect: boolean,
    eventIdx = false,
  ): SplitQueue {
    const { size, desc, avail, used } = config;
    if (!isPowerOfTwo(size) || size > maxSize) {
      throw new VirtioError(`queue size ${size} is not a power of two up to ${maxSize}`);
    }
    // Alignment (spec 2.7, table "Virtqueue Part Alignment"): 16, 2 and 4 bytes.
    if (desc % 16 !== 0 || avail % 2 !== 0 || used % 4 !== 0) {
      throw new VirtioError(
        `queue areas misaligned (descriptors ${hex(desc)}, driver ${hex(avail)}, device ${
          hex(used)
        })`,
      );
    }
    // Sizes with the event words (used_event / avail_event) included.
    const d = mem.slice(desc, 16 * size);
    const a = mem.slice(avail, 6 + 2 * size);
    const u = mem.slice(used, 6 + 8 * size);
    if (!d || !a || !u) {
      throw new VirtioError(
        `queue areas outside guest RAM (descriptors ${hex(desc)}, driver ${hex(avail)}, device ${
          hex(used)
        }, size ${size})`,
      );
    }
    return new SplitQueue(mem, config, d, a, u, indirect, eventIdx);
  }

  /** The available ring's flags (bit 0: the driver wants no interrupts). */
  get availFlags(): number {
    return this.#avail.getUint16(0, true);
  }

  /** Whether `VIRTIO_F_EVENT_IDX` was negotiated for this queue. */
  get eventIdx(): boolean {
    return this.#eventIdx;
  }

  /** Whether the driver has made chains available that were not popped yet. */
  get hasAvailable(): boolean {
    const availIdx = Atomics.load(this.#availIdx, this.#availIdxAt);
    this.#availSeen = availIdx;
    return availIdx !== this.#lastAvail;
  }

  /**
   * Takes the next available chain into {@linkcode chain}; false when none
   * is pending. Throws {@linkcode VirtioError} for a malformed ring or chain
   * (the entry counts as taken).
   */
  pop(): boolean {
    const availIdx = Atomics.load(this.#availIdx, this.#availIdxAt);
    this.#availSeen = availIdx;
    if (availIdx === this.#lastAvail) return false;
    const pending = (availIdx - this.#lastAvail) & 0xffff;
    if (pending > this.size) {
      throw new VirtioError(
        `available index ${availIdx} is ${pending} entries ahead of ${this.#lastAvail}, more than the queue's ${this.size}`,
      );
    }
    const slot = this.#lastAvail & (this.size - 1);
    this.#lastAvail = (this.#lastAvail + 1) & 0xffff;
    const head = this.#avail.getUint16(4 + 2 * slot, true);
    this.#walk(head);
    return true;
  }

  /**
   * Puts the `count` chains last popped back at the head of the available
   * ring, as if they had not been taken (a receive queue's buffers when no
   * frame waited after all, or too few for a frame): the next
   * {@linkcode pop}s walk them again. Only for chains popped since the last
   * used entry was added, none of them returned.
   */
  unpop(count = 1): void {
    this.#lastAvail = (this.#lastAvail - count) & 0xffff;
  }

  /**
   * With `VIRTIO_F_EVENT_IDX`: the available chains left are too few for
   * what waits (a received frame larger than their buffers), so the next
   * {@linkcode rearm} asks for a kick when the driver adds one more, not
   * when it adds past the untaken ones.
   */
  notifyOnNext(): void {
    this.#notifyOnNext = true;
  }

  /**
   * After serving the queue: with `VIRTIO_F_EVENT_IDX`, publishes
   * `avail_event` (the driver kicks once its available index passes it: the
   * first chain not taken, or with {@linkcode notifyOnNext} the next one to
   * be added), then reads the available index again. Returns true when the
   * driver added chains since the device last looked (it may have read the
   * old `avail_event` and not kicked: the caller serves the queue again).
   * Without the feature the driver kicks every time: always false.
   */
  rearm(): boolean {
    if (!this.#eventIdx) return false;
    const seen = this.#availSeen;
    const event = this.#notifyOnNext ? seen : this.#lastAvail;
    this.#notifyOnNext = false;
    Atomics.store(this.#availEvent, this.#availEventAt, event);
    // The store above is sequentially consistent: this load sees any index the driver
    // stored before it read our avail_event (spec 2.7.10 "check again after").
    const now = Atomics.load(this.#availIdx, this.#availIdxAt);
    return now !== seen;
  }

  /**
   * Whether the driver wants an interrupt for the used entries published
   * since the last call (false when there were none). Without
   * `VIRTIO_F_EVENT_IDX`: unless the available ring's `NO_INTERRUPT` flag is
   * set. With it: when the used index passed the driver's `used_event`
   * (read after the used index was stored, see the class notes); the first
   * answer after setup is always yes.
   */
  needsInterrupt(): boolean {
    if (!this.#published) return false;
    this.#published = false;
    if (!this.#eventIdx) return (this.availFlags & VRING_AVAIL_F_NO_INTERRUPT) === 0;
    const now = this.#nextUsed;
    const old = this.#signalled;
    this.#signalled = now;
    if (!this.#signalledValid) {
      this.#signalledValid = true;
      return true;
    }
    return needEvent(Atomics.load(this.#usedEvent, this.#usedEventAt), now, old);
  }

  /** Follows the chain starting at `head` into {@linkcode chain}. */
  #walk(head: number): void {
    const chain = this.chain;
    chain.clear(head);
    let table = this.#desc;
    let base = 0; // where the table starts in `table`
    let tableSize = this.size;
    // At most one visit per descriptor of the current table: a `next` loop ends here.
    let budget = tableSize;
    let inIndirect = false;
    let index = head;
    for (;;) {
      if (index >= tableSize) {
        throw new VirtioError(
          `descriptor index ${index} past the ${
            inIndirect ? "indirect " : ""
          }table of ${tableSize}`,
        );
      }
      if (budget-- === 0) {
        throw new VirtioError(`descriptor chain from ${head} loops or exceeds ${tableSize}`);
      }
      const at = base + 16 * index;
      const low = table.getUint32(at, true);
      const high = table.getUint32(at + 4, true);
      const length = table.getUint32(at + 8, true);
      const flags = table.getUint16(at + 12, true);
      const next = table.getUint16(at + 14, true);
      // Past 2^53 cannot be RAM; treat as outside.
      const address = high >= 0x200000 ? Number.MAX_SAFE_INTEGER : high * 0x1_0000_0000 + low;
      if (flags & DescFlags.INDIRECT) {
        if (!this.#indirect) throw new VirtioError("indirect descriptor not negotiated");
        if (inIndirect) throw new VirtioError("indirect descriptor inside an indirect table");
        if (flags & DescFlags.NEXT) throw new VirtioError("indirect descriptor with NEXT set");
        const entries = length / 16;
        if (!Number.isInteger(entries) || entries < 1 || entries > MAX_INDIRECT_DESCRIPTORS) {
          throw new VirtioError(`indirect table of ${length} bytes`);
        }
        const region = this.#mem.locate(address, length);
        if (region < 0) {
          throw new VirtioError(`indirect table ${hex(address)}+${length} outside guest RAM`);
        }
        // Read through the region's view: no allocation per chain.
        table = this.#mem.regionView(region);
        base = address - this.#mem.regions[region].gpa;
        tableSize = budget = entries;
        inIndirect = true;
        index = 0;
        continue;
      }
      if (length > 0 && !chain.add(address, length, (flags & DescFlags.WRITE) !== 0)) {
        throw new VirtioError(`buffer ${hex(address)}+${length} outside guest RAM`);
      }
      if (!(flags & DescFlags.NEXT)) return;
      index = next;
    }
  }

  /**
   * Returns the chain with head `head` to the driver, saying `written` bytes
   * were written into its writable buffers: the element first, then the
   * index (a release store the driver's vCPUs see after the element).
   */
  pushUsed(head: number, written: number): void {
    this.addUsed(head, written);
    this.publishUsed();
  }

  /**
   * Writes the used element for `head` without publishing it: the driver
   * sees it with the next {@linkcode publishUsed} (several buffers of one
   * received frame must appear together).
   */
  addUsed(head: number, written: number): void {
    const at = 4 + 8 * (this.#nextUsed & (this.size - 1));
    this.#used.setUint32(at, head, true);
    this.#used.setUint32(at + 4, written, true);
    this.#nextUsed = (this.#nextUsed + 1) & 0xffff;
  }

  /** Stores the used index over the elements added (a release store after them). */
  publishUsed(): void {
    Atomics.store(this.#usedIdx, this.#usedIdxAt, this.#nextUsed);
    this.#published = true;
  }
}
