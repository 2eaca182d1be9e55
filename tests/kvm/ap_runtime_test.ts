// The machines' application processors on the one vCPU runtime (ApWorkers,
// src/boot/ap_runtime.ts): an AP's exits reach the machine's handlers through
// the mailbox, served by polling from the bootstrap thread; how a run ends
// unasked reaches them too (Call.END); a worker that cannot start rejects
// waitReady with EIO saying why; a stuck AP is reported and its memory kept
// (in a child process: the failure it guards against is a SIGSEGV).

import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { Kvm, KvmError, setupRealMode, type Vcpu } from "../../mod.ts";
import { type ApHandlers, ApWorkers } from "../../src/boot/ap_runtime.ts";
import { VmLife } from "../../src/kvm/lifetime.ts";

const ENTRY = 0x1000;
const RAM = 0x80000; // 512 KiB: 0xd0000 is not RAM, so an access there is MMIO

/** A VM with a bootstrap vCPU (this thread serves) and one AP at `code` in real mode. */
function machine(code: number[]) {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const ram = vm.allocateMemory(RAM);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: RAM, memory: ram });
  ram.bytes.set(code, ENTRY);
  const bsp = vm.createVcpu(0);
  const ap = vm.createVcpu(1);
  setupRealMode(ap, { entry: ENTRY, stack: 0x8000 });
  bsp.adoptThread();
  return { kvm, vm, bsp, ap, [Symbol.dispose]: () => kvm.close() };
}

/** Serves the APs' requests from this thread until `done()` (10 s at most). */
async function serveUntil(aps: ApWorkers, handlers: ApHandlers, done: () => boolean) {
  const deadline = performance.now() + 10_000;
  while (!done() && performance.now() < deadline) {
    aps.serve(handlers);
    await new Promise((r) => setTimeout(r, 1));
  }
}

function recorder() {
  const log: string[] = [];
  const handlers: ApHandlers = {
    io(vcpu, direction, port, size, count, data) {
      if (direction === "in") data.fill(port === 0x21 ? 0x55 : 0);
      log.push(`${vcpu} ${direction} ${port.toString(16)} ${size}x${count} ${[...data]}`);
    },
    mmio(vcpu, address, isWrite, data) {
      if (!isWrite) data.fill(0x77);
      log.push(`${vcpu} mmio ${isWrite ? "write" : "read"} ${address.toString(16)} ${data.length}`);
    },
    tripleFault: (vcpu, detail) => log.push(`${vcpu} tripleFault ${detail}`),
    systemEvent: (vcpu, type, detail) => log.push(`${vcpu} systemEvent ${type} ${detail}`),
    error: (vcpu, detail) => log.push(`${vcpu} error ${detail}`),
  };
  return { log, handlers };
}

// deno-fmt-ignore
const IO_GUEST = [
  0xb0, 0x2a,       // mov al, 0x2a
  0xe6, 0x20,       // out 0x20, al      -> io(out 0x20, [42])
  0xe4, 0x21,       // in al, 0x21       -> io(in 0x21): the handler answers 0x55
  0xe6, 0x22,       // out 0x22, al      -> io(out 0x22, [85]): the answer arrived
  0xbb, 0x00, 0xd0, // mov bx, 0xd000
  0x8e, 0xdb,       // mov ds, bx
  0xa0, 0x00, 0x00, // mov al, [0]       -> mmio(read 0xd0000): the handler answers 0x77
  0xe6, 0x23,       // out 0x23, al      -> io(out 0x23, [119])
  0xeb, 0xfe,       // jmp $             (spins without exits: stop() must kick it)
];

Deno.test("ApWorkers: an AP's port I/O and MMIO reach the handlers; stop() kicks it out of a spin", async () => {
  using m = machine(IO_GUEST);
  const aps = new ApWorkers();
  const { log, handlers } = recorder();
  try {
    aps.start([m.ap], m.bsp.kickTarget, m.kvm.vcpuMmapSize());
    await aps.waitReady("test", performance.now() + 30_000);
    await serveUntil(aps, handlers, () => log.length >= 5);
  } finally {
    aps.stop();
  }
  deepStrictEqual(log, [
    "1 out 20 1x1 42",
    "1 in 21 1x1 85",
    "1 out 22 1x1 85",
    "1 mmio read d0000 1",
    "1 out 23 1x1 119",
  ]);
  deepStrictEqual([aps.leakedVcpus, aps.errors], [[], []]);
  ok(aps.describeStopped().includes("vCPU 1"), "the stopped AP's registers are readable");
  aps.stop(); // idempotent
});

Deno.test("ApWorkers: an exit nothing handles on an AP reaches handlers.error with its registers", async () => {
  using m = machine(IO_GUEST);
  // Single-stepping: the first instruction ends in a debug exit, which the AP does not handle.
  m.ap.setGuestDebug({ singleStep: true });
  const aps = new ApWorkers();
  const { log, handlers } = recorder();
  try {
    aps.start([m.ap], m.bsp.kickTarget, m.kvm.vcpuMmapSize());
    await aps.waitReady("test", performance.now() + 30_000);
    await serveUntil(aps, handlers, () => log.length >= 1);
  } finally {
    aps.stop();
  }
  strictEqual(log.length, 1, log.join("\n"));
  ok(log[0].startsWith("1 error vCPU 1: unhandled debug exit"), log[0]);
  ok(log[0].includes("vCPU 1") && /rip/i.test(log[0]), `a register dump: ${log[0]}`);
  deepStrictEqual(aps.leakedVcpus, []);
});

