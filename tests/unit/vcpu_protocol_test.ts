// The vCPU-on-Worker protocol (src/context/protocol.ts) without a KVM: the
// mailbox codec's round trip between a worker and a server that polls, its
// views made once per length, the thread handshake, and waitForState's
// bound. KvmContext and ApWorkers both stand on these.

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import {
  claimThread,
  controlBytes,
  Ctl,
  ctl,
  forbidStart,
  Mailbox,
  Mb,
  Reply,
  State,
  waitForState,
} from "../../src/context/protocol.ts";

Deno.test("protocol: a worker's calls are answered by a server that polls, in order", async () => {
  const box = new Mailbox();
  const worker = new Worker(new URL("./data/mailbox_caller.ts", import.meta.url).href, {
    type: "module",
  });
  const ready = Promise.withResolvers<void>();
  const done = Promise.withResolvers<number[]>();
  worker.onmessage = (e) => e.data === "ready" ? ready.resolve() : done.resolve(e.data);
  worker.postMessage(box.buffer);
  // A worker loads its modules through this thread's event loop: let it, before polling.
  await ready.promise;
  const seen: number[] = [];
  // The server side as a machine's run loop has it: poll, serve, answer (no event loop turn).
  const deadline = performance.now() + 10_000;
  while (seen.length < 5 && performance.now() < deadline) {
    if (!box.pending) continue;
    const w = box.words;
    seen.push(w[Mb.A0]);
    const data = box.bytes(w[Mb.SIZE]);
    strictEqual(data, box.bytes(w[Mb.SIZE]), "one view per length, made once");
    data[0] = w[Mb.A0] * 2; // an "in": the answer travels in the data area
    box.answer(Reply.CONTINUE);
  }
  const replies = await done.promise;
  worker.terminate();
  deepStrictEqual(seen, [1, 2, 3, 4, 5]);
  deepStrictEqual(replies, [2, 4, 6, 8, 10]);
  ok(!box.pending);
});

Deno.test("protocol: the thread handshake lets either the worker or the owner win, once", () => {
  const control = new Int32Array(new SharedArrayBuffer(controlBytes(2)));
  // vCPU 0: the worker claims first, the owner then learns its thread.
  ok(claimThread(control, 0, 1234));
  strictEqual(forbidStart(control, 0), 1234);
  // vCPU 1: the owner stops it first; the worker's claim then fails and it must not run.
  strictEqual(forbidStart(control, 1), 0);
  ok(!claimThread(control, 1, 5678));
  strictEqual(control[ctl(1, Ctl.TID)], -1);
});

Deno.test("protocol: waitForState returns true once the state is there, false at its deadline or when told", () => {
  const control = new Int32Array(new SharedArrayBuffer(controlBytes(1)));
  let ticks = 0;
  const t0 = performance.now();
  ok(!waitForState(control, 0, State.EXITED, t0 + 30, 5, () => void ticks++));
  ok(ticks >= 2, `tick ran ${ticks} times`);
  // A tick that returns true ends the wait (the worker's thread is gone: nothing will come).
  ok(!waitForState(control, 0, State.EXITED, performance.now() + 60_000, 5, () => true));
  Atomics.store(control, ctl(0, Ctl.STATE), State.EXITED);
  ok(waitForState(control, 0, State.EXITED, performance.now() + 30, 5, () => {}));
});
