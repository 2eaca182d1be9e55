// Fuzz targets of the virtio layer (issue 16): the split-virtqueue parser,
// the virtio-mmio registers, the virtio-pci configuration and BAR, and each device (block, rng, net, console), all
// driven in-process through the fake driver of the unit tests over a plain
// guest RAM. The devices never throw for anything a driver does: a malformed
// queue or chain ends in DEVICE_NEEDS_RESET, a malformed request in an error
// status, so no error type is allowed here; anything thrown is a finding.

import { BlockBackend, blockFront } from "../../src/devices/virtio/block.ts";
import { MmioReg, Status, VIRTIO_F_VERSION_1 } from "../../src/devices/virtio/constants.ts";
import type { VirtioBackend } from "../../src/devices/virtio/device.ts";
import type { SplitQueue } from "../../src/devices/virtio/queue.ts";
import { RngBackend, rngFront } from "../../src/devices/virtio/rng.ts";
import {
  defaultMac,
  NET_HEADER_BYTES,
  NET_MAX_FRAME,
  NetBackend,
  netFront,
  type PacketPort,
} from "../../src/devices/virtio/net.ts";
import {
  CONSOLE_RING_BYTES,
  ConsoleBackend,
  consoleFront,
  ConsoleHost,
  createConsoleRings,
} from "../../src/devices/virtio/console.ts";
import {
  type Buf,
  FakeDriver,
  gather,
  iovecViews,
  RAM_BASE,
  RAM_SIZE,
  scatter,
} from "../unit/virtio_driver.ts";
import {
  type MsiMessage,
  PciConfigPorts,
  pciHostBridge,
  raiseMsix,
  VIRTIO_PCI_BAR_SIZE,
  VIRTIO_PCI_VENDOR,
  VirtioPciBar,
  VirtioPciTransport,
} from "../../src/devices/virtio/pci.ts";
import { VirtioMemory } from "../../src/devices/virtio/memory.ts";
import { VirtioRunner } from "../../src/devices/virtio/runner.ts";
import { createDeviceState } from "../../src/devices/virtio/state.ts";
import type { Prng } from "./prng.ts";
import type { FuzzTarget } from "./targets.ts";

function expect(condition: boolean, message: string): void {
  if (!condition) throw new Error(`invariant broken: ${message}`);
}

/** Pops every chain and returns it unwritten: the parser alone. */
class Sink implements VirtioBackend {
  popped = 0;
  process(_index: number, queue: SplitQueue): boolean {
    let any = false;
    while (queue.pop()) {
      const c = queue.chain;
      expect(c.count <= c.capacity, "chain count past its capacity");
      for (let i = 0; i < c.count; i++) {
        const b = c.buffer(i);
        expect(b.buffer === queueRam(), "a buffer outside the guest RAM's buffer");
        expect(b.length === c.lengths[i], "a buffer's view shorter than its descriptor");
      }
      queue.pushUsed(c.head, 0);
      this.popped++;
      any = true;
    }
    return any;
  }
  reset() {}
  close() {}
}

// Everything a driver lays out sits in the first WINDOW bytes, so a snapshot of them shows
// any write the device was not allowed to make.
const WINDOW = 0x10000;
const sink = new Sink();
let parserDriver: FakeDriver | undefined;
function queueRam(): ArrayBufferLike {
  return parserDriver!.ram.buffer;
}

const SIZES = [0, 1, 2, 3, 4, 8, 16, 32, 64, 65, 128, 256, 0x8000, 0xffffffff];

/** A guest address: mostly inside the window, sometimes at edges or anywhere. */
function address(rng: Prng, align: number): number {
  if (rng.chance(0.85)) return RAM_BASE + Math.floor(rng.below(WINDOW - 64) / align) * align;
  return rng.pick([
    () => 0,
    () => RAM_BASE - 16,
    () => RAM_BASE + RAM_SIZE - 16,
    () => RAM_BASE + RAM_SIZE,
    () => rng.u32(),
    () => Number(rng.interesting64() & 0x1f_ffff_ffff_ffffn),
  ])();
}

