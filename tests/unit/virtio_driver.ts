// A fake virtio-mmio driver for the unit tests and fuzzers: guest RAM is a
// plain Uint8Array, the driver's register accesses go through the
// transport's BusDevice methods as a vCPU's would, and the device side runs
// in-process (a VirtioRunner serves the queues when the driver kicks).

import { MmioReg, Status, VIRTIO_F_VERSION_1 } from "../../src/devices/virtio/constants.ts";
import type { VirtioBackend, VirtioFront } from "../../src/devices/virtio/device.ts";
import { VirtioMemory } from "../../src/devices/virtio/memory.ts";
import { VirtioMmioTransport } from "../../src/devices/virtio/mmio.ts";
import { VirtioRunner } from "../../src/devices/virtio/runner.ts";
import { createDeviceState } from "../../src/devices/virtio/state.ts";

/** Where the fake RAM starts in guest physical addresses. */
export const RAM_BASE = 0x10_0000;
/** Its size. */
export const RAM_SIZE = 0x10_0000;

/** One buffer of a chain: bytes the device reads, or a length it may write. */
export type Buf = { read: Uint8Array } | { write: number };

export class FakeDriver {
  readonly ram = new Uint8Array(RAM_SIZE);
  readonly view = new DataView(this.ram.buffer);
  readonly memory = new VirtioMemory([{ gpa: RAM_BASE, bytes: this.ram }]);
  readonly state: Int32Array;
  readonly transport: VirtioMmioTransport;
  readonly runner: VirtioRunner;
  interrupts = 0;
  errors: string[] = [];
  // Queue layout, in guest physical addresses.
  size = 0;
  desc = RAM_BASE;
  avail = RAM_BASE + 0x4000;
  used = RAM_BASE + 0x5000;
  #heap = RAM_BASE + 0x40000;
  #nextDesc = 0;
  #availIdx = 0;
  #reg = new Uint8Array(4);

  constructor(front: VirtioFront, backend: VirtioBackend) {
    this.state = createDeviceState(front.queueMax.length);
    this.runner = new VirtioRunner(this.memory, [{
      front,
      state: this.state,
      backend,
      interrupt: () => this.interrupts++,
      onError: (m) => this.errors.push(m),
    }]);
    this.transport = new VirtioMmioTransport(front, this.state, {
      notify: () => this.runner.service(),
      reset: () => this.runner.reset(0),
    });
  }

