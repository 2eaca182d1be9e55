/**
 * The coalesced MMIO/PIO ring: guest writes to registered zones queue here
 * instead of exiting, and userspace replays them later (for instance before
 * handling the next exit of any kind).
 *
 * @module
 */

import { COALESCED_RING_ENTRIES, KvmCoalescedMmio } from "../abi/coalesced.ts";
import { Errno, KvmError } from "../errors.ts";

const HEADER = 8;
const ENTRY = KvmCoalescedMmio.size;

/** One queued write. Reused across entries by {@linkcode CoalescedRing.drain}. */
export interface CoalescedWrite {
  /** Guest physical address, or the port for a PIO zone. */
  address: number;
  /** Bytes written: 1, 2, 4 or 8. */
  length: number;
  /** Whether it was port I/O (a zone registered with `registerCoalescedPio`). */
  pio: boolean;
  /** The bytes written, a view into the ring valid only during the callback of `drain`. */
  data: Uint8Array;
}

/**
 * Reader of the ring shared with the kernel (`struct kvm_coalesced_mmio_ring`,
 * the page `KVM_COALESCED_MMIO_PAGE_OFFSET` of a vCPU's mapping). Obtained from
 * `Vm.coalescedRing()`. The kernel appends at `last`; reading advances `first`.
 *
 * @example
 * ```ts ignore
 * const ring = vm.coalescedRing();
 * ring.drain((w) => console.log(w.address.toString(16), w.data));
 * ```
 */
export class CoalescedRing {
  #bytes: Uint8Array;
  #view: DataView;
  #entry: CoalescedWrite = { address: 0, length: 0, pio: false, data: new Uint8Array(0) };
  /**
   * The `data` views, made on first use and kept: index `slot * 9 + length`
   * (lengths 0..8), so a drain after the first use of each pair allocates
   * nothing (`subarray` per entry made a new view every time).
   */
  #views: (Uint8Array | undefined)[] = new Array(COALESCED_RING_ENTRIES * 9).fill(undefined);

  /** @internal Wraps the ring page (no copy). */
  constructor(page: Uint8Array) {
    this.#bytes = page;
    this.#view = new DataView(page.buffer, page.byteOffset, page.byteLength);
  }

  /** Capacity in entries (`KVM_COALESCED_MMIO_MAX`; one slot always stays free). */
  static readonly capacity: number = COALESCED_RING_ENTRIES;

  #check(): void {
    // The page is detached (length 0) once the vCPU whose mapping holds it is closed.
    if (this.#bytes.byteLength === 0) {
      throw new KvmError(
        "read coalesced ring",
        Errno.EBADF,
        "the vCPU that maps the ring is closed",
      );
    }
  }

  /**
   * Reads `last` and checks both indices: the page is shared with the kernel
   * (and the ring's contents come from the guest), so an index past the ring
   * is refused instead of being followed (`EBADMSG`).
   */
  #last(first: number): number {
    const last = this.#view.getUint32(4, true);
    if (first >= COALESCED_RING_ENTRIES || last >= COALESCED_RING_ENTRIES) {
      throw new KvmError(
        "read coalesced ring",
        Errno.EBADMSG,
        `ring indices first ${first}, last ${last}: both must be below ${COALESCED_RING_ENTRIES}`,
      );
    }
    return last;
  }

  /** Writes queued and not yet read. */
  get pending(): number {
    this.#check();
    const first = this.#view.getUint32(0, true);
    const last = this.#last(first);
    return (last - first + COALESCED_RING_ENTRIES) % COALESCED_RING_ENTRIES;
  }

  /**
   * Calls `visit` for each queued write, oldest first, and consumes them.
   * Allocates nothing once warm: the entry object is reused, and each `data`
   * view (one per ring slot and length) is made on its first use and kept.
   * Returns the number of writes visited.
   *
   * The work is bounded: at most one ring's worth of entries
   * ({@linkcode CoalescedRing.capacity} - 1) per call, however often the
   * kernel advances `last` meanwhile, and an index outside the ring throws a
   * {@linkcode KvmError} (`EBADMSG`) instead of looping. An entry's length is
   * clamped to the 8 data bytes it has.
   */
  drain(visit: (write: CoalescedWrite) => void): number {
    this.#check();
    const view = this.#view;
    let first = view.getUint32(0, true);
    let n = 0;
    // x86 is TSO: the kernel's stores of the entry precede its store of
    // `last`, so an index read here already covers a complete entry.
    while (n < COALESCED_RING_ENTRIES - 1 && first !== this.#last(first)) {
      const at = HEADER + first * ENTRY;
      const entry = this.#entry;
      // Two 32-bit reads: getBigUint64 would allocate a BigInt per entry.
      entry.address = view.getUint32(at + 4, true) * 0x1_0000_0000 + view.getUint32(at, true);
      entry.length = view.getUint32(at + 8, true);
      entry.pio = view.getUint32(at + 12, true) !== 0;
      const length = Math.min(entry.length, 8);
      const key = first * 9 + length;
      let data = this.#views[key];
      if (data === undefined) {
        data = this.#bytes.subarray(at + 16, at + 16 + length);
        if (data.length < length) {
          throw new KvmError(
            "read coalesced ring",
            Errno.EBADMSG,
            `entry ${first} ends past the page`,
          );
        }
        this.#views[key] = data;
      }
      entry.data = data;
      visit(entry);
      first = (first + 1) % COALESCED_RING_ENTRIES;
      view.setUint32(0, first, true);
      n++;
    }
    return n;
  }

  /** Consumes and returns the queued writes as copies (allocates; for tests and debugging). */
  read(): CoalescedWrite[] {
    const out: CoalescedWrite[] = [];
    this.drain((w) => out.push({ ...w, data: w.data.slice() }));
    return out;
  }
}