function randomDescriptors(rng: Prng, d: FakeDriver, table: number, count: number): void {
  if (table < RAM_BASE || table + 16 * count > RAM_BASE + WINDOW) return;
  for (let i = 0; i < count; i++) {
    const len = rng.chance(0.8) ? rng.below(4096) : rng.interesting32();
    const next = rng.chance(0.8) ? rng.below(Math.max(count, 1)) : rng.below(0x10000);
    let flags = rng.below(8);
    if (rng.chance(0.3)) flags &= ~4;
    d.setDesc(i, address(rng, 1), len, flags, next, table);
  }
}

const parserTarget: FuzzTarget = {
  name: "virtq",
  allowed: [],
  run(rng) {
    const d = parserDriver ??= new FakeDriver(rngFront(), sink);
    d.ram.fill(0, 0, WINDOW);
    d.desc = rng.chance(0.9) ? RAM_BASE : address(rng, rng.pick([1, 16]));
    d.avail = rng.chance(0.9) ? RAM_BASE + 0x4000 : address(rng, rng.pick([1, 2]));
    d.used = rng.chance(0.9) ? RAM_BASE + 0x5000 : address(rng, rng.pick([1, 4]));
    const size = rng.chance(0.7) ? rng.pick([1, 2, 4, 8, 16, 32, 64]) : rng.pick(SIZES);
    const features = rng.chance(0.5) ? d.deviceFeatures() : VIRTIO_F_VERSION_1;
    d.init({ size, features });
    const count = Math.min(size, 64);
    randomDescriptors(rng, d, d.desc, count);
    // A few indirect tables in the heap area the descriptors may point at.
    for (let t = 0; t < 3; t++) randomDescriptors(rng, d, RAM_BASE + 0x8000 + t * 0x400, 16);
    const availAt = d.avail - RAM_BASE;
    const inWindow = d.avail >= RAM_BASE && d.avail + 6 + 2 * count <= RAM_BASE + WINDOW;
    if (inWindow) {
      for (let i = 0; i < count; i++) {
        const head = rng.chance(0.9) ? rng.below(count) : rng.below(0x10000);
        d.view.setUint16(availAt + 4 + 2 * i, head, true);
      }
      d.view.setUint16(
        availAt + 2,
        rng.chance(0.8) ? rng.below(count + 1) : rng.below(0x10000),
        true,
      );
      // Flags (NO_INTERRUPT) and, with EVENT_IDX, used_event after the ring: any value.
      d.view.setUint16(availAt, rng.below(4), true);
      if (d.avail + 6 + 2 * size <= RAM_BASE + WINDOW) {
        d.view.setUint16(availAt + 4 + 2 * size, rng.below(0x10000), true);
      }
    }
    const before = d.ram.slice(0, WINDOW);
    const popped = sink.popped;
    d.kick();
    d.kick();
    const needsReset = (d.status & Status.DEVICE_NEEDS_RESET) !== 0;
    expect(needsReset || sink.popped - popped <= 0x10000, "more chains than the ring holds");
    // Only the used ring may have changed.
    const usedStart = d.used - RAM_BASE;
    const usedEnd = usedStart + 6 + 8 * size;
    for (let i = 0; i < WINDOW; i++) {
      if (d.ram[i] !== before[i] && (i < usedStart || i >= usedEnd)) {
        expect(
          false,
          `device wrote guest RAM at ${(RAM_BASE + i).toString(16)}, outside its used ring`,
        );
      }
    }
  },
};

