/**
 * virtio-net (spec 5.1) with checksum and segmentation offloads: a receive
 * queue (0) the device fills with frames from the host, a transmit queue (1)
 * whose frames it sends. Every frame travels behind the 12-byte
 * `virtio_net_hdr` of virtio 1.x (flags, gso_type, hdr_len, gso_size,
 * csum_start, csum_offset, num_buffers), which is also the layout of a tap's
 * vnet header (`IFF_VNET_HDR` with `TUNSETVNETHDRSZ` 12): the header passes
 * between the driver and the host's stack as it is, so a guest may send
 * 64 KiB TCP segments with their checksums left to the host (and receive
 * such), one system call per frame, straight from and into guest RAM.
 *
 * With `VIRTIO_NET_F_MRG_RXBUF` (spec 5.1.6.3) the driver posts small
 * receive buffers (Linux: one descriptor of about a page each) instead of
 * one chain per largest frame; a received frame is read into a host buffer
 * once, then spread over as many of them as it needs, their count in the
 * header's `num_buffers`. A frame larger than the buffers posted waits,
 * whole, in the device until the driver adds more: never written past them.
 *
 * What the driver controls is checked before it reaches the host: a transmit
 * header may only ask for the offloads the driver negotiated (else the frame
 * is dropped), a frame's length is bounded, and a received frame is only
 * handed over when its header matches what the driver accepted and it fits
 * the driver's buffers whole. The host side is a {@linkcode PacketPort}
 * (a tap interface, see `tap.ts`).
 *
 * @module
 */

import {
  DeviceId,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_INDIRECT_DESC,
} from "./constants.ts";
import type { VirtioBackend, VirtioFront } from "./device.ts";
import { copyBytes, IOV_MAX, type SplitQueue } from "./queue.ts";

/**
 * Where frames come from and go to. A frame is always behind its 12-byte
 * `virtio_net_hdr` and is moved through `struct iovec`s (16 bytes each:
 * base, length; little-endian) pointing into guest RAM.
 */
export interface PacketPort {
  /**
   * Reads one waiting frame (header first) into the `count` iovecs at `iov`;
   * returns the frame's whole length, which is more than the iovecs hold
   * when it was cut short, or 0 when none waits.
   */
  receive(iov: Uint8Array, count: number): number;
  /** Sends one frame (header first) gathered from the `count` iovecs at `iov`; dropped when the host cannot take it. */
  send(iov: Uint8Array, count: number): void;
  /**
   * The offloads the driver accepts in received frames, as `TUN_F_*` bits
   * ({@linkcode TunOffload}); 0 means whole, checksummed frames only.
   */
  setOffload(flags: number): void;
  /** Releases the port. */
  close(): void;
}

/** `TUN_F_*` bits of `TUNSETOFFLOAD` (`linux/if_tun.h`): what a tap may hand its reader. */
export const TunOffload = {
  /** Frames with a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`). */
  CSUM: 0x01,
  /** TCP over IPv4 segments up to 64 KiB. */
  TSO4: 0x02,
  /** TCP over IPv6 segments up to 64 KiB. */
  TSO6: 0x04,
} as const;

/** `VIRTIO_NET_F_CSUM`: the driver may send partially checksummed frames. */
const F_CSUM = 1n << 0n;
/** `VIRTIO_NET_F_GUEST_CSUM`: the driver accepts partially checksummed frames. */
const F_GUEST_CSUM = 1n << 1n;
/** `VIRTIO_NET_F_MAC`: the configuration holds the MAC address. */
const F_MAC = 1n << 5n;
/** `VIRTIO_NET_F_GUEST_TSO4`: the driver accepts TCPv4 segments. */
const F_GUEST_TSO4 = 1n << 7n;
/** `VIRTIO_NET_F_GUEST_TSO6`: the driver accepts TCPv6 segments. */
const F_GUEST_TSO6 = 1n << 8n;
/** `VIRTIO_NET_F_HOST_TSO4`: the driver may send TCPv4 segments. */
const F_HOST_TSO4 = 1n << 11n;
/** `VIRTIO_NET_F_HOST_TSO6`: the driver may send TCPv6 segments. */
const F_HOST_TSO6 = 1n << 12n;
/** `VIRTIO_NET_F_MRG_RXBUF`: a received frame may span several receive chains. */
export const VIRTIO_NET_F_MRG_RXBUF: bigint = 1n << 15n;

