// The other thread of kick_lost.ts. A timer sends the vCPU thread the kick
// signal without immediate_exit (what the watchdog's timer sends: run() must
// re-enter on it), and this thread kicks, one real kick at a time at a random
// moment, waiting for run() to answer each with "interrupted".
import { loadNative, Vcpu } from "../../../mod.ts";
import { native } from "../../../src/ffi/library.ts";

const scope = globalThis as unknown as {
  onmessage: (e: MessageEvent) => void;
  postMessage: (message: unknown) => void;
};

const STOP = 0, ACKS = 1, LOST = 2, SENT = 3, READY = 4;
/** How long a kick may go unanswered: the vCPU thread answers in microseconds. */
const ANSWER_MS = 10_000;

scope.onmessage = async (e: MessageEvent) => {
  const { target, control, kicks, gapMs, budgetMs } = e.data as {
    target: Parameters<typeof Vcpu.kick>[0];
    control: Int32Array;
    kicks: number;
    gapMs: number;
    budgetMs: number;
  };
  await loadNative();
  const lib = native();
  // The noise: a POSIX timer sending the kick signal to the vCPU thread every
  // gapMs, as the watchdog's timer does once expired. A timer's signal does not
  // queue behind itself (overruns are counted instead), so the vCPU thread is
  // never buried under queued signals, however slow it runs (the sandbox's TCG).
  const out = new Int32Array(1);
  if (lib.kvm_timer_create(target.threadId, new Uint8Array(out.buffer)) < 0) {
    throw new Error("timer_create failed");
  }
  const gapNs = BigInt(Math.max(1000, Math.round(gapMs * 1e6)));
  lib.kvm_timer_set(out[0], gapNs, gapNs);
  const spin = (ms: number) => {
    for (const until = performance.now() + ms; performance.now() < until;);
  };
  Atomics.store(control, READY, 1);
  // A round ends after `kicks` kicks or `budgetMs`, whichever comes first (a slow
  // KVM, as the sandbox's nested one under TCG, answers far fewer kicks a second).
  const roundEnd = performance.now() + budgetMs;
  for (let i = 0; i < kicks && performance.now() < roundEnd; i++) {
    const acks = Atomics.load(control, ACKS);
    // A random phase against the vCPU thread's handling of the timer's EINTRs.
    spin(Math.random() * 2 * gapMs);
    Vcpu.kick(target);
    Atomics.add(control, SENT, 1);
    const deadline = performance.now() + ANSWER_MS;
    while (Atomics.load(control, ACKS) === acks) {
      if (performance.now() > deadline) {
        Atomics.add(control, LOST, 1);
        i = kicks;
        break;
      }
    }
  }
  lib.kvm_timer_delete(out[0]);
  Atomics.store(control, STOP, 1);
  // Ends the vCPU thread's run() (the guest's exits would too).
  Vcpu.kick(target);
  scope.postMessage("done");
};
