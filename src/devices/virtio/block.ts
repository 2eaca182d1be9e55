/**
 * virtio-blk (spec 5.2) over a raw image file: reads, writes, flushes and
 * the device id, on one request queue.
 *
 * A request is a chain: a 16-byte header the device reads (type, reserved,
 * sector), data buffers, and a final device-writable status byte. A chain
 * without the status byte cannot be answered and is a driver error (the
 * device needs a reset); every other malformed request is answered
 * `VIRTIO_BLK_S_IOERR` (a short header, data not a whole number of sectors,
 * sectors past the end, a write to a read-only disk) or `VIRTIO_BLK_S_UNSUPP`
 * (an unknown type). File I/O goes straight between the file and guest RAM,
 * one `preadv`/`pwritev` per request.
 *
 * @module
 */

import {
  DeviceId,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_INDIRECT_DESC,
} from "./constants.ts";
import type { BlockSpec, VirtioBackend, VirtioFront } from "./device.ts";
import { advanceIovec, IOV_MAX, type SplitQueue, VirtioError } from "./queue.ts";
import { Errno, unwrap } from "../../errors.ts";
import { O_RDONLY, O_RDWR } from "../../kvm/constants.ts";
import { native } from "../../ffi/library.ts";

/** Sector size of the request protocol. */
export const SECTOR_SIZE = 512;
/** Request types (spec 5.2.6). */
export const BlkType = {
  /** Read sectors. */
  IN: 0,
  /** Write sectors. */
  OUT: 1,
  /** Flush the host's caches to the disk. */
  FLUSH: 4,
  /** The device's serial (20 bytes). */
  GET_ID: 8,
} as const;
/** Status byte values. */
export const BlkStatus = {
  /** Done. */
  OK: 0,
  /** Failed. */
  IOERR: 1,
  /** Not supported. */
  UNSUPP: 2,
} as const;

/** `VIRTIO_BLK_F_SEG_MAX`: `seg_max` in the configuration is valid. */
const F_SEG_MAX = 1n << 2n;
/** `VIRTIO_BLK_F_RO`: the disk is read-only. */
const F_RO = 1n << 5n;
/** `VIRTIO_BLK_F_FLUSH`: flush requests are supported. */
const F_FLUSH = 1n << 9n;
const QUEUE_SIZE = 256;
/** Length of the GET_ID answer. */
const ID_BYTES = 20;
const IOERROR = -1;
const UNSUPPORTED = -2;

/** The serial a disk reports: the spec's id or the file's name, cut to 20 bytes. */
export function blockId(spec: BlockSpec): Uint8Array {
  const text = spec.id ?? spec.path.split("/").pop() ?? "disk";
  return new TextEncoder().encode(text).subarray(0, ID_BYTES);
}

/**
 * The block device's front: capacity from the file's size (whole sectors),
 * `seg_max` (the queue size minus the header and status descriptors), and
 * the read-only bit. Reads the file's size: a missing file throws `Deno.errors.NotFound`.
 */
export function blockFront(spec: BlockSpec): VirtioFront {
  const size = Deno.statSync(spec.path).size;
  const config = new Uint8Array(24);
  const v = new DataView(config.buffer);
  v.setBigUint64(0, BigInt(Math.floor(size / SECTOR_SIZE)), true); // capacity
  v.setUint32(12, QUEUE_SIZE - 2, true); // seg_max
  return {
    deviceId: DeviceId.BLOCK,
    features: VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | F_SEG_MAX |
      F_FLUSH |
      (spec.readOnly ? F_RO : 0n),
    queueMax: [QUEUE_SIZE],
    config,
  };
}

/**
 * Serves block requests against an open image file. A read or write is one
 * `preadv`/`pwritev` (shim) over the request's data buffers, straight between
 * the file and guest RAM: the buffers become `struct iovec`s in a buffer made
 * once, so a request allocates nothing; a short transfer is continued from
 * where it stopped, and an end of file before the request's last byte is the
 * guest's I/O error.
 */
export class BlockBackend implements VirtioBackend {
  /** The image's fd (shim `kvm_open`), -1 once closed. */
  #fd: number;
  #sectors: number;
  #readOnly: boolean;
  #id: Uint8Array;
  #header = new Uint8Array(16);
  #headerView = new DataView(this.#header.buffer);
  /** The request's `struct iovec`s, as 32-bit words: room for every buffer a chain can hold. */
  #iov = new Uint32Array(4 * IOV_MAX);
  #iovBytes = new Uint8Array(this.#iov.buffer);
  /** Requests served (any type). */
  requests = 0;
  /** Bytes read and written for the driver. */
  bytes = 0;
  /**
   * Milliseconds spent in `preadv`/`pwritev` (what bounds a request on the
   * host side). These counters are always kept (two clock reads a transfer);
   * `DENO_KVM_VIRTIO_TIMING` only prints them.
   */
  ioMs = 0;
  /** Of those, requests of 64 KiB or more. */
  largeRequests = 0;
  /** The milliseconds of those in `preadv`/`pwritev`. */
  largeIoMs = 0;

  /** Opens the image (read-only when the spec says so). */
  constructor(spec: BlockSpec) {
    this.#readOnly = spec.readOnly ?? false;
    const operation = "open disk image";
    const path = new TextEncoder().encode(`${spec.path}\0`);
    this.#fd = unwrap(
      native().kvm_open(path, this.#readOnly ? O_RDONLY : O_RDWR),
      operation,
      () => spec.path,
    );
    try {
      this.#sectors = Math.floor(Deno.statSync(spec.path).size / SECTOR_SIZE);
    } catch (e) {
      this.close();
      throw e;
    }
    this.#id = blockId(spec);
  }