/** The offload features as bits of a number (all in the low feature word), for the per-frame checks. */
const BIT_CSUM = Number(F_CSUM);
const BIT_GUEST_CSUM = Number(F_GUEST_CSUM);
const BIT_GUEST_TSO4 = Number(F_GUEST_TSO4);
const BIT_GUEST_TSO6 = Number(F_GUEST_TSO6);
const BIT_HOST_TSO4 = Number(F_HOST_TSO4);
const BIT_HOST_TSO6 = Number(F_HOST_TSO6);

/** `virtio_net_hdr.flags`: `csum_start`/`csum_offset` name a checksum still to fill in. */
const HDR_F_NEEDS_CSUM = 1;
/** `virtio_net_hdr.gso_type` values (spec 5.1.6). */
const GSO_NONE = 0;
const GSO_TCPV4 = 1;
const GSO_TCPV6 = 4;

/** Bytes of `virtio_net_hdr` with `num_buffers` (always present in virtio 1.x). */
export const NET_HEADER_BYTES = 12;
/**
 * The largest frame carried, header not counted: a 64 KiB segment (the
 * most a TSO driver sends, `GSO_LEGACY_MAX_SIZE`) behind its 14-byte
 * Ethernet header.
 */
export const NET_MAX_FRAME: number = 65536 + 14;
const QUEUE_SIZE = 256;
/** The most a received frame can be, header included: larger ones are dropped. */
const RECEIVE_CAPACITY = NET_HEADER_BYTES + NET_MAX_FRAME;
const RX = 0;
const TX = 1;

/**
 * The network card's front: its MAC address, one receive and one transmit
 * queue, the checksum and TCP segmentation offloads both ways, mergeable
 * receive buffers and event indices.
 */
export function netFront(mac: Uint8Array): VirtioFront {
  const config = new Uint8Array(8); // mac[6], status (unused without VIRTIO_NET_F_STATUS)
  config.set(mac.subarray(0, 6));
  return {
    deviceId: DeviceId.NET,
    features: VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | F_MAC | F_CSUM | F_GUEST_CSUM |
      F_GUEST_TSO4 | F_GUEST_TSO6 | F_HOST_TSO4 | F_HOST_TSO6 | VIRTIO_NET_F_MRG_RXBUF |
      VIRTIO_F_EVENT_IDX,
    queueMax: [QUEUE_SIZE, QUEUE_SIZE],
    config,
  };
}

/** A locally administered unicast MAC (52:54:00:xx:xx:xx as QEMU's) from a small number. */
export function defaultMac(index: number): Uint8Array {
  return new Uint8Array([0x52, 0x54, 0x00, 0x12, 0x34, 0x56 + (index & 0x3f)]);
}

/** The `TUN_F_*` bits for the receive offloads among `features` (a driver's). */
export function tunOffloadOf(features: bigint): number {
  if (!(features & F_GUEST_CSUM)) return 0; // segments always come with partial checksums
  return TunOffload.CSUM | (features & F_GUEST_TSO4 ? TunOffload.TSO4 : 0) |
    (features & F_GUEST_TSO6 ? TunOffload.TSO6 : 0);
}

/**
 * Moves frames between a port and the queues. Allocates nothing per frame
 * beyond the chains' views: the iovecs, the header copy and the receive
 * buffer of mergeable receive buffers are made once.
 */
