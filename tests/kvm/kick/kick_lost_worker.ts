// The other thread of kick_lost.ts. It sends the vCPU thread the kick signal
// without immediate_exit (what the watchdog's timer sends: run() must re-enter
// on it), and between those, one real kick at a time at a random moment,
// then keeps signalling until run() answers the kick with "interrupted". One
// thread does both, so the vCPU thread keeps a core of its own.
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
  const { target, control, kicks, gapMs } = e.data as {
    target: Parameters<typeof Vcpu.kick>[0];
    control: Int32Array;
    kicks: number;
    gapMs: number;
  };
  await loadNative();
  const lib = native();
  /** One watchdog-like signal, then a pause (real-time signals queue: EAGAIN backs off longer). */
  const noise = (gap: number) => {
    if (lib.kvm_kick(target.threadId, null) < 0) gap = 0.05;
    for (const until = performance.now() + gap; performance.now() < until;);
  };
  Atomics.store(control, READY, 1);
  for (let i = 0; i < kicks; i++) {
    const acks = Atomics.load(control, ACKS);
    // A random phase against the vCPU thread's EINTR handling of the last signal.
    noise(Math.random() * 4 * gapMs);
    try {
      Vcpu.kick(target);
    } catch {
      // EAGAIN from tgkill: immediate_exit is set; the next signal delivers it.
    }
    Atomics.add(control, SENT, 1);
    const deadline = performance.now() + ANSWER_MS;
    while (Atomics.load(control, ACKS) === acks) {
      if (performance.now() > deadline) {
        Atomics.add(control, LOST, 1);
        i = kicks;
        break;
      }
      noise(gapMs);
    }
  }
  Atomics.store(control, STOP, 1);
  // Ends the vCPU thread's run() (the guest's exits would too).
  for (let n = 0; n < 100; n++) noise(gapMs);
  try {
    Vcpu.kick(target);
  } catch {
    // As above.
  }
  scope.postMessage("done");
};