  /** Serves every available request. */
  process(_index: number, queue: SplitQueue): boolean {
    let used = false;
    while (queue.pop()) {
      this.requests++;
      const written = this.#request(queue);
      queue.pushUsed(queue.chain.head, written);
      used = true;
    }
    return used;
  }

  /** One request; returns the bytes written to the driver's buffers (status included). */
  #request(queue: SplitQueue): number {
    const chain = queue.chain;
    // The status byte: the last byte of the last buffer, which must be writable.
    const last = chain.count - 1;
    if (last < 0 || !chain.writable[last]) {
      throw new VirtioError("block request without a writable status byte");
    }
    let status: number = BlkStatus.IOERR;
    let written = 0;
    if (chain.readInto(this.#header) === 16) {
      const type = this.#headerView.getUint32(0, true);
      // A number, not a BigInt (nothing allocated per request): one past 2^53 is past any disk.
      const high = this.#headerView.getUint32(12, true);
      const sector = high >= 0x200000
        ? Infinity
        : high * 0x1_0000_0000 + this.#headerView.getUint32(8, true);
      try {
        written = this.#serve(queue, type, sector);
        status = written < 0
          ? (written === UNSUPPORTED ? BlkStatus.UNSUPP : BlkStatus.IOERR)
          : BlkStatus.OK;
      } catch {
        // A host I/O error is the guest's I/O error, never the VMM's failure.
        status = BlkStatus.IOERR;
      }
      if (written < 0) written = 0;
    }
    chain.bytesOf(last)[chain.offsets[last] + chain.lengths[last] - 1] = status;
    return written + 1;
  }

  /**
   * The data buffers of the current request in order, with their direction:
   * every buffer but the 16 header bytes at the start of the readable ones
   * and the status byte at the end.
   */
  #eachData(queue: SplitQueue, visit: (buffer: Uint8Array, writable: boolean) => boolean): boolean {
    const chain = queue.chain;
    let header = 16;
    for (let i = 0; i < chain.count; i++) {
      let b = chain.buffer(i);
      const writable = chain.writable[i] === 1;
      if (!writable && header > 0) {
        const skip = Math.min(header, b.length);
        header -= skip;
        b = b.subarray(skip);
      }
      if (i === chain.count - 1) b = b.subarray(0, b.length - 1);
      if (b.length > 0 && !visit(b, writable)) return false;
    }
    return true;
  }

  /** Serves one request: bytes written to the guest, or IOERROR / UNSUPPORTED. */
  #serve(queue: SplitQueue, type: number, sector: number): number {
    const fd = this.#fd;
    if (fd < 0) return IOERROR;
    const chain = queue.chain;
    switch (type) {
      case BlkType.IN:
      case BlkType.OUT: {
        const reading = type === BlkType.IN;
        if (!reading && this.#readOnly) return IOERROR;
        // The data go one way only: device-writable for a read (less the status
        // byte), readable for a write (less the header); nothing the other way.
        const dataBytes = reading ? chain.writableBytes - 1 : chain.readableBytes - 16;
        const otherBytes = reading ? chain.readableBytes - 16 : chain.writableBytes - 1;
        if (otherBytes > 0 || dataBytes % SECTOR_SIZE !== 0) return IOERROR;
        if (sector + dataBytes / SECTOR_SIZE > this.#sectors) return IOERROR;
        if (dataBytes === 0) return 0;
        const iov = this.#iov;
        let count = reading ? chain.iovec(iov, true, 0, 1) : chain.iovec(iov, false, 16, 0);
        if (count <= 0) return IOERROR; // more buffers than IOV_MAX (seg_max keeps Linux far below)
        let offset = sector * SECTOR_SIZE;
        let left = dataBytes;
        const lib = native();
        // Every buffer lies in guest RAM and the range inside the image (checked above);
        // a short count (a signal, a file shrunk under us) is continued, an end of file is an error.
        while (left > 0) {
          // One BigInt per call: the symbol's u64 parameter (far below the syscall's cost).
          const at = BigInt(offset);
          const t0 = performance.now();
          const n = reading
            ? lib.kvm_preadv(fd, this.#iovBytes, count, at)
            : lib.kvm_pwritev(fd, this.#iovBytes, count, at);
          const ms = performance.now() - t0;
          this.ioMs += ms;
          if (dataBytes >= 65536) this.largeIoMs += ms;
          if (n === -Errno.EINTR) continue;
          if (n <= 0 || n > left) return IOERROR;
          left -= n;
          offset += n;
          if (left > 0) count = advanceIovec(iov, count, n);
        }
        this.bytes += dataBytes;
        if (dataBytes >= 65536) this.largeRequests++;
        return reading ? dataBytes : 0;
      }
      case BlkType.FLUSH:
        if (!this.#readOnly && native().kvm_fdatasync(fd) < 0) return IOERROR;
        return 0;
      case BlkType.GET_ID: {
        let done = 0;
        this.#eachData(queue, (b, writable) => {
          if (!writable) return true;
          const n = Math.min(b.length, ID_BYTES - done);
          b.fill(0, 0, n);
          b.set(this.#id.subarray(done, done + n));
          done += n;
          return done < ID_BYTES;
        });
        return done;
      }
      default:
        return UNSUPPORTED;
    }
  }

  /** Nothing per driver. */
  reset(): void {}

  /** Closes the image. Idempotent. */
  close(): void {
    if (this.#fd >= 0) native().kvm_close(this.#fd);
    this.#fd = -1;
  }
}