const mmioTarget: FuzzTarget = {
  name: "virtio-mmio",
  allowed: [],
  run(rng) {
    const d = parserDriver ??= new FakeDriver(rngFront(), sink);
    d.ram.fill(0, 0, WINDOW);
    d.desc = RAM_BASE;
    d.avail = RAM_BASE + 0x4000;
    d.used = RAM_BASE + 0x5000;
    if (rng.chance(0.7)) d.init({ size: rng.pick([1, 2, 4, 8, 16]) });
    const steps = 1 + rng.below(40);
    const data = new Uint8Array(8);
    for (let s = 0; s < steps; s++) {
      const width = rng.pick([1, 2, 4, 4, 4, 8]);
      const offset = rng.chance(0.8) ? 4 * rng.below(0x50) : rng.below(0x1000);
      const view = data.subarray(0, width);
      if (rng.chance(0.5)) d.transport.read(offset, view);
      else {
        new DataView(data.buffer).setUint32(0, rng.interesting32(), true);
        d.transport.write(offset, view);
      }
    }
    d.transport.read(MmioReg.MAGIC, data.subarray(0, 4));
    expect(new DataView(data.buffer).getUint32(0, true) === 0x74726976, "magic changed");
  },
};

/** The virtio-pci target's machine: an entropy device's function behind the config ports. */
interface PciRig {
  ports: PciConfigPorts;
  transport: VirtioPciTransport;
  runner: VirtioRunner;
  /** Vectors the transport routed or fired; each must be one of the table's. */
  vectors: number[];
}
let pciRig: PciRig | undefined;

function pciSetup(): PciRig {
  if (pciRig) return pciRig;
  const front = rngFront();
  const state = createDeviceState(front.queueMax.length);
  const vectors: number[] = [];
  const ram = new Uint8Array(0x2_0000);
  const runner = new VirtioRunner(new VirtioMemory([{ gpa: RAM_BASE, bytes: ram }]), [{
    front,
    state,
    backend: new RngBackend(),
    interrupt: (cause, queues) => raiseMsix(state, cause, queues, (v) => vectors.push(v)),
  }]);
  const transport = new VirtioPciTransport(front, state, {
    notify: () => runner.service(),
    reset: () => runner.reset(0),
    route: (v: number, _m: MsiMessage) => vectors.push(v),
    fire: (v) => vectors.push(v),
  }, 0xd000_0000);
  const ports = new PciConfigPorts([pciHostBridge(), transport]);
  return pciRig = { ports, transport, runner, vectors };
}

// Guest-written configuration cycles and BAR accesses at any offset and width, the common
// configuration and the MSI-X table most often: nothing throws, the identity stays, and every
// vector the transport routes or fires is one of its table's.
const pciTarget: FuzzTarget = {
  name: "virtio-pci",
  allowed: [],
  run(rng) {
    const { ports, transport, runner, vectors } = pciSetup();
    const data = new Uint8Array(8);
    const dv = new DataView(data.buffer);
    const steps = 1 + rng.below(60);
    for (let s = 0; s < steps; s++) {
      const width = rng.pick([1, 2, 4, 4, 4, 8]);
      const view = data.subarray(0, width);
      dv.setUint32(0, rng.interesting32(), true);
      dv.setUint32(4, rng.interesting32(), true);
      const kind = rng.below(5);
      if (kind === 4) {
        // The PCI_CFG capability's window (at 0x90 of 00:01.0): a selection, then its data.
        const cfg = (register: number, value: Uint8Array, write: boolean) => {
          const a = new Uint8Array(4);
          new DataView(a.buffer).setUint32(0, (0x8000_0800 | register & 0xfc) >>> 0, true);
          ports.write(0, a);
          if (write) ports.write(4 + (register & 3), value);
          else ports.read(4 + (register & 3), value);
        };
        const word = new Uint8Array(4);
        const wv = new DataView(word.buffer);
        cfg(0x94, new Uint8Array([rng.chance(0.9) ? 0 : rng.below(256)]), true);
        wv.setUint32(0, rng.chance(0.7) ? rng.below(0x40) : rng.interesting32(), true);
        cfg(0x98, word, true);
        wv.setUint32(0, rng.pick([1, 2, 4, 4, 3, 0, 8]), true);
        cfg(0x9c, word, true);
        cfg(0xa0 + rng.below(4), view.subarray(0, Math.min(width, 4)), rng.chance(0.5));
      } else if (kind === 0) {
        // Mechanism #1: an address (mostly bus 0, devices 0-2), then the data window.
        const address = rng.chance(0.8)
          ? (0x8000_0000 | rng.below(3) << 11 | rng.below(256)) >>> 0
          : rng.interesting32() >>> 0;
        const a = new Uint8Array(4);
        new DataView(a.buffer).setUint32(0, address, true);
        ports.write(0, a);
        const at = 4 + rng.below(4);
        if (rng.chance(0.5)) ports.read(at, view);
        else ports.write(at, view);
      } else {
        const offset = kind === 1
          ? rng.below(0x40) // the common configuration
          : kind === 2
          ? VirtioPciBar.MSIX_TABLE + 4 * rng.below(10)
          : rng.below(VIRTIO_PCI_BAR_SIZE + 16);
        if (rng.chance(0.5)) transport.read(offset, view);
        else transport.write(offset, view);
      }
      if (rng.chance(0.1)) runner.service();
    }
    for (const v of vectors) expect(v >= 0 && v < transport.vectors, `vector ${v}`);
    vectors.length = 0;
    const id = new Uint8Array(4);
    transport.readConfig(0, id);
    expect(new DataView(id.buffer).getUint16(0, true) === VIRTIO_PCI_VENDOR, "vendor changed");
    // A reset ends the iteration: the next one starts from a fresh device.
    transport.write(VirtioPciBar.COMMON + 0x14, new Uint8Array(1));
  },
};

