// KvmContext on real KVM: vCPUs on workers with in-worker devices, stop /
// pause / resume of guests that never exit, main-thread callbacks through the
// mailbox, and the failure paths (throwing handler, triple fault, dead or
// terminated worker), each followed by a check that nothing leaked.

import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { KvmContext, loadNative, VcpuError } from "../../mod.ts";
import { CHUNK } from "./context/alloc_device.ts";
import { featureTest, lacksTripleFaultExit } from "./kvm_features.ts";

// Loaded once for the file, not inside a test (the resource sanitizer would count it).
await loadNative();
const DEVICE = new URL("./context/test_device.ts", import.meta.url);

// Contexts made and closed before any test, as large as the largest test's, so
// that what the runtime keeps open for the rest of the process once it has run
// several workers and loaded their modules is not counted as a test's leak
// (a first test once saw 50 fds after against 44 before; with one warm-up of
// one vCPU, the four-vCPU test in the sandbox saw 42 against 38).
await (await KvmContext.create({ memory: 1 << 20 })).close();
await (await KvmContext.create({
  memory: 1 << 20,
  vcpus: 4,
  irqchip: false,
  devices: [{ url: DEVICE, options: { shared: new SharedArrayBuffer(4 * 8 * 4) } }],
})).close();
const CODE = 0x1000;

/** Points vCPU `id` at `CODE` in real mode, CS = 0, DS base `ds`, BX = id. */
function realMode(ctx: KvmContext, id: number, ds = 0): void {
  const vcpu = ctx.vcpu(id);
  const sregs = vcpu.getSregs();
  sregs.cs.base = 0n;
  sregs.cs.selector = 0;
  sregs.ds.base = BigInt(ds);
  sregs.ds.selector = ds >> 4;
  vcpu.setSregs(sregs);
  vcpu.setRegs(vcpu.getRegs().clear().assign({ rip: CODE, rflags: 2n, rbx: id, rsp: 0x8000 }));
}

/** What the process holds, to compare before and after a context. */
function processResources(): {
  fds: number;
  links: string[];
  kvmFds: string[];
  threads: number;
  maps: string;
} {
  const links = [...Deno.readDirSync("/proc/self/fd")].map((e) => {
    try {
      return Deno.readLinkSync(`/proc/self/fd/${e.name}`);
    } catch {
      return ""; // the directory's own fd, closed by now
    }
  });
  return {
    fds: links.length,
    links,
    kvmFds: links.filter((l) => l.includes("kvm")),
    threads: [...Deno.readDirSync("/proc/self/task")].length,
    maps: Deno.readTextFileSync("/proc/self/maps"),
  };
}

/** Asserts that `ctx` (closed) left no fd, worker thread or mapping behind. */
async function assertReleased(
  before: ReturnType<typeof processResources>,
  ramAddress: bigint,
): Promise<void> {
  // Worker threads end asynchronously after terminate(): give them a moment.
  let after = processResources();
  for (
    let i = 0;
    i < 100 && (after.threads > before.threads || after.fds > before.fds + 2);
    i++
  ) {
    await new Promise((r) => setTimeout(r, 20));
    after = processResources();
  }
  deepStrictEqual(after.kvmFds, before.kvmFds, "every KVM fd closed (/dev/kvm, VM, vCPUs)");
  const added = [...after.links];
  for (const link of before.links) {
    const at = added.indexOf(link);
    if (at >= 0) added.splice(at, 1);
  }
  ok(
    after.fds <= before.fds + 2,
    `no fd leaked (${after.fds} > ${before.fds}: ${JSON.stringify(added)})`,
  );
  ok(after.threads <= before.threads, `worker threads gone (${after.threads} > ${before.threads})`);
  const ram = ramAddress.toString(16);
  if (ramAddress !== 0n) {
    ok(!after.maps.split("\n").some((l) => l.startsWith(ram)), "guest RAM unmapped");
  }
  ok(!after.maps.includes("anon_inode:kvm-vcpu"), "no vCPU run area mapped");
}

// deno-fmt-ignore
const COUNT_TO = (n: number) => [
  0xba, 0x40, 0x00,             // mov dx, 0x40
  0xff, 0x06, 0x00, 0x00,       // loop: inc word [0]     ; DS is this vCPU's own
  0xa1, 0x00, 0x00,             // mov ax, [0]
  0xef,                         // out dx, ax             ; report the count
  0x89, 0xd8,                   // mov ax, bx
  0xe7, 0x41,                   // out 0x41, ax           ; name ourselves (BX = id)
  0x81, 0x3e, 0x00, 0x00, n & 0xff, n >> 8, // cmp word [0], n
  0x75, 0xec,                   // jne loop
  0xe6, 0x42,                   // out 0x42, al           ; done: the device stops us
  0xf4,                         // hlt
];