  read32(offset: number): number {
    this.transport.read(offset, this.#reg);
    return new DataView(this.#reg.buffer).getUint32(0, true);
  }

  write32(offset: number, value: number): void {
    new DataView(this.#reg.buffer).setUint32(0, value >>> 0, true);
    this.transport.write(offset, this.#reg);
  }

  /** The device's offered features. */
  deviceFeatures(): bigint {
    this.write32(MmioReg.DEVICE_FEATURES_SEL, 0);
    const low = this.read32(MmioReg.DEVICE_FEATURES);
    this.write32(MmioReg.DEVICE_FEATURES_SEL, 1);
    return BigInt(low) | BigInt(this.read32(MmioReg.DEVICE_FEATURES)) << 32n;
  }

  /** The Linux driver's sequence: negotiate `features` (default: all offered), set queue 0 up, DRIVER_OK. */
  init(options: { size?: number; features?: bigint; queues?: number } = {}): number {
    this.write32(MmioReg.STATUS, 0);
    // A fresh driver: every queue starts again at index 0 (the device's do after the reset).
    if (this.#current !== 0) this.useQueue(0);
    this.#queues.clear();
    this.#nextDesc = 0;
    this.#availIdx = 0;
    this.write32(MmioReg.STATUS, Status.ACKNOWLEDGE);
    this.write32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER);
    const features = options.features ?? this.deviceFeatures();
    this.write32(MmioReg.DRIVER_FEATURES_SEL, 0);
    this.write32(MmioReg.DRIVER_FEATURES, Number(features & 0xffffffffn));
    this.write32(MmioReg.DRIVER_FEATURES_SEL, 1);
    this.write32(MmioReg.DRIVER_FEATURES, Number(features >> 32n));
    const base = Status.ACKNOWLEDGE | Status.DRIVER;
    this.write32(MmioReg.STATUS, base | Status.FEATURES_OK);
    const status = this.read32(MmioReg.STATUS);
    if (!(status & Status.FEATURES_OK)) return status;
    this.size = options.size ?? Math.min(16, this.read32(MmioReg.QUEUE_NUM_MAX));
    this.setupQueue(0, this.size);
    for (let q = 1; q < (options.queues ?? 1); q++) {
      this.useQueue(q);
      this.setupQueue(q, this.size);
    }
    this.useQueue(0);
    this.write32(MmioReg.STATUS, base | Status.FEATURES_OK | Status.DRIVER_OK);
    return this.read32(MmioReg.STATUS);
  }

  #queues = new Map<
    number,
    { desc: number; avail: number; used: number; next: number; idx: number }
  >();
  #current = 0;

  /**
   * Makes queue `q` the one submit/offer/kick/used* act on; a queue first
   * used gets its own areas (0x10000 bytes further per queue index).
   */
  useQueue(q: number): void {
    this.#queues.set(this.#current, {
      desc: this.desc,
      avail: this.avail,
      used: this.used,
      next: this.#nextDesc,
      idx: this.#availIdx,
    });
    const saved = this.#queues.get(q) ?? {
      desc: RAM_BASE + 0x10000 * q,
      avail: RAM_BASE + 0x10000 * q + 0x4000,
      used: RAM_BASE + 0x10000 * q + 0x5000,
      next: 0,
      idx: 0,
    };
    this.desc = saved.desc;
    this.avail = saved.avail;
    this.used = saved.used;
    this.#nextDesc = saved.next;
    this.#availIdx = saved.idx;
    this.#current = q;
  }

  setupQueue(index: number, size: number): void {
    // Zeroed indices, as a driver's freshly allocated rings (where they are in RAM).
    for (const at of [this.avail + 2, this.used + 2]) {
      if (at >= RAM_BASE && at + 2 <= RAM_BASE + RAM_SIZE) {
        this.view.setUint16(at - RAM_BASE, 0, true);
      }
    }
    this.write32(MmioReg.QUEUE_SEL, index);
    this.write32(MmioReg.QUEUE_NUM, size);
    this.write32(MmioReg.QUEUE_DESC_LOW, this.desc);
    this.write32(MmioReg.QUEUE_DESC_HIGH, 0);
    this.write32(MmioReg.QUEUE_DRIVER_LOW, this.avail);
    this.write32(MmioReg.QUEUE_DRIVER_HIGH, 0);
    this.write32(MmioReg.QUEUE_DEVICE_LOW, this.used);
    this.write32(MmioReg.QUEUE_DEVICE_HIGH, 0);
    this.write32(MmioReg.QUEUE_READY, 1);
  }

  /** Bytes from the bump heap (16-byte aligned). */
  alloc(length: number): number {
    const size = Math.ceil(Math.max(length, 1) / 16) * 16;
    if (this.#heap + size > RAM_BASE + RAM_SIZE) this.#heap = RAM_BASE + 0x40000; // wrap the test heap
    const at = this.#heap;
    this.#heap += size;
    return at;
  }

  bytes(gpa: number, length: number): Uint8Array {
    return this.ram.subarray(gpa - RAM_BASE, gpa - RAM_BASE + length);
  }

  /** Writes a raw descriptor into the table at `index` (the table at `table`, default the queue's). */
  setDesc(
    index: number,
    addr: number,
    len: number,
    flags: number,
    next: number,
    table = this.desc,
  ) {
    const at = table - RAM_BASE + 16 * index;
    this.view.setBigUint64(at, BigInt(addr), true);
    this.view.setUint32(at + 8, len >>> 0, true);
    this.view.setUint16(at + 12, flags, true);
    this.view.setUint16(at + 14, next, true);
  }

  /** Puts `head` on the available ring. */
  offer(head: number): void {
    const at = this.avail - RAM_BASE;
    this.view.setUint16(at + 4 + 2 * (this.#availIdx % this.size), head, true);
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    this.view.setUint16(at + 2, this.#availIdx, true);
  }

  /** Sets the available index directly (for malformed-ring tests). */
  setAvailIdx(value: number): void {
    this.#availIdx = value & 0xffff;
    this.view.setUint16(this.avail - RAM_BASE + 2, this.#availIdx, true);
  }

  /**
   * Adds a chain of `bufs` (direct descriptors, or one indirect table) and
   * offers it; returns its head and the guest addresses of its buffers.
   */
  submit(
    bufs: readonly Buf[],
    options: { indirect?: boolean } = {},
  ): { head: number; addrs: number[] } {
    const addrs = bufs.map((b) => {
      const length = "read" in b ? b.read.length : b.write;
      const at = this.alloc(length);
      if ("read" in b) this.bytes(at, length).set(b.read);
      return at;
    });
    const place = (table: number, first: number, wrap: number) => {
      bufs.forEach((b, i) => {
        const length = "read" in b ? b.read.length : b.write;
        const last = i === bufs.length - 1;
        const flags = ("write" in b ? 2 : 0) | (last ? 0 : 1);
        this.setDesc((first + i) % wrap, addrs[i], length, flags, (first + i + 1) % wrap, table);
      });
    };
    const head = this.#nextDesc;
    if (options.indirect) {
      const table = this.alloc(16 * bufs.length);
      place(table, 0, bufs.length);
      this.setDesc(head, table, 16 * bufs.length, 4, 0);
      this.#nextDesc = (head + 1) % this.size;
    } else {
      place(this.desc, head, this.size);
      this.#nextDesc = (head + bufs.length) % this.size;
    }
    this.offer(head);
    return { head, addrs };
  }

  kick(): void {
    this.write32(MmioReg.QUEUE_NOTIFY, this.#current);
  }

  get usedIdx(): number {
    return this.view.getUint16(this.used - RAM_BASE + 2, true);
  }

  /** The used element `i` (id, len). */
  usedElem(i: number): { id: number; len: number } {
    const at = this.used - RAM_BASE + 4 + 8 * (i % this.size);
    return { id: this.view.getUint32(at, true), len: this.view.getUint32(at + 4, true) };
  }

  get status(): number {
    return this.read32(MmioReg.STATUS);
  }

  /** VIRTIO_F_EVENT_IDX: the driver's `used_event` (after the available ring). */
  set usedEvent(value: number) {
    this.view.setUint16(this.avail - RAM_BASE + 4 + 2 * this.size, value, true);
  }

  /** VIRTIO_F_EVENT_IDX: the device's `avail_event` (after the used ring). */
  get availEvent(): number {
    return this.view.getUint16(this.used - RAM_BASE + 4 + 8 * this.size, true);
  }

  /** Sets the available ring's flags (bit 0: no interrupts, without EVENT_IDX). */
  set availFlags(value: number) {
    this.view.setUint16(this.avail - RAM_BASE, value, true);
  }
}

export { VIRTIO_F_VERSION_1 };

/**
 * The host memory an iovec array points at (16 bytes per entry: base,
 * length), as a device hands it to a packet port: each entry a view, no copy.
 */
export function iovecViews(iov: Uint8Array, count: number): Uint8Array[] {
  const v = new DataView(iov.buffer, iov.byteOffset, iov.byteLength);
  const views: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const base = v.getBigUint64(16 * i, true);
    const length = Number(v.getBigUint64(16 * i + 8, true));
    const p = Deno.UnsafePointer.create(base);
    views.push(
      p && length > 0
        ? new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(p, length))
        : new Uint8Array(0),
    );
  }
  return views;
}

/** Copies `data` across the iovecs as far as they reach; returns `data.length` (as a tap's read does). */
export function scatter(iov: Uint8Array, count: number, data: Uint8Array): number {
  let done = 0;
  for (const view of iovecViews(iov, count)) {
    const n = Math.min(view.length, data.length - done);
    view.set(data.subarray(done, done + n));
    done += n;
  }
  return data.length;
}

/** The bytes of the iovecs, concatenated. */
export function gather(iov: Uint8Array, count: number): Uint8Array {
  const views = iovecViews(iov, count);
  const out = new Uint8Array(views.reduce((n, v) => n + v.length, 0));
  let at = 0;
  for (const view of views) {
    out.set(view, at);
    at += view.length;
  }
  return out;
}
