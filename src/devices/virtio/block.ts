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
 * (an unknown type). File I/O goes straight between the file and guest RAM.
 *
 * @module
 */

import { DeviceId, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC } from "./constants.ts";
import type { BlockSpec, VirtioBackend, VirtioFront } from "./device.ts";
import { type SplitQueue, VirtioError } from "./queue.ts";

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

/** Reads exactly `b.length` bytes; false at an early end of file. */
function readFull(file: Deno.FsFile, b: Uint8Array): boolean {
  let done = 0;
  while (done < b.length) {
    const n = file.readSync(b.subarray(done));
    if (n === null || n === 0) return false;
    done += n;
  }
  return true;
}

/** Writes all of `b`. */
function writeFull(file: Deno.FsFile, b: Uint8Array): boolean {
  let done = 0;
  while (done < b.length) done += file.writeSync(b.subarray(done));
  return true;
}

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
    features: VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | F_SEG_MAX | F_FLUSH |
      (spec.readOnly ? F_RO : 0n),
    queueMax: [QUEUE_SIZE],
    config,
  };
}

/** Serves block requests against an open image file. */
export class BlockBackend implements VirtioBackend {
  #file: Deno.FsFile | null;
  #sectors: number;
  #readOnly: boolean;
  #id: Uint8Array;
  #header = new Uint8Array(16);
  #headerView = new DataView(this.#header.buffer);

  /** Opens the image (read-only when the spec says so). */
  constructor(spec: BlockSpec) {
    this.#readOnly = spec.readOnly ?? false;
    this.#file = Deno.openSync(spec.path, { read: true, write: !this.#readOnly });
    this.#sectors = Math.floor(this.#file.statSync().size / SECTOR_SIZE);
    this.#id = blockId(spec);
  }

  /** Serves every available request. */
  process(_index: number, queue: SplitQueue): boolean {
    let used = false;
    while (queue.pop()) {
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
    const statusBuffer = chain.buffers[last];
    let status: number = BlkStatus.IOERR;
    let written = 0;
    if (chain.readInto(this.#header) === 16) {
      const type = this.#headerView.getUint32(0, true);
      const sector = this.#headerView.getBigUint64(8, true);
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
    statusBuffer[statusBuffer.length - 1] = status;
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
      let b = chain.buffers[i];
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
  #serve(queue: SplitQueue, type: number, sector: bigint): number {
    const file = this.#file;
    if (!file) return IOERROR;
    const chain = queue.chain;
    switch (type) {
      case BlkType.IN:
      case BlkType.OUT: {
        const reading = type === BlkType.IN;
        if (!reading && this.#readOnly) return IOERROR;
        // The data go one way only: device-writable for a read, readable for a write.
        const dataBytes = reading ? chain.writableBytes - 1 : chain.readableBytes - 16;
        if (dataBytes % SECTOR_SIZE !== 0) return IOERROR;
        if (
          sector > BigInt(this.#sectors) || Number(sector) + dataBytes / SECTOR_SIZE > this.#sectors
        ) {
          return IOERROR;
        }
        file.seekSync(Number(sector) * SECTOR_SIZE, Deno.SeekMode.Start);
        const ok = this.#eachData(queue, (b, writable) => {
          if (writable !== reading) return false;
          return reading ? readFull(file, b) : writeFull(file, b);
        });
        if (!ok) return IOERROR;
        return reading ? dataBytes : 0;
      }
      case BlkType.FLUSH:
        if (!this.#readOnly) file.syncDataSync();
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
    this.#file?.close();
    this.#file = null;
  }
}
