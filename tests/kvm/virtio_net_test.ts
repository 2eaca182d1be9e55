// virtio-net on a real tap interface and real KVM: the device's transmit
// queue sends a frame out of the tap; the host kernel answers, the device
// thread (woken by poll on the tap) puts the reply in a receive buffer,
// behind its virtio header. First an ARP request with no offloads; then,
// with the checksum offload negotiated, an ICMP echo request whose checksum
// the guest left to the host (the virtio header's NEEDS_CSUM, passed through
// to the tap's vnet header): the host only answers it if the header got
// there. The queue setup is done from here through the transport, as a
// driver's MMIO exits would; the guest only kicks (one store to QueueNotify,
// taken by the ioeventfd). Needs root (a tap is created) and the `ip`
// command: skips without them.

import { ok, strictEqual } from "node:assert/strict";
import type { MemorySlot } from "../../mod.ts";
import { MmioReg, Status } from "../../src/devices/virtio/constants.ts";
import { defaultMac, NET_HEADER_BYTES } from "../../src/devices/virtio/net.ts";
import { VirtioRuntime } from "../../src/devices/virtio/runtime.ts";
import { openTap } from "../../src/devices/virtio/tap.ts";
import { featureTest, lacksCap } from "./kvm_features.ts";
import { guest, jmp } from "./vm_guest.ts";

const WINDOW = 0xd0000;
const RX = { desc: 0x20000, avail: 0x21000, used: 0x22000 };
const TX = { desc: 0x28000, avail: 0x29000, used: 0x2a000 };
const RX_BUFFERS = 0x30000; // 8 x 2 KiB
const TX_FRAME = 0x38000;
const HOST_IP = [10, 203, 0, 1];
const GUEST_IP = [10, 203, 0, 2];

// deno-fmt-ignore
const KICK_TX = [
  [0xb8, 0x00, 0xd0],             // mov ax, 0xd000
  [0x8e, 0xc0],                   // mov es, ax                ; ES base = the device window
  [0x66, 0xb8, 1, 0, 0, 0],       // mov eax, 1                ; the transmit queue
  "kick",
  [0x26, 0x66, 0xa3, 0x50, 0x00], // mov [es:0x50], eax        ; QueueNotify (ioeventfd)
  [0xe6, 0x10],                   // out 0x10, al              ; the guest's only exit: one kick per run
  jmp("kick"),                    // jmp kick                  ; the next run kicks again
];