Deno.test("context: four vCPUs on four workers count, each exit routed to its own vCPU", async () => {
  const before = processResources();
  const shared = new SharedArrayBuffer(4 * 8 * 4);
  const words = new Int32Array(shared);
  const N = 300;
  const ctx = await KvmContext.create({
    memory: 1 << 20,
    vcpus: 4,
    irqchip: false, // every vCPU runnable at once (no INIT/SIPI)
    devices: [{ url: DEVICE, options: { shared } }],
  });
  const ram = ctx.memory.address;
  try {
    ctx.vm.writeGuest(CODE, COUNT_TO(N));
    for (let id = 0; id < 4; id++) realMode(ctx, id, 0x3000 + id * 0x10);
    const result = await ctx.run();
    deepStrictEqual(
      result.vcpus.map((v) => [v.vcpuId, v.stop]),
      [0, 1, 2, 3].map((id) => [id, { kind: "handler", reason: "done" }]),
    );
    for (let id = 0; id < 4; id++) {
      strictEqual(words[id * 8], N, `vCPU ${id} reported every count up to ${N}`);
      strictEqual(words[id * 8 + 3], 0, `vCPU ${id}'s counts arrived in order`);
      strictEqual(words[id * 8 + 1], 0, `vCPU ${id}'s exits all went to its own worker`);
      strictEqual(words[id * 8 + 2], 2 * N + 1, `vCPU ${id}: OUTs seen`);
      strictEqual(result.vcpus[id].exits, 2 * N + 1);
      // The guest's own counter, in its own memory.
      strictEqual(ctx.vm.readGuest(0x3000 + id * 0x10, 2)[0] | 0, N & 0xff);
    }
  } finally {
    await ctx.close();
  }
  await assertReleased(before, ram);
});

Deno.test("context: stop() ends a vCPU spinning in `jmp $`", async () => {
  const before = processResources();
  await using ctx = await KvmContext.create({ memory: 1 << 20 });
  ctx.vm.writeGuest(CODE, [0xeb, 0xfe]); // jmp $
  realMode(ctx, 0);
  // The target is 50 ms; the sandbox (nested KVM under TCG, shared
  // with other jobs) has been seen at 26-120 ms, so the bound asserted here
  // is generous and the measured latencies are logged.
  const latencies: number[] = [];
  for (let round = 0; round < 3; round++) {
    const run = ctx.run();
    await new Promise((r) => setTimeout(r, 50));
    ok(ctx.running);
    const t0 = performance.now();
    await ctx.stop();
    latencies.push(performance.now() - t0);
    deepStrictEqual((await run).vcpus[0].stop, { kind: "requested" });
    strictEqual(ctx.vcpu(0).getRegs().rip, BigInt(CODE), "still at the jmp $");
  }
  const best = Math.min(...latencies);
  console.log(
    `stop latency (stop() until run() settled): ${
      latencies.map((l) => l.toFixed(1)).join(", ")
    } ms; ` +
      `best ${best.toFixed(1)} ms ${best < 50 ? "within" : "OVER"} the 50 ms target`,
  );
  ok(Math.max(...latencies) < 1000, "every stop took effect (well under a second)");
  const ram = ctx.memory.address;
  await ctx.close();
  await assertReleased(before, ram);
});

Deno.test("context: pause() and resume() keep the guest's state", async () => {
  await using ctx = await KvmContext.create({ memory: 1 << 20 });
  // deno-fmt-ignore
  ctx.vm.writeGuest(CODE, [
    0x66, 0xff, 0x06, 0x00, 0x05, // loop: inc dword [0x500]
    0xeb, 0xf9,                   // jmp loop
  ]);
  realMode(ctx, 0);
  const counter = () => new DataView(ctx.vm.readGuest(0x500, 4).buffer).getUint32(0, true);
  const run = ctx.run();
  await new Promise((r) => setTimeout(r, 100));
  await ctx.pause();
  const paused = counter();
  ok(paused > 0, "the guest counted before the pause");
  const rip = ctx.vcpu(0).getRegs().rip;
  ok(rip === BigInt(CODE) || rip === BigInt(CODE + 5), `paused inside the loop (rip ${rip})`);
  await new Promise((r) => setTimeout(r, 100));
  strictEqual(counter(), paused, "nothing ran while paused");
  ctx.resume();
  await new Promise((r) => setTimeout(r, 100));
  await ctx.pause();
  const resumed = counter();
  ok(resumed > paused, `the count went on from ${paused} to ${resumed}`);
  ctx.resume();
  await ctx.stop();
  deepStrictEqual((await run).vcpus[0].stop, { kind: "requested" });
  ok(counter() >= resumed, "no reset");
});

