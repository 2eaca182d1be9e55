// Findings 2c and 3: KvmContext.close() while a device handler is stuck in
// native code. close() waited stopTimeoutMs, gave up on the thread silently
// and unmapped the run area and RAM: when the handler returned, its GuestRam
// view and its write of the exit data hit unmapped memory (SIGSEGV). Now
// close() keeps what the thread may touch and reports it.
import { EventFd, KvmContext, setupRealMode } from "../../../mod.ts";
import { fail, OUT_LOOP } from "./common.ts";

const efd = EventFd.create({ nonBlocking: false });
const shared = new SharedArrayBuffer(4);
const words = new Int32Array(shared);
const ctx = await KvmContext.create({
  memory: 1 << 20,
  irqchip: false,
  stopTimeoutMs: 200,
  devices: [{
    url: new URL("./stuck_device.ts", import.meta.url).href,
    options: { fd: efd.unsafeFd, shared },
  }],
});
ctx.vm.writeGuest(0x1000, OUT_LOOP);
setupRealMode(ctx.vcpu(0), { entry: 0x1000, stack: 0x8000 });
const run = ctx.run();
run.catch(() => {});
while (Atomics.load(words, 0) !== 1) await new Promise((r) => setTimeout(r, 5));
await ctx.close();
const kept = ctx.leakedVcpus;
// Let the handler return into memory close() must have kept.
efd.write(1n);
await new Promise((r) => setTimeout(r, 300));
efd.close();
if (kept.length !== 1 || kept[0] !== 0) fail(`close() reported ${JSON.stringify(kept)}`);
console.log(
  `close with a stuck handler: kept vCPU ${kept.join(",")} mapped, handler state ${words[0]} ok`,
);