export class NetBackend implements VirtioBackend {
  #port: PacketPort;
  /**
   * The offloads the driver negotiated, as `F_*` bits of the low feature
   * word (0 until it set `DRIVER_OK`): a number, so the per-frame checks
   * allocate no BigInt.
   */
  #offloads = 0;
  #iov = new Uint32Array(4 * IOV_MAX);
  #iovBytes = new Uint8Array(this.#iov.buffer);
  #header = new Uint8Array(NET_HEADER_BYTES);
  #headerView = new DataView(this.#header.buffer);
  /** Frames dropped: malformed or oversized transmit chains, received frames that did not fit or were not allowed. */
  dropped = 0;
  #wantsFrames = false;
  /** Whether `VIRTIO_NET_F_MRG_RXBUF` was negotiated. */
  #mergeable = false;
  /** With mergeable buffers: where a received frame is read first (made on first use). */
  #frame: Uint8Array | null = null;
  /** Its `struct iovec`, as bytes for the port. */
  #frameIov = new Uint8Array(16);
  /** Bytes of the frame waiting in `#frame` for receive buffers (0: none). */
  #held = 0;
  /** Where the frame's `num_buffers` bytes went in the guest's first buffer. */
  #countLow: Uint8Array | null = null;
  #countLowAt = 0;
  #countHigh: Uint8Array | null = null;
  #countHighAt = 0;
  /** The heads and lengths of the chains one frame fills (at most a queue's worth). */
  #heads = new Uint32Array(QUEUE_SIZE);
  #lengths = new Uint32Array(QUEUE_SIZE);

  /** Serves `port`. */
  constructor(port: PacketPort) {
    this.#port = port;
  }

  /**
   * Whether the driver's receive buffers wait for frames, so the port is
   * worth polling: false from a reset until a receive pass found buffers
   * left over, and again once a pass used them all. The device thread stops
   * polling a tap meanwhile (its frames wait in the kernel's queue), which
   * the driver's next receive-queue kick ends; polling it would wake the
   * thread in a loop with nowhere to put the frames.
   */
  get wantsFrames(): boolean {
    return this.#wantsFrames;
  }

  /** Sets the port's receive offloads to what the driver accepted. */
  activate(features: bigint): void {
    this.#offloads = Number(features & 0xffff_ffffn);
    this.#mergeable = (features & VIRTIO_NET_F_MRG_RXBUF) !== 0n;
    this.#held = 0;
    if (this.#mergeable && this.#frame === null) {
      const frame = new Uint8Array(RECEIVE_CAPACITY);
      const v = new DataView(this.#frameIov.buffer);
      v.setBigUint64(0, Deno.UnsafePointer.value(Deno.UnsafePointer.of(frame)), true);
      v.setBigUint64(8, BigInt(RECEIVE_CAPACITY), true);
      this.#frame = frame;
    }
    this.#port.setOffload(tunOffloadOf(features));
  }

  /** Transmits the transmit queue's frames, or fills receive buffers with waiting frames. */
  process(index: number, queue: SplitQueue): boolean {
    if (index === TX) return this.#transmit(queue);
    if (index !== RX) return false;
    return this.#mergeable ? this.#receiveMergeable(queue) : this.#receive(queue);
  }

  /**
   * Whether a transmit header asks only for what the driver negotiated:
   * a checksum with `VIRTIO_NET_F_CSUM`, TCP segmentation with `HOST_TSO4/6`
   * (with a segment size and a partial checksum, as spec 5.1.6.2 requires of
   * the driver). Offsets and lengths inside the frame are the host kernel's to
   * check (`virtio_net_hdr_to_skb`).
   */
  #transmitHeaderAllowed(): boolean {
    const f = this.#offloads;
    const flags = this.#header[0];
    if (flags & ~HDR_F_NEEDS_CSUM) return false;
    if ((flags & HDR_F_NEEDS_CSUM) && !(f & BIT_CSUM)) return false;
    const gso = this.#header[1];
    if (gso === GSO_NONE) return true;
    const allowed = gso === GSO_TCPV4
      ? (f & BIT_HOST_TSO4)
      : gso === GSO_TCPV6
      ? (f & BIT_HOST_TSO6)
      : 0;
    return allowed !== 0 && (flags & HDR_F_NEEDS_CSUM) !== 0 &&
      this.#headerView.getUint16(4, true) !== 0;
  }