Deno.test("ApWorkers: a worker that cannot start rejects waitReady with EIO saying why", async () => {
  using m = machine(IO_GUEST);
  const aps = new ApWorkers();
  try {
    aps.start([m.ap], m.bsp.kickTarget, m.kvm.vcpuMmapSize(), {
      devices: [{ url: new URL("./ap/no_such_device.ts", import.meta.url).href, options: 0 }],
    });
    await rejects(aps.waitReady("test", performance.now() + 30_000), (e: unknown) => {
      ok(e instanceof KvmError && e.code === "EIO", String(e));
      ok(e.message.includes("no_such_device"), e.message);
      return true;
    });
  } finally {
    aps.stop();
  }
  deepStrictEqual(aps.leakedVcpus, [], "the worker gave its vCPU back");
});

Deno.test("ApWorkers: the holds of a worker that died are given back once its thread is gone", async () => {
  using m = machine(IO_GUEST);
  const life = m.ap.kickTarget.life!;
  const aps = new ApWorkers();
  try {
    aps.start([m.ap], m.bsp.kickTarget, m.kvm.vcpuMmapSize(), {
      devices: [{
        url: new URL("./context/test_device.ts", import.meta.url).href,
        // An uncaught error from a timer once the worker is idle: the worker dies.
        options: { shared: new SharedArrayBuffer(64), crashWorker: true },
      }],
    });
    await aps.waitReady("test", performance.now() + 30_000).catch(() => {});
  } finally {
    aps.stop();
  }
  deepStrictEqual(aps.leakedVcpus, []);
  m.vm.close();
  ok(new VmLife(life).vmReleased, "no hold was left: the VM's fd and memory are released");
});

Deno.test("ApWorkers: stop() before the workers started leaves nothing running", () => {
  using m = machine(IO_GUEST);
  const aps = new ApWorkers();
  aps.start([m.ap], m.bsp.kickTarget, m.kvm.vcpuMmapSize());
  aps.stop();
  deepStrictEqual(aps.leakedVcpus, []);
  const vcpu: Vcpu = m.ap;
  strictEqual(vcpu.getRegs().rip, BigInt(ENTRY), "the AP never ran");
});

Deno.test("ApWorkers: a stuck AP is reported and its run area kept mapped (child process)", async () => {
  const script = new URL("./ap/ap_stuck.ts", import.meta.url).pathname;
  const { code, signal, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  ok(signal === null, `killed by ${signal}:\n${out}`);
  strictEqual(code, 0, out);
  ok(out.includes("stuck AP: leaked vCPU 1") && out.includes("handler state 2 ok"), out);
  ok(out.includes("could not be stopped"), out);
});

Deno.test("ApWorkers: serving an AP's exits on the bootstrap thread allocates nothing per exit", async () => {
  // The AP loops on `inc al; out 0x10, al`; the bootstrap vCPU spins in `jmp $` until a kick.
  using m = machine([0xfe, 0xc0, 0xe6, 0x10, 0xeb, 0xfa]);
  m.vm.writeGuest(0x2000, [0xeb, 0xfe]);
  setupRealMode(m.bsp, { entry: 0x2000, stack: 0x7000 });
  let exits = 0;
  let sum = 0;
  const handlers: ApHandlers = {
    io(_vcpu, _direction, _port, _size, _count, data) {
      sum += data[0];
      exits++;
    },
    mmio() {},
    tripleFault() {},
    systemEvent() {},
    error() {},
  };
  const aps = new ApWorkers();
  const CHUNK = 500;
  const growth: number[] = [];
  try {
    aps.start([m.ap], m.bsp.kickTarget, m.kvm.vcpuMmapSize());
    await aps.waitReady("test", performance.now() + 30_000);
    for (let c = 0; c < 10; c++) {
      const target = exits + CHUNK;
      const before = Deno.memoryUsage().heapUsed;
      while (exits < target) {
        m.bsp.run(); // "interrupted": the AP kicked this thread
        aps.serve(handlers);
      }
      if (c >= 2) growth.push(Deno.memoryUsage().heapUsed - before); // after warm-up
    }
  } finally {
    aps.stop();
  }
  growth.sort((a, b) => a - b);
  const perExit = growth[growth.length >> 1] / CHUNK;
  ok(sum > 0);
  // An object per exit is 12 bytes or more (the previous runtime: 104); what is left is the
  // sampling's own, per chunk. 5000 exits: within the preload's 120 s bound on a slow KVM.
  ok(perExit < 4, `median heap growth ${perExit} bytes per served AP exit`);
});

Deno.test("ApWorkers: stop() racing the worker (at start, request waiting, while serving; 20 rounds each)", async () => {
  const script = new URL("./ap/ap_stop_race.ts", import.meta.url).pathname;
  const { code, signal, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  ok(signal === null, `killed by ${signal}:\n${out}`);
  strictEqual(code, 0, out);
  for (const way of ["at start", "request waiting", "while serving"]) {
    ok(out.includes(`stop ${way}: 20 rounds ok`), out);
  }
});
