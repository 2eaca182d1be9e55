/**
 * A Linux tap interface (`/dev/net/tun`, `TUNSETIFF` with `IFF_TAP |
 * IFF_NO_PI | IFF_VNET_HDR`: whole Ethernet frames behind a virtio-net
 * header, no packet-information prefix) as a {@linkcode PacketPort} for
 * virtio-net. The header is 12 bytes (`TUNSETVNETHDRSZ`), the virtio 1.x
 * layout, so the device hands it through unchanged; `TUNSETOFFLOAD` tells
 * the tap which offloads the driver takes. Non-blocking: the device thread
 * polls it with its eventfd (`kvm_poll` in the shim); a frame is one
 * `readv`/`writev` over guest RAM.
 *
 * @module
 */

import { Errno, KvmError, unwrap } from "../../errors.ts";
import { native } from "../../ffi/library.ts";
import { O_NONBLOCK, O_RDWR } from "../../kvm/constants.ts";
import { NET_HEADER_BYTES, type PacketPort } from "./net.ts";

/** `TUNSETIFF`: `_IOW('T', 202, int)`. */
const TUNSETIFF = 0x400454ca;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
/** `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`, the flags by value. */
const TUNSETOFFLOAD = 0x400454d0;
/** `TUNSETVNETHDRSZ`: `_IOW('T', 216, int)`, a pointer to the size. */
const TUNSETVNETHDRSZ = 0x400454d8;
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
  new DataView(ifreq.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
  let r = native().kvm_ioctl_ptr(fd, TUNSETIFF, Deno.UnsafePointer.of(ifreq));
  let what = `TUNSETIFF ${name}`;
  if (r >= 0) {
    // virtio 1.x's header has num_buffers: 12 bytes, not the default 10.
    const size = new Int32Array([NET_HEADER_BYTES]);
    r = native().kvm_ioctl_ptr(fd, TUNSETVNETHDRSZ, Deno.UnsafePointer.of(size));
    what = `TUNSETVNETHDRSZ ${NET_HEADER_BYTES}`;
  }
  if (r >= 0) {
    // No offloads until a driver accepts them: whole, checksummed frames.
    r = native().kvm_ioctl_val(fd, TUNSETOFFLOAD, 0n);
    what = "TUNSETOFFLOAD 0";
  }
  if (r < 0) {
    native().kvm_close(fd);
    unwrap(r, operation, () => what);
  }
  return fd;
}

/**
 * A tap's fd (from {@linkcode openTap}) as a port: one non-blocking `readv`
 * or `writev` per frame, its vnet header first.
 */
export class TapPort implements PacketPort {
  #fd: number;

  /** Takes ownership of `fd` (from {@linkcode openTap}, non-blocking, with the 12-byte vnet header). */
  constructor(fd: number) {
    this.#fd = fd;
  }

  /** The fd, for polling. */
  get fd(): number {
    return this.#fd;
  }

  /** One frame (its whole length, even when cut short), or 0 when none waits (or the port is closed). */
  receive(iov: Uint8Array, count: number): number {
    if (this.#fd < 0) return 0;
    const n = native().kvm_readv(this.#fd, iov, count);
    return n > 0 ? n : 0; // -EAGAIN: nothing waits; other errors: the frame is lost
  }

  /** Sends a frame; one the tap refuses (a full queue, a header it finds invalid) is dropped, as a NIC would. */
  send(iov: Uint8Array, count: number): void {
    if (this.#fd >= 0) native().kvm_writev(this.#fd, iov, count);
  }

  /**
   * `TUNSETOFFLOAD`: the `TUN_F_*` bits the reader takes. A refusal (a kernel
   * without them) leaves the tap handing over whole frames, which every driver takes.
   */
  setOffload(flags: number): void {
    if (this.#fd >= 0) native().kvm_ioctl_val(this.#fd, TUNSETOFFLOAD, BigInt(flags));
  }

  /** Closes the fd. Idempotent. */
  close(): void {
    if (this.#fd >= 0) native().kvm_close(this.#fd);
    this.#fd = -1;
  }
}