// One image for the block target, created on its first iteration; the target's close()
// closes the backend's file and removes the image (the next run makes them again).
let blockDriver: FakeDriver | undefined;
let blockBackend: BlockBackend | undefined;
let imagePath = "";
const IMAGE_SECTORS = 64;

function blockSetup(): FakeDriver {
  if (blockDriver) return blockDriver;
  imagePath = Deno.makeTempFileSync({ prefix: "virtio-fuzz-", suffix: ".img" });
  Deno.writeFileSync(imagePath, new Uint8Array(IMAGE_SECTORS * 512));
  const spec = { kind: "block" as const, path: imagePath };
  blockBackend = new BlockBackend(spec);
  blockDriver = new FakeDriver(blockFront(spec), blockBackend);
  return blockDriver;
}

function blockClose(): void {
  blockBackend?.close();
  blockBackend = undefined;
  blockDriver = undefined;
  if (imagePath) Deno.removeSync(imagePath);
  imagePath = "";
}

function randomRequest(rng: Prng): Buf[] {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, rng.chance(0.85) ? rng.pick([0, 1, 4, 8]) : rng.interesting32(), true);
  v.setBigUint64(
    8,
    rng.chance(0.8) ? BigInt(rng.below(IMAGE_SECTORS + 4)) : rng.interesting64(),
    true,
  );
  const bufs: Buf[] = [{ read: rng.chance(0.9) ? h : h.subarray(0, rng.below(16)) }];
  const n = rng.below(4);
  for (let i = 0; i < n; i++) {
    const len = rng.chance(0.7) ? 512 * (1 + rng.below(4)) : rng.below(2048);
    bufs.push(rng.chance(0.5) ? { write: len } : { read: new Uint8Array(len) });
  }
  if (rng.chance(0.9)) bufs.push({ write: rng.chance(0.9) ? 1 : 1 + rng.below(16) });
  return bufs;
}