function tapSupport(): string | undefined {
  if (Deno.uid() !== 0) return "creating a tap interface needs root";
  try {
    Deno.statSync("/dev/net/tun");
    new Deno.Command("ip", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync();
  } catch {
    return "no /dev/net/tun or no ip command";
  }
  return undefined;
}

async function until(condition: () => boolean, what: string, why?: () => string): Promise<void> {
  const deadline = performance.now() + 90_000; // the Worker loads (and is type-checked under deno test) first
  while (!condition()) {
    if (performance.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${why ? ` (${why()})` : ""}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

function ip(...args: string[]): void {
  const r = new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).outputSync();
  if (!r.success) throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
}

/** VIRTIO_F_VERSION_1, and VIRTIO_NET_F_CSUM with VIRTIO_NET_F_GUEST_CSUM (bits 0 and 1). */
const VERSION_1_HIGH = 1;
const CSUM_LOW = 0b11;

/**
 * A card on a fresh tap with both queues of 8 set up by `features` (low and
 * high words) and eight receive buffers of `rxBytes` (default 2 KiB, one after
 * the other in RAM); `send` puts `frame` on the
 * transmit queue, the guest kicks, and the call returns once the device gave
 * the buffer back; `reply` waits for a received frame `match` accepts and
 * returns its offset in RAM (after the virtio header).
 */
async function withCard(
  featuresLow: number,
  body: (card: {
    name: string;
    mac: Uint8Array;
    slot: MemorySlot;
    send(frame: number[]): Promise<void>;
    reply(what: string, match: (at: number, ram: DataView) => boolean): Promise<number>;
    errors(): string[];
  }) => Promise<void>,
  rxBytes = 2048,
): Promise<void> {
  const name = `dkvm${Deno.pid % 100000}`;
  const mac = defaultMac(0);
  const fd = openTap(name); // created here; gone when the fd closes
  using g = guest(KICK_TX, { irqchip: true, ramSize: 0x40000 });
  const { vm, vcpu } = g;
  const slot = vm.memorySlots.get(0)!;
  const runtime = VirtioRuntime.start(
    vm,
    [{ gpa: 0, hostAddress: slot.userspaceAddr, size: slot.memorySize }],
    [{ spec: { kind: "net", fd, mac }, address: WINDOW, gsi: 16 }],
  );
  try {
    // No IPv6 on the tap: its neighbour discovery would take receive buffers.
    try {
      Deno.writeTextFileSync(`/proc/sys/net/ipv6/conf/${name}/disable_ipv6`, "1");
    } catch {
      // no IPv6 in this kernel: nothing to turn off
    }
    ip("addr", "add", `${HOST_IP.join(".")}/24`, "dev", name);
    ip("link", "set", name, "up");
    const t = runtime.devices[0].transport;
    const reg = new Uint8Array(4);
    const w32 = (offset: number, value: number) => {
      new DataView(reg.buffer).setUint32(0, value, true);
      t.write(offset, reg);
    };
    const ram = new DataView(slot.bytes.buffer, slot.bytes.byteOffset, slot.bytes.byteLength);
    const desc = (base: number, i: number, addr: number, len: number, flags: number) => {
      ram.setBigUint64(base + 16 * i, BigInt(addr), true);
      ram.setUint32(base + 16 * i + 8, len, true);
      ram.setUint16(base + 16 * i + 12, flags, true);
      ram.setUint16(base + 16 * i + 14, 0, true);
    };
    // The driver: the features, both queues of 8, DRIVER_OK.
    w32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER);
    w32(MmioReg.DRIVER_FEATURES_SEL, 0);
    w32(MmioReg.DRIVER_FEATURES, featuresLow);
    w32(MmioReg.DRIVER_FEATURES_SEL, 1);
    w32(MmioReg.DRIVER_FEATURES, VERSION_1_HIGH);
    w32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
    strictEqual(t.state[0] & Status.FEATURES_OK, Status.FEATURES_OK, "features accepted");
    for (const [q, area] of [[0, RX], [1, TX]] as const) {
      w32(MmioReg.QUEUE_SEL, q);
      w32(MmioReg.QUEUE_NUM, 8);
      w32(MmioReg.QUEUE_DESC_LOW, area.desc);
      w32(MmioReg.QUEUE_DRIVER_LOW, area.avail);
      w32(MmioReg.QUEUE_DEVICE_LOW, area.used);
      w32(MmioReg.QUEUE_READY, 1);
    }
    // Eight receive buffers, posted before DRIVER_OK.
    for (let i = 0; i < 8; i++) {
      desc(RX.desc, i, RX_BUFFERS + rxBytes * i, rxBytes, 2);
      ram.setUint16(RX.avail + 4 + 2 * i, i, true);
    }
    ram.setUint16(RX.avail + 2, 8, true);
    w32(
      MmioReg.STATUS,
      Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK,
    );
    let sent = 0;
    await body({
      name,
      mac,
      slot,
      async send(frame) {
        // Frame i in descriptor i, 2 KiB apart; each run of the guest kicks once.
        const i = sent++;
        slot.bytes.set(frame, TX_FRAME + 2048 * i);
        desc(TX.desc, i, TX_FRAME + 2048 * i, frame.length, 0);
        ram.setUint16(TX.avail + 4 + 2 * i, i, true);
        ram.setUint16(TX.avail + 2, i + 1, true);
        strictEqual(vcpu.run().reason, "io", "the kick did not exit: the next exit is the OUT");
        await until(
          () => ram.getUint16(TX.used + 2, true) === i + 1,
          "the transmit buffer back",
          () => `status ${t.state[0]}, device thread: ${runtime.errors.join("; ") || "no error"}`,
        );
      },
      async reply(what, match) {
        // The host may send other frames first (IPv6 neighbour discovery): look for the one.
        let found = -1;
        await until(() => {
          const n = ram.getUint16(RX.used + 2, true);
          for (let i = 0; i < n && found < 0; i++) {
            const id = ram.getUint32(RX.used + 4 + 8 * i, true);
            const at = RX_BUFFERS + rxBytes * id + NET_HEADER_BYTES;
            if (match(at, ram)) found = at;
          }
          return found >= 0;
        }, what);
        return found;
      },
      errors: () => runtime.errors,
    });
  } finally {
    runtime.stop();
  }
}

/** A virtio header (no offloads), then Ethernet broadcast + ARP "who has HOST_IP, tell GUEST_IP". */
function arpRequest(mac: Uint8Array): number[] {
  return [
    ...new Array(NET_HEADER_BYTES).fill(0),
    ...[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ...mac,
    ...[0x08, 0x06], // ARP
    ...[0, 1, 0x08, 0x00, 6, 4, 0, 1], // Ethernet/IPv4, request
    ...mac,
    ...GUEST_IP,
    ...[0, 0, 0, 0, 0, 0],
    ...HOST_IP,
  ];
}

/** An ARP reply at `at` (after the virtio header). */
const isArpReply = (at: number, ram: DataView) =>
  ram.getUint16(at + 12) === 0x0806 && ram.getUint16(at + 20) === 2;

const NO_TAP = lacksCap("IOEVENTFD") ?? lacksCap("IRQCHIP") ?? lacksCap("IRQFD") ?? tapSupport();

featureTest(
  "virtio-net: an ARP request leaves through the tap, the host's reply arrives in a receive buffer",
  NO_TAP,
  () =>
    withCard(0, async ({ mac, slot, send, reply, errors }) => {
      await send(arpRequest(mac));
      const at = await reply("the host's ARP reply", isArpReply);
      const b = slot.bytes;
      ok(mac.every((x, i) => b[at + i] === x), "addressed to the card's MAC");
      ok(HOST_IP.every((x, i) => b[at + 28 + i] === x), "the sender is the host's address");
      strictEqual(b[at - NET_HEADER_BYTES + 10], 1, "num_buffers 1");
      strictEqual(errors().length, 0);
    }),
);

/** The Internet checksum of `bytes` (RFC 1071). */
function inetChecksum(bytes: number[]): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) sum += (bytes[i] << 8) | (bytes[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

featureTest(
  "virtio-net: with the checksum offload, an ICMP echo whose checksum the guest left to the host (NEEDS_CSUM) is answered",
  NO_TAP,
  () =>
    withCard(CSUM_LOW, async ({ name, mac, slot, send, reply, errors }) => {
      // The ARP request first: answering it, the host learns the guest's MAC and
      // later replies to the echo without asking (busybox's ip cannot add a neighbour).
      await send(arpRequest(mac));
      await reply("the host's ARP reply", isArpReply);
      await send(echoRequest(name, mac, 8));
      const at = await reply("the host's echo reply", isEchoReply);
      const b = slot.bytes;
      ok(HOST_IP.every((x, i) => b[at + 26 + i] === x), "from the host's address");
      strictEqual(b[at - NET_HEADER_BYTES + 10], 1, "num_buffers 1");
      strictEqual(errors().length, 0);
    }),
);

/**
 * A virtio header asking the host for the ICMP checksum (NEEDS_CSUM), then an
 * ICMP echo request with `payload` bytes of 0x5a from the guest to the host.
 */
function echoRequest(name: string, mac: Uint8Array, payload: number): number[] {
  const tapMac = Deno.readTextFileSync(`/sys/class/net/${name}/address`).trim().split(":")
    .map((x) => parseInt(x, 16));
  const icmp = [8, 0, 0, 0, 0x12, 0x34, 0, 1, ...new Array(payload).fill(0x5a)]; // checksum 0: the host's
  const length = 20 + icmp.length;
  const ipHeader = [
    0x45,
    0,
    length >> 8,
    length & 0xff,
    0,
    0,
    0x40,
    0,
    64,
    1,
    0,
    0,
    ...GUEST_IP,
    ...HOST_IP,
  ];
  const sum = inetChecksum(ipHeader);
  ipHeader[10] = sum >> 8;
  ipHeader[11] = sum & 0xff;
  // virtio_net_hdr: NEEDS_CSUM, no GSO, csum_start 34 (Ethernet 14 + IPv4 20), csum_offset 2.
  const vnet = [1, 0, 0, 0, 0, 0, 34, 0, 2, 0, 0, 0];
  return [...vnet, ...tapMac, ...mac, 0x08, 0x00, ...ipHeader, ...icmp];
}

/** An ICMP echo reply to {@linkcode echoRequest} at `at` (after the virtio header). */
const isEchoReply = (at: number, ram: DataView) =>
  ram.getUint16(at + 12) === 0x0800 && ram.getUint8(at + 23) === 1 &&
  ram.getUint8(at + 34) === 0 && ram.getUint16(at + 38) === 0x1234;

/** VIRTIO_NET_F_MRG_RXBUF (bit 15) and VIRTIO_F_EVENT_IDX (bit 29). */
const MRG_EVENT_IDX_LOW = (1 << 15) | (1 << 29);

featureTest(
  "virtio-net: with mergeable receive buffers and EVENT_IDX, the host's echo reply spreads over three 256-byte buffers",
  NO_TAP,
  () =>
    withCard(CSUM_LOW | MRG_EVENT_IDX_LOW, async ({ name, mac, slot, send, reply, errors }) => {
      await send(arpRequest(mac));
      await reply("the host's ARP reply", isArpReply);
      // 12 + 14 + 20 + 8 + 600 = 654 bytes: 256 + 256 + 142, in buffers next to each other.
      await send(echoRequest(name, mac, 600));
      const at = await reply("the host's echo reply", isEchoReply);
      const b = slot.bytes;
      strictEqual(
        b[at - NET_HEADER_BYTES + 10] | b[at - NET_HEADER_BYTES + 11] << 8,
        3,
        "num_buffers 3",
      );
      ok(HOST_IP.every((x, i) => b[at + 26 + i] === x), "from the host's address");
      const payload = b.subarray(at + 42, at + 42 + 600);
      ok(payload.every((x) => x === 0x5a), "the payload whole across the three buffers");
      strictEqual(errors().length, 0);
    }, 256),
);
