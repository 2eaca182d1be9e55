/**
 * Bench cases 3 and 4 (picked up by bench/run.ts): the PIO guest of case 1
 * run by a {@linkcode KvmContext}, with the exit handled
 *
 * - 3: inside the vCPU's worker by a device module (bench/context_pio_device.ts),
 *   which is how KvmContext is meant to be used;
 * - 4: on the main thread by a libkvm-style `outb` callback, each exit a round
 *   trip through the SharedArrayBuffer mailbox (Atomics.wait in the worker,
 *   Atomics.waitAsync on the main thread).
 *
 * Each block is one `run()` that the handler ends after `n + 1` exits; only
 * the `n` round trips between the first and the last exit are timed, so
 * starting and stopping the run is not counted. Compare with case 1 (the same
 * loop on the calling thread) and with the C baseline's PIO loop.
 *
 * `deno bench -A` runs both cases too (skipped without `/dev/kvm`): each
 * iteration is one block, a `run()` of {@linkcode BENCH_BLOCK} + 1 exits,
 * with its start and stop (two messages between the threads) included.
 *
 * @module
 */

import { KvmContext, stopVcpu } from "../mod.ts";
import type { BenchCase, BenchFixture } from "./cases.ts";
import { PIO_GUEST, PIO_PORT, whyNoKvm } from "./guests.ts";

/** A KvmContext with one vCPU in real mode at the PIO guest. */
async function pioContext(
  options: Omit<Parameters<typeof KvmContext.create>[0], "memory">,
): Promise<KvmContext> {
  const ctx = await KvmContext.create({ memory: 1 << 20, irqchip: false, ...options });
  try {
    ctx.vm.writeGuest(PIO_GUEST.entry, PIO_GUEST.code);
    const vcpu = ctx.vcpu(0);
    const sregs = vcpu.getSregs();
    for (const seg of [sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss]) {
      seg.base = 0n;
      seg.selector = 0;
    }
    vcpu.setSregs(sregs);
    vcpu.setRegs(vcpu.getRegs().clear().assign({ rip: PIO_GUEST.entry, rflags: 2n }));
    return ctx;
  } catch (error) {
    await ctx.close();
    throw error;
  }
}

/** Case 3. */
export const contextWorkerCase: BenchCase = {
  id: "context-worker",
  title: "3. PIO exit, handler in the KvmContext worker",
  unit: "exits",
  block: 200,
  blocks: 50,
  warmup: 50_000, // as case 1: the worker loop's TurboFan code, not its first tiers
  baseline: { case: "pio", guest: PIO_GUEST },
  async open(): Promise<BenchFixture> {
    const shared = new SharedArrayBuffer(24);
    const words = new Int32Array(shared, 0, 2);
    const times = new Float64Array(shared, 8, 2);
    const ctx = await pioContext({
      devices: [{ url: new URL("./context_pio_device.ts", import.meta.url), options: { shared } }],
    });
    return {
      async measure(n) {
        words[0] = n + 1;
        const result = await ctx.run();
        const stop = result.vcpus[0].stop;
        if (stop.kind !== "handler") throw new Error(`vCPU stopped: ${JSON.stringify(stop)}`);
        if (words[1] !== 0) throw new Error(`${words[1]} PIO exits carried a wrong value`);
        return times[1] - times[0];
      },
      close: () => ctx.close(),
    };
  },
};

/** Case 4. */
export const contextMailboxCase: BenchCase = {
  id: "context-mailbox",
  title: "4. PIO exit, main-thread callback via the KvmContext mailbox",
  unit: "exits",
  block: 100,
  blocks: 30,
  warmup: 500,
  baseline: { case: "pio", guest: PIO_GUEST },
  async open(): Promise<BenchFixture> {
    let budget = 0;
    let seen = 0;
    let next = 0;
    let wrong = 0;
    let first = 0;
    let last = 0;
    const stop = stopVcpu("block done");
    const ctx = await pioContext({
      callbacks: {
        outb(port, value) {
          if (port !== PIO_PORT || value !== (next & 0xff)) wrong++;
          next++;
          if (seen === 0) first = performance.now();
          if (++seen < budget) return;
          last = performance.now();
          seen = 0;
          return stop;
        },
      },
    });
    return {
      async measure(n) {
        budget = n + 1;
        const result = await ctx.run();
        const reason = result.vcpus[0].stop;
        if (reason.kind !== "handler") throw new Error(`vCPU stopped: ${JSON.stringify(reason)}`);
        if (wrong !== 0) throw new Error(`${wrong} PIO exits carried a wrong value`);
        return last - first;
      },
      close: () => ctx.close(),
    };
  },
};

/** The cases bench/run.ts adds to its table. */
export const cases: BenchCase[] = [contextWorkerCase, contextMailboxCase];

/** Exits per `deno bench` iteration of cases 3 and 4. */
export const BENCH_BLOCK = 100;

const noKvm = whyNoKvm();
const fixtures = new Map<BenchCase, Promise<BenchFixture>>();
globalThis.addEventListener("unload", () => {
  // KvmContext.close is asynchronous; at unload its start is what can be done.
  for (const f of fixtures.values()) f.then((fixture) => fixture.close()).catch(() => {});
});

for (const c of cases) {
  Deno.bench({
    name: `${c.title} (a run() of ${BENCH_BLOCK} + 1 exits per iteration)`,
    group: "context",
    ignore: noKvm !== null,
    warmup: 20,
    async fn() {
      let opened = fixtures.get(c);
      if (!opened) fixtures.set(c, opened = Promise.resolve(c.open()));
      await (await opened).measure(BENCH_BLOCK);
    },
  });
}