const blockTarget: FuzzTarget = {
  name: "virtio-blk",
  allowed: [],
  close: blockClose,
  run(rng) {
    const d = blockSetup();
    d.ram.fill(0, 0, WINDOW);
    d.init({ size: rng.pick([2, 4, 8, 16]) });
    const requests = 1 + rng.below(4);
    const submitted: { addr: number; len: number }[] = [];
    let corrupted = false;
    // The fake driver does not recycle descriptors: at most the queue's size in flight.
    let free = d.size;
    for (let r = 0; r < requests; r++) {
      const bufs = randomRequest(rng);
      const indirect = rng.chance(0.3);
      const cost = indirect ? 1 : bufs.length;
      if (cost > free) break;
      free -= cost;
      const { addrs } = d.submit(bufs, { indirect });
      const last = bufs[bufs.length - 1];
      if ("write" in last) {
        const at = addrs[addrs.length - 1] + last.write - 1;
        d.bytes(at, 1)[0] = 0xee; // the device must overwrite it
        submitted.push({ addr: at, len: 0 });
      }
      if (rng.chance(0.1)) {
        // Corrupt one byte of the descriptor table.
        d.ram[rng.below(16 * d.size)] = rng.u32() & 0xff;
        corrupted = true;
      }
    }
    d.kick();
    expect(Deno.statSync(imagePath).size === IMAGE_SECTORS * 512, "the image grew or shrank");
    if (!corrupted && !(d.status & Status.DEVICE_NEEDS_RESET)) {
      for (const s of submitted) {
        const status = d.bytes(s.addr, 1)[0];
        expect(status <= 2, `status byte ${status}`);
      }
    }
  },
};

const rngTarget: FuzzTarget = {
  name: "virtio-rng",
  allowed: [],
  run(rng) {
    const d = rngDriver ??= new FakeDriver(rngFront(), new RngBackend());
    d.ram.fill(0, 0, WINDOW);
    d.init({ size: rng.pick([1, 2, 4, 8, 16, 64]) });
    const requests = 1 + rng.below(4);
    for (let r = 0; r < requests; r++) {
      const n = 1 + rng.below(4);
      const bufs: Buf[] = [];
      for (let i = 0; i < n; i++) {
        const len = rng.below(8192);
        bufs.push(rng.chance(0.8) ? { write: len } : { read: new Uint8Array(len) });
      }
      d.submit(bufs, { indirect: rng.chance(0.3) });
    }
    d.kick();
    const used = d.usedIdx;
    if (!(d.status & Status.DEVICE_NEEDS_RESET)) {
      for (let i = 0; i < used; i++) expect(d.usedElem(i).len <= 65536, "more than 64 KiB");
    }
  },
};
let rngDriver: FakeDriver | undefined;

/**
 * Frames in from a random source (random headers and lengths, some longer
 * than the buffers), frames out counted; the iovecs the device hands over
 * must lie in the fake guest RAM and bound a frame to its maximum.
 */
class RandomPort implements PacketPort {
  rng: Prng | undefined;
  sent = 0;
  /** The frames handed over, in order (kept by the mergeable target only). */
  frames: Uint8Array[] | null = null;
  receive(iov: Uint8Array, count: number): number {
    const rng = this.rng;
    // With mergeable buffers the device reads a frame into its own buffer of the largest
    // frame's size (one iovec, not guest RAM), then copies it; else straight into guest RAM.
    if (!(count === 1 && iovecViews(iov, 1)[0].length === NET_HEADER_BYTES + NET_MAX_FRAME)) {
      expectInRam(iov, count);
    }
    if (!rng || rng.chance(0.5)) return 0;
    const room = iovecViews(iov, count).reduce((n, v) => n + v.length, 0);
    const n = rng.chance(0.1) ? room + 1 + rng.below(100) : 1 + rng.below(Math.max(room, 1));
    const frame = new Uint8Array(n).fill(rng.u32() & 0xff);
    frame.set(rng.bytes(Math.min(n, NET_HEADER_BYTES)));
    // Mostly a header a driver accepts (no offload, or a partial checksum), so frames get through.
    if (this.frames && n >= 2 && rng.chance(0.9)) frame.set([rng.below(2), 0]);
    this.frames?.push(frame);
    return scatter(iov, count, frame);
  }
  send(iov: Uint8Array, count: number): void {
    expectInRam(iov, count);
    const length = gather(iov, count).length;
    expect(length <= NET_HEADER_BYTES + NET_MAX_FRAME, `sent a frame of ${length} bytes`);
    this.sent++;
  }
  setOffload(flags: number): void {
    expect((flags & ~7) === 0, `offload flags ${flags}`);
  }
  close(): void {}
}