  #transmit(queue: SplitQueue): boolean {
    let used = false;
    while (queue.pop()) {
      const chain = queue.chain;
      const bytes = chain.readableBytes;
      let sent = false;
      if (bytes >= NET_HEADER_BYTES && bytes <= NET_HEADER_BYTES + NET_MAX_FRAME) {
        chain.readInto(this.#header);
        if (this.#transmitHeaderAllowed()) {
          const count = chain.iovec(this.#iov, false, 0, 0);
          if (count > 0) {
            this.#port.send(this.#iovBytes, count); // one writev: header and frame as they are
            sent = true;
          }
        }
      }
      if (!sent) this.dropped++;
      queue.pushUsed(chain.head, 0);
      used = true;
    }
    return used;
  }

  /**
   * Copies the first 12 device-writable bytes of the chain (which may span
   * buffers: the header of a frame just read into them) to `#header`.
   */
  #readReceivedHeader(queue: SplitQueue): void {
    const chain = queue.chain;
    let done = 0;
    for (let i = 0; i < chain.count && done < NET_HEADER_BYTES; i++) {
      if (!chain.writable[i]) continue;
      const n = Math.min(chain.lengths[i], NET_HEADER_BYTES - done);
      copyBytes(chain.bytesOf(i), chain.offsets[i], this.#header, done, n);
      done += n;
    }
  }

  /**
   * Whether a received frame's header fits what the driver accepted (a tap
   * whose offloads changed may still hold frames made for the old ones);
   * without `GUEST_CSUM` the flags are cleared (spec 5.1.6.4: zero flags,
   * a fully checksummed frame).
   */
  #receiveHeaderAllowed(): boolean {
    const f = this.#offloads;
    const h = this.#header;
    if (!(f & BIT_GUEST_CSUM)) {
      h[0] = 0;
      return h[1] === GSO_NONE;
    }
    if (h[1] === GSO_NONE) return true;
    return (h[1] === GSO_TCPV4 && (f & BIT_GUEST_TSO4) !== 0) ||
      (h[1] === GSO_TCPV6 && (f & BIT_GUEST_TSO6) !== 0);
  }