Deno.test("context: a throwing device handler rejects run() with the error and the registers", async () => {
  const before = processResources();
  const shared = new SharedArrayBuffer(4 * 8 * 4);
  const ctx = await KvmContext.create({
    memory: 1 << 20,
    vcpus: 2,
    irqchip: false,
    devices: [{ url: DEVICE, options: { shared } }],
  });
  const ram = ctx.memory.address;
  try {
    // vCPU 0 throws in its handler; vCPU 1 spins and must be stopped.
    ctx.vm.writeGuest(CODE, [0xb0, 0x07, 0xe6, 0x50, 0xf4]); // mov al, 7; out 0x50, al; hlt
    ctx.vm.writeGuest(0x2000, [0xeb, 0xfe]); // jmp $
    realMode(ctx, 0);
    realMode(ctx, 1);
    ctx.vcpu(1).setRegs(ctx.vcpu(1).getRegs().assign({ rip: 0x2000 }));
    const error = await ctx.run().then(() => undefined, (e) => e);
    ok(error instanceof VcpuError, `a VcpuError, not ${error}`);
    strictEqual(error.kind, "handler");
    strictEqual(error.vcpuId, 0);
    strictEqual((error.cause as Error).message, "device exploded");
    // RIP at the 2-byte OUT (VMX/SVM complete it on the next entry) or just
    // past it (kvm_pvm completes it before returning): either way, the exit's.
    const rip = error.regs?.rip;
    ok([BigInt(CODE + 2), BigInt(CODE + 4)].includes(rip ?? -1n), `RIP at the OUT (${rip})`);
    strictEqual(error.regs?.rax, 7n);
    deepStrictEqual(error.others, [{ vcpuId: 1, stop: { kind: "requested" }, exits: 0 }]);
    ok(!ctx.running);
  } finally {
    await ctx.close();
  }
  await assertReleased(before, ram);
});

const TRIPLE_FAULT = "context: a guest triple fault ends the run with a shutdown";
featureTest(TRIPLE_FAULT, lacksTripleFaultExit(), async () => {
  await using ctx = await KvmContext.create({ memory: 1 << 20 });
  // deno-fmt-ignore
  ctx.vm.writeGuest(CODE, [
    0x0f, 0x01, 0x1e, 0x00, 0x06, // lidt [0x600]   ; limit 0: no vector is valid
    0xcc,                         // int3           ; #BP → #GP → double fault → triple fault
  ]);
  ctx.vm.writeGuest(0x600, [0, 0, 0, 0, 0, 0]);
  realMode(ctx, 0);
  const result = await ctx.run({ timeoutMs: 60_000 });
  deepStrictEqual(result.vcpus[0].stop, { kind: "shutdown" });
});

Deno.test("context: a terminated worker rejects run() instead of hanging", async () => {
  const before = processResources();
  const ctx = await KvmContext.create({ memory: 1 << 20 });
  const ram = ctx.memory.address;
  try {
    ctx.vm.writeGuest(CODE, [0xeb, 0xfe]); // jmp $
    realMode(ctx, 0);
    const run = ctx.run();
    await new Promise((r) => setTimeout(r, 50));
    ctx.terminate(0);
    const error = await run.then(() => undefined, (e) => e);
    ok(error instanceof VcpuError, `a VcpuError, not ${error}`);
    strictEqual(error.kind, "terminated");
    await rejects(ctx.run(), VcpuError, "a dead vCPU cannot run again");
  } finally {
    await ctx.close();
  }
  await assertReleased(before, ram);
});

Deno.test("context: a worker that dies of an uncaught error rejects run()", async () => {
  const before = processResources();
  const shared = new SharedArrayBuffer(8 * 4);
  const ctx = await KvmContext.create({
    memory: 1 << 20,
    devices: [{ url: DEVICE, options: { shared, crashWorker: true } }],
  });
  const ram = ctx.memory.address;
  try {
    await new Promise((r) => setTimeout(r, 200)); // the worker's timer throws meanwhile
    const error = await ctx.run().then(() => undefined, (e) => e);
    ok(error instanceof VcpuError, `a VcpuError, not ${error}`);
    strictEqual(error.kind, "worker");
    ok(error.message.includes("uncaught error in the worker"), error.message);
  } finally {
    await ctx.close();
  }
  await assertReleased(before, ram);
});