/** Every iovec inside the fake guest RAM of the net target's driver. */
function expectInRam(iov: Uint8Array, count: number): void {
  const ram = netDriver!.ram;
  const start = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(ram)));
  const v = new DataView(iov.buffer, iov.byteOffset, iov.byteLength);
  for (let i = 0; i < count; i++) {
    const base = Number(v.getBigUint64(16 * i, true));
    const length = Number(v.getBigUint64(16 * i + 8, true));
    expect(base >= start && base + length <= start + ram.length, "an iovec outside guest RAM");
  }
}
const randomPort = new RandomPort();
let netDriver: FakeDriver | undefined;

/** Random chains on both queues of a two-queue device (receive 0, transmit 1). */
function randomTwoQueueTraffic(rng: Prng, d: FakeDriver, randomBytes = false): void {
  for (let r = 0; r < 1 + rng.below(6); r++) {
    const q = rng.below(2);
    d.useQueue(q);
    const bufs: Buf[] = [];
    for (let i = 0; i < 1 + rng.below(3); i++) {
      const len = rng.chance(0.8) ? rng.below(2048) : rng.below(70000);
      const read = randomBytes && rng.chance(0.5) ? rng.bytes(len) : new Uint8Array(len);
      bufs.push(rng.chance(q === 0 ? 0.8 : 0.2) ? { write: len } : { read });
    }
    d.submit(bufs, { indirect: rng.chance(0.3) });
    d.kick();
  }
  d.useQueue(0);
}

const netTarget: FuzzTarget = {
  name: "virtio-net",
  allowed: [],
  run(rng) {
    const d = netDriver ??= new FakeDriver(netFront(defaultMac(0)), new NetBackend(randomPort));
    randomPort.rng = rng;
    d.useQueue(1);
    d.useQueue(0);
    // The offloads offered, or none (random transmit headers then ask for what was not negotiated).
    const features = rng.chance(0.5) ? d.deviceFeatures() : VIRTIO_F_VERSION_1;
    d.init({ queues: 2, size: rng.pick([2, 4, 8, 16]), features });
    randomTwoQueueTraffic(rng, d, true);
    d.runner.service();
    randomPort.rng = undefined;
  },
};

/**
 * Mergeable receive buffers (and EVENT_IDX) on the receive queue alone: a
 * fresh driver posts chains of random buffers (some too short for the
 * header), frames of random sizes arrive (some larger than all buffers
 * posted: held, then completed by more buffers), and the used ring is
 * checked entry by entry against the frames handed over: every length
 * within its chain's buffers, `num_buffers` entries per frame, published
 * together, the frame's bytes in order.
 */
let mrgDriver: FakeDriver | undefined;
/** Frames checked, and those spread over several chains (for a look at the coverage). */
export const mrgStats = { frames: 0, spread: 0 };
const mrgPort = new RandomPort();

