/**
 * A Linux tap interface (`/dev/net/tun`, `TUNSETIFF` with `IFF_TAP |
 * IFF_NO_PI`: whole Ethernet frames, no packet-information prefix) as a
 * {@linkcode PacketPort} for virtio-net. Non-blocking: the device thread
 * polls it with its eventfd (`kvm_poll` in the shim).
 *
 * @module
 */

import { Errno, KvmError, unwrap } from "../../errors.ts";
import { native } from "../../ffi/library.ts";
import type { PacketPort } from "./net.ts";

const O_RDWR = 2;
const O_NONBLOCK = 0o4000;
/** `TUNSETIFF`: `_IOW('T', 202, int)`. */
const TUNSETIFF = 0x400454ca;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
/** `IFNAMSIZ`. */
const IFNAMSIZ = 16;

/**
 * Opens `/dev/net/tun` and attaches it to the tap interface `name` (created
 * when missing, which needs CAP_NET_ADMIN; an existing one must be owned by
 * this user or permit it). Returns the fd, owned by the caller.
 */
export function openTap(name: string): number {
  const operation = "open tap interface";
  const bytes = new TextEncoder().encode(name);
  if (bytes.length === 0 || bytes.length >= IFNAMSIZ || bytes.includes(0)) {
    throw new KvmError(operation, Errno.EINVAL, `tap name ${JSON.stringify(name)}: 1-15 bytes`);
  }
  const path = new TextEncoder().encode("/dev/net/tun\0");
  const fd = unwrap(native().kvm_open(path, O_RDWR | O_NONBLOCK), operation, () => "/dev/net/tun");
  // struct ifreq: ifr_name[16], then the union's short ifr_flags (40 bytes in all).
  const ifreq = new Uint8Array(40);
  ifreq.set(bytes, 0);
  new DataView(ifreq.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI, true);
  const r = native().kvm_ioctl_ptr(fd, TUNSETIFF, Deno.UnsafePointer.of(ifreq));
  if (r < 0) {
    native().kvm_close(fd);
    unwrap(r, operation, () => `TUNSETIFF ${name}`);
  }
  return fd;
}

/** A tap's fd as a port: non-blocking reads and writes of one frame each. */
export class TapPort implements PacketPort {
  #fd: number;

  /** Takes ownership of `fd` (from {@linkcode openTap}, non-blocking). */
  constructor(fd: number) {
    this.#fd = fd;
  }

  /** The fd, for polling. */
  get fd(): number {
    return this.#fd;
  }

  /** One frame, or 0 when none waits (or the port is closed). */
  receive(buffer: Uint8Array): number {
    if (this.#fd < 0) return 0;
    const n = native().kvm_read(this.#fd, buffer, buffer.length);
    return n > 0 ? n : 0; // -EAGAIN: nothing waits; other errors: the frame is lost
  }

  /** Sends a frame; a full tap queue (-EAGAIN) drops it, as a NIC would. */
  send(frame: Uint8Array): void {
    if (this.#fd >= 0) native().kvm_write(this.#fd, frame, frame.length);
  }

  /** Closes the fd. Idempotent. */
  close(): void {
    if (this.#fd >= 0) native().kvm_close(this.#fd);
    this.#fd = -1;
  }
}