  #receive(queue: SplitQueue): boolean {
    let used = false;
    this.#wantsFrames = false; // until buffers are seen left over below
    while (queue.pop()) {
      const chain = queue.chain;
      const room = chain.writableBytes;
      const count = room < NET_HEADER_BYTES ? -1 : chain.iovec(this.#iov, true, 0, 0);
      if (count <= 0) {
        // Buffers no frame can use (no room for the header): handed back empty.
        this.dropped++;
        queue.pushUsed(chain.head, 0);
        used = true;
        continue;
      }
      // Frames are read straight into the buffers; one that does not fit them
      // whole or is not allowed is dropped and the next read into the same buffers.
      for (;;) {
        const n = this.#port.receive(this.#iovBytes, count);
        if (n <= 0) {
          queue.unpop(); // no frame waits: the buffers stay the driver's for the next one
          this.#wantsFrames = true;
          return used;
        }
        if (n < NET_HEADER_BYTES || n > room) {
          this.dropped++;
          continue;
        }
        this.#readReceivedHeader(queue);
        if (!this.#receiveHeaderAllowed()) {
          this.dropped++;
          continue;
        }
        this.#headerView.setUint16(10, 1, true); // num_buffers: one chain per frame
        queue.chain.writeFrom(this.#header);
        queue.pushUsed(chain.head, n);
        used = true;
        break;
      }
    }
    return used;
  }

  /**
   * Mergeable receive buffers: reads frames from the port into `#frame`
   * while the driver has buffers, each then spread over as many chains as it
   * needs (`#place`). A frame for which the buffers run out stays held until
   * the driver adds more (with EVENT_IDX the queue asks for that kick).
   */
  #receiveMergeable(queue: SplitQueue): boolean {
    const frame = this.#frame!;
    let used = false;
    this.#wantsFrames = false; // until buffers are seen left over below
    for (;;) {
      if (this.#held > 0) {
        const placed = this.#place(queue);
        if (placed !== 0) used = true;
        if (placed <= 0) {
          queue.notifyOnNext(); // a kick as soon as the driver adds a buffer
          return used;
        }
      }
      // No buffers: frames wait in the port (the tap's queue) for the driver's next kick.
      if (!queue.hasAvailable) return used;
      const n = this.#port.receive(this.#frameIov, 1);
      if (n <= 0) {
        this.#wantsFrames = true;
        return used;
      }
      if (n < NET_HEADER_BYTES || n > RECEIVE_CAPACITY) {
        this.dropped++;
        continue;
      }
      copyBytes(frame, 0, this.#header, 0, NET_HEADER_BYTES);
      if (!this.#receiveHeaderAllowed()) {
        this.dropped++;
        continue;
      }
      frame[0] = this.#header[0]; // the flags, cleared without GUEST_CSUM
      this.#held = n;
    }
  }

  /**
   * Copies the held frame into the next available chains, the header's
   * `num_buffers` set to their count, and returns them on the used ring
   * together (Linux's driver reads `num_buffers` and expects that many used
   * entries). Returns 1 when placed; -1 when the chains ran out first (those
   * taken are put back, the frame stays held); 0 when there was no chain.
   * A chain too short for the header where a frame starts is handed back
   * empty (the driver's own error, counted in `dropped`), as without
   * mergeable buffers.
   */
  #place(queue: SplitQueue): number {
    const frame = this.#frame!;
    const length = this.#held;
    let chains = 0;
    let emptied = false;
    let at = 0; // bytes of the frame placed
    while (at < length) {
      if (!queue.pop()) {
        queue.unpop(chains); // too few buffers: the frame waits for more, whole
        return chains > 0 ? -1 : emptied ? -1 : 0;
      }
      const chain = queue.chain;
      if (chains === 0 && chain.writableBytes < NET_HEADER_BYTES) {
        this.dropped++;
        queue.pushUsed(chain.head, 0);
        emptied = true;
        continue;
      }
      let written = 0;
      for (let i = 0; i < chain.count && at < length; i++) {
        if (!chain.writable[i]) continue;
        const ram = chain.bytesOf(i);
        const start = chain.offsets[i];
        const n = Math.min(chain.lengths[i], length - at);
        // Where num_buffers (frame bytes 10 and 11) lands, to fill in once the count is known.
        if (at <= 10 && 10 < at + n) {
          this.#countLow = ram;
          this.#countLowAt = start + 10 - at;
        }
        if (at <= 11 && 11 < at + n) {
          this.#countHigh = ram;
          this.#countHighAt = start + 11 - at;
        }
        copyBytes(frame, at, ram, start, n);
        at += n;
        written += n;
      }
      this.#heads[chains] = chain.head;
      this.#lengths[chains] = written;
      chains++;
    }
    this.#countLow![this.#countLowAt] = chains & 0xff;
    this.#countHigh![this.#countHighAt] = chains >>> 8;
    this.#countLow = this.#countHigh = null;
    for (let i = 0; i < chains; i++) queue.addUsed(this.#heads[i], this.#lengths[i]);
    queue.publishUsed();
    this.#held = 0;
    return 1;
  }

  /** Forgets the old driver's features; the port takes no offloads until the next driver's. */
  reset(): void {
    this.#offloads = 0;
    this.#wantsFrames = false;
    this.#mergeable = false;
    this.#held = 0;
    this.#port.setOffload(0);
  }

  /** Closes the port. */
  close(): void {
    this.#port.close();
  }
}