Deno.test("context: close() while vCPUs run (one in the guest, one asleep in KVM_RUN) lets the process exit", async () => {
  const script = new URL("./context/exit_script.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", script],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const { code, stdout, stderr } = await child.output();
  clearTimeout(timer);
  const out = new TextDecoder().decode(stdout);
  strictEqual(code, 0, `the child exited by itself (stderr: ${new TextDecoder().decode(stderr)})`);
  ok(out.includes(`closed: ["requested","requested"]`), out);
});

Deno.test("context: a device module that cannot load fails create() and leaks nothing", async () => {
  const before = processResources();
  const missing = new URL("./context/no_such_device.ts", import.meta.url);
  const error = await KvmContext.create({ memory: 1 << 20, devices: [missing] }).then(
    () => undefined,
    (e) => e,
  );
  ok(error instanceof VcpuError, `a VcpuError, not ${error}`);
  strictEqual(error.kind, "handler");
  ok(error.message.includes("no_such_device.ts"), error.message);
  await assertReleased(before, 0n);
});

Deno.test("context: the in-worker hot path allocates nothing per exit", async () => {
  // deno-fmt-ignore
  const PIO_LOOP = [
    0xe6, 0x10, // out 0x10, al
    0x40,       // inc ax
    0xeb, 0xfb, // jmp back to the out
  ];
  const CHUNKS = 15;
  const perExit = async (allocate: boolean): Promise<number> => {
    const shared = new SharedArrayBuffer((CHUNKS + 1) * 4);
    await using ctx = await KvmContext.create({
      memory: 1 << 20,
      irqchip: false,
      devices: [{
        url: new URL("./context/alloc_device.ts", import.meta.url),
        options: { shared, chunks: CHUNKS, allocate },
      }],
    });
    ctx.vm.writeGuest(CODE, PIO_LOOP);
    realMode(ctx, 0);
    deepStrictEqual((await ctx.run()).vcpus[0].stop, { kind: "handler", reason: "measured" });
    // The median chunk: chunks with a garbage collection in them shrink.
    const growth = [...new Int32Array(shared, 4, CHUNKS)].sort((a, b) => a - b);
    return growth[CHUNKS >> 1] / CHUNK;
  };
  const clean = await perExit(false);
  const control = await perExit(true);
  console.log(
    `worker heap growth per exit: ${clean.toFixed(2)} bytes (control, one object per exit: ${
      control.toFixed(2)
    } bytes)`,
  );
  ok(control >= 8, `the control's allocation is visible (${control} bytes per exit)`);
  ok(clean < 1, `no allocation per exit in the worker (${clean} bytes per exit)`);
});

Deno.test("context: unhandled exits, a device stopping the whole VM, and a second run()", async () => {
  const shared = new SharedArrayBuffer(2 * 8 * 4);
  await using ctx = await KvmContext.create({
    memory: 1 << 20,
    vcpus: 2,
    irqchip: false,
    devices: [{ url: DEVICE, options: { shared } }],
  });
  ctx.vm.writeGuest(0x1000, [0xe6, 0x99]); // out 0x99, al   ; no device there
  ctx.vm.writeGuest(0x2000, [0xe6, 0x42]); // out 0x42, al   ; "done"
  ctx.vm.writeGuest(0x3000, [0xeb, 0xfe]); // jmp $
  ctx.vm.writeGuest(0x4000, [0xe6, 0x43]); // out 0x43, al   ; the device stops the VM
  const at = (id: number, rip: number) => {
    realMode(ctx, id);
    ctx.vcpu(id).setRegs(ctx.vcpu(id).getRegs().assign({ rip }));
  };
  at(0, 0x1000);
  at(1, 0x2000);
  const first = await ctx.run();
  deepStrictEqual(first.vcpus.map((v) => v.stop), [
    { kind: "unhandled", exit: "io", detail: "out port 0x99 size 1 count 1" },
    { kind: "handler", reason: "done" },
  ]);
  // Same context, new registers: vCPU 0 spins until vCPU 1's device ends the VM.
  at(0, 0x3000);
  at(1, 0x4000);
  const second = await ctx.run();
  deepStrictEqual(second.vcpus.map((v) => v.stop), [
    { kind: "vmStopped", by: 1 },
    { kind: "handler", reason: "the guest asked" },
  ]);
});
