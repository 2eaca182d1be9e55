// Child of ../kick_lost_test.ts: can a kick be lost while the watchdog is armed?
//
// The main thread runs a guest that exits forever, with a long watchdog armed
// (so an EINTR that was not a kick re-enters KVM_RUN). A Worker's timer sends
// the kick signal without setting immediate_exit, every few microseconds:
// exactly what the watchdog's timer sends, so run() sees many EINTRs it must
// re-enter on. Meanwhile the Worker kicks, one kick at a time, and waits for
// run() to return "interrupted" for it. A kick landing between run() reading immediate_exit
// and clearing it was lost: run() took its signal for the watchdog's and
// re-entered, so the kicker waited in vain. Prints one line per round and
// exits 1 on the first lost kick.
import { Kvm, setupRealMode } from "../../../mod.ts";
import { OUT_LOOP } from "../soundness/common.ts";

const ROUNDS = Number(Deno.args[0] ?? 20);
const KICKS = Number(Deno.args[1] ?? 500);
/**
 * Milliseconds between two watchdog-like signals: given, or twice the
 * measured cost of one exit, at least 10 µs. Natively (an exit costs a few
 * microseconds) that is every 10-20 µs; on a slow KVM (the sandbox's nested
 * one under TCG: about 0.5 ms per exit) a 10 µs timer would keep its guest
 * kernel busy with timer interrupts alone, and the vCPU thread would starve.
 */
const GIVEN_GAP_MS = Deno.args[2] === undefined ? undefined : Number(Deno.args[2]);
/** Milliseconds a round kicks at most. */
const BUDGET_MS = Number(Deno.args[3] ?? 4000);

/** Control words shared with the worker. */
const STOP = 0, ACKS = 1, LOST = 2, SENT = 3, READY = 4;

for (let round = 0; round < ROUNDS; round++) {
  using kvm = Kvm.open();
  const vm = kvm.createVm();
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
  ram.bytes.set(OUT_LOOP, 0x1000);
  const vcpu = vm.createVcpu(0);
  setupRealMode(vcpu, { entry: 0x1000, stack: 0x8000 });
  vcpu.run(); // one exit first: the vCPU is set up before the workers start
  const t0 = performance.now();
  for (let i = 0; i < 200; i++) vcpu.run();
  const gapMs = GIVEN_GAP_MS ?? Math.max(0.01, 2 * (performance.now() - t0) / 200);
  vcpu.setWatchdog(600_000);

  const control = new Int32Array(new SharedArrayBuffer(8 * 4));
  const worker = new Worker(new URL("./kick_lost_worker.ts", import.meta.url).href, {
    type: "module",
  });
  const done = new Promise<void>((resolve) => worker.onmessage = () => resolve());
  worker.postMessage({
    target: vcpu.kickTarget,
    control,
    kicks: KICKS,
    gapMs,
    budgetMs: BUDGET_MS,
  });
  while (Atomics.load(control, READY) === 0) await new Promise((r) => setTimeout(r, 1));

  let exits = 0;
  // The vCPU thread: an "interrupted" run() answers the kick in flight.
  while (Atomics.load(control, STOP) === 0) {
    const exit = vcpu.run();
    exits++;
    if (exit.reason === "interrupted") {
      Atomics.add(control, ACKS, 1);
    }
  }
  await done;
  worker.terminate();
  vcpu.setWatchdog(null);
  const lost = Atomics.load(control, LOST);
  console.log(
    `round ${round} (noise every ${gapMs.toFixed(3)} ms): ${Atomics.load(control, SENT)} kicks, ${
      Atomics.load(control, ACKS)
    } interrupted, ${exits} exits, ${lost} lost`,
  );
  if (lost !== 0) {
    console.log("VIOLATION a kick was lost: run() re-entered KVM_RUN after it");
    Deno.exit(1);
  }
}
console.log(`${ROUNDS} rounds, no kick lost ok`);