const netMrgTarget: FuzzTarget = {
  name: "virtio-net-mrg",
  allowed: [],
  run(rng) {
    const d = mrgDriver ??= new FakeDriver(netFront(defaultMac(0)), new NetBackend(mrgPort));
    mrgPort.rng = rng;
    mrgPort.frames = [];
    d.useQueue(1);
    d.useQueue(0);
    const offered = d.deviceFeatures();
    d.init({ queues: 2, size: 16, features: rng.chance(0.5) ? offered : offered & ~(1n << 29n) });
    const buffers = new Map<number, { at: number; length: number }[]>();
    let descriptors = 0;
    let checked = 0;
    const check = () => {
      const used = d.usedIdx;
      while (checked < used) {
        const first = d.usedElem(checked);
        const bufs = buffers.get(first.id);
        expect(bufs !== undefined, `used head ${first.id} never posted`);
        const room = bufs!.reduce((n, b) => n + b.length, 0);
        expect(first.len <= room, `used length ${first.len} past the chain's ${room}`);
        if (first.len === 0) { // handed back empty (too short for the header)
          expect(room < NET_HEADER_BYTES, `a chain of ${room} bytes handed back empty`);
          checked++;
          continue;
        }
        const bytes: number[] = [];
        const collect = (elem: { id: number; len: number }) => {
          let left = elem.len;
          for (const b of buffers.get(elem.id)!) {
            const n = Math.min(left, b.length);
            bytes.push(...d.bytes(b.at, n));
            left -= n;
          }
        };
        collect(first);
        expect(bytes.length >= NET_HEADER_BYTES, "a frame's first chain without its header");
        const count = bytes[10] | bytes[11] << 8;
        expect(
          count >= 1 && checked + count <= used,
          `num_buffers ${count}, ${used - checked} used`,
        );
        for (let k = 1; k < count; k++) {
          const e = d.usedElem(checked + k);
          const bufs = buffers.get(e.id);
          expect(bufs !== undefined, `used head ${e.id} never posted`);
          expect(e.len <= bufs!.reduce((n, b) => n + b.length, 0), "used length past the chain");
          collect(e);
        }
        const frame = mrgPort.frames!.shift();
        expect(frame !== undefined, "a frame nobody sent");
        // Frames the device dropped (malformed headers, too large) are skipped.
        let f = frame!;
        while (f.length !== bytes.length || f.some((x, i) => i >= 12 && x !== bytes[i])) {
          const next = mrgPort.frames!.shift();
          expect(next !== undefined, "received bytes that match no frame sent");
          f = next!;
        }
        checked += count;
        mrgStats.frames++;
        if (count > 1) mrgStats.spread++;
      }
    };
    for (let r = 0; r < 1 + rng.below(8); r++) {
      // A chain of 1-3 buffers, mostly one of a page or less, as Linux posts them.
      const lengths: number[] = [];
      for (let i = 0; i < 1 + (rng.chance(0.7) ? 0 : rng.below(3)); i++) {
        lengths.push(
          rng.chance(0.1) ? rng.below(16) : 1 + rng.below(rng.chance(0.8) ? 4096 : 20000),
        );
      }
      if (descriptors + lengths.length > 16) break; // a fresh table: heads never reused
      descriptors += lengths.length;
      const { head, addrs } = d.submit(lengths.map((write) => ({ write })));
      buffers.set(head, addrs.map((at, i) => ({ at, length: lengths[i] })));
      if (rng.chance(0.3)) d.usedEvent = rng.below(0x10000);
      if (rng.chance(0.7)) d.kick();
      else d.runner.service();
      check();
    }
    mrgPort.rng = undefined;
    mrgPort.frames = null;
  },
};

let consoleDriver: FakeDriver | undefined;
let consoleHost: ConsoleHost | undefined;

const consoleTarget: FuzzTarget = {
  name: "virtio-console",
  allowed: [],
  run(rng) {
    if (!consoleDriver) {
      const rings = createConsoleRings();
      // Never waits for room: a full ring ends the transmit pass (the fuzzer drains below).
      consoleDriver = new FakeDriver(
        consoleFront(),
        new ConsoleBackend(rings, () => {}, () => true),
      );
      consoleHost = new ConsoleHost(rings, () => {});
    }
    const d = consoleDriver;
    d.init({ queues: 2, size: rng.pick([2, 4, 8, 16]) });
    if (rng.chance(0.5)) consoleHost!.input(rng.bytes(rng.below(300)));
    randomTwoQueueTraffic(rng, d);
    let drained = 0;
    consoleHost!.drain((b) => (drained += b.length));
    expect(drained <= CONSOLE_RING_BYTES, "drained more than the ring holds");
  },
};

/** The virtio targets, appended to the project's list in targets.ts. */
export const VIRTIO_TARGETS: readonly FuzzTarget[] = [
  parserTarget,
  mmioTarget,
  pciTarget,
  blockTarget,
  rngTarget,
  netTarget,
  netMrgTarget,
  consoleTarget,
];
