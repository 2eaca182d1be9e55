// virtio-net on a real tap interface and real KVM: the device's transmit
// queue sends an ARP request for the host's address out of the tap; the host
// kernel answers, the device thread (woken by poll on the tap) puts the
// reply in a receive buffer, behind its virtio header. The queue setup is
// done from here through the transport, as a driver's MMIO exits would; the
// guest only kicks (one store to QueueNotify, taken by the ioeventfd).
// Needs root (a tap is created) and the `ip` command: skips without them.

import { ok, strictEqual } from "node:assert/strict";
import { MmioReg, Status } from "../../src/devices/virtio/constants.ts";
import { defaultMac, NET_HEADER_BYTES } from "../../src/devices/virtio/net.ts";
import { VirtioRuntime } from "../../src/devices/virtio/runtime.ts";
import { openTap } from "../../src/devices/virtio/tap.ts";
import { featureTest, lacksCap } from "./kvm_features.ts";
import { guest } from "./vm_guest.ts";

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
  [0x26, 0x66, 0xa3, 0x50, 0x00], // mov [es:0x50], eax        ; QueueNotify (ioeventfd)
  [0xe6, 0x10],                   // out 0x10, al              ; the guest's only exit
  [0xf4],                         // hlt
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

featureTest(
  "virtio-net: an ARP request leaves through the tap, the host's reply arrives in a receive buffer",
  lacksCap("IOEVENTFD") ?? lacksCap("IRQFD") ?? lacksCap("IRQCHIP") ?? tapSupport(),
  async () => {
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
      // The driver: VERSION_1 only, both queues of 8, DRIVER_OK.
      w32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER);
      w32(MmioReg.DRIVER_FEATURES_SEL, 1);
      w32(MmioReg.DRIVER_FEATURES, 1);
      w32(MmioReg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
      for (const [q, area] of [[0, RX], [1, TX]] as const) {
        w32(MmioReg.QUEUE_SEL, q);
        w32(MmioReg.QUEUE_NUM, 8);
        w32(MmioReg.QUEUE_DESC_LOW, area.desc);
        w32(MmioReg.QUEUE_DRIVER_LOW, area.avail);
        w32(MmioReg.QUEUE_DEVICE_LOW, area.used);
        w32(MmioReg.QUEUE_READY, 1);
      }
      // Eight 2 KiB receive buffers, posted before DRIVER_OK.
      for (let i = 0; i < 8; i++) {
        desc(RX.desc, i, RX_BUFFERS + 2048 * i, 2048, 2);
        ram.setUint16(RX.avail + 4 + 2 * i, i, true);
      }
      ram.setUint16(RX.avail + 2, 8, true);
      w32(
        MmioReg.STATUS,
        Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK,
      );
      // The frame: virtio header, then Ethernet broadcast + ARP "who has HOST_IP, tell GUEST_IP".
      const frame = [
        ...new Array(NET_HEADER_BYTES).fill(0),
        ...[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ...mac,
        0x08,
        0x06,
        0,
        1,
        0x08,
        0x00,
        6,
        4,
        0,
        1,
        ...mac,
        ...GUEST_IP,
        0,
        0,
        0,
        0,
        0,
        0,
        ...HOST_IP,
      ];
      slot.bytes.set(frame, TX_FRAME);
      desc(TX.desc, 0, TX_FRAME, frame.length, 0);
      ram.setUint16(TX.avail + 4, 0, true);
      ram.setUint16(TX.avail + 2, 1, true);

      strictEqual(vcpu.run().reason, "io", "the kick did not exit: the next exit is the OUT");
      await until(
        () => ram.getUint16(TX.used + 2, true) === 1,
        "the transmit buffer back",
        () => `status ${t.state[0]}, device thread: ${runtime.errors.join("; ") || "no error"}`,
      );
      // The host may send other frames first (IPv6 neighbour discovery): look for the reply.
      let reply = -1;
      await until(() => {
        const n = ram.getUint16(RX.used + 2, true);
        for (let i = 0; i < n && reply < 0; i++) {
          const id = ram.getUint32(RX.used + 4 + 8 * i, true);
          const at = RX_BUFFERS + 2048 * id + NET_HEADER_BYTES;
          const isArpReply = ram.getUint16(at + 12) === 0x0806 && ram.getUint16(at + 20) === 2;
          if (isArpReply) reply = at;
        }
        return reply >= 0;
      }, "the host's ARP reply");
      const b = slot.bytes;
      ok(mac.every((x, i) => b[reply + i] === x), "addressed to the card's MAC");
      ok(HOST_IP.every((x, i) => b[reply + 28 + i] === x), "the sender is the host's address");
      strictEqual(b[reply - NET_HEADER_BYTES + 10], 1, "num_buffers 1");
      strictEqual(runtime.errors.length, 0);
    } finally {
      runtime.stop();
    }
  },
);
