// Worker for tests/unit/vcpu_protocol_test.ts: five mailbox calls (A0 = 1..5,
// one byte of data each), then posts the byte each answer left in the data area.
import { Call, Mailbox } from "../../../src/context/protocol.ts";

interface WorkerScope {
  onmessage: ((event: MessageEvent<SharedArrayBuffer>) => void) | null;
  postMessage(message: unknown): void;
}
const scope = globalThis as unknown as WorkerScope;

scope.onmessage = (e) => {
  const box = new Mailbox(e.data);
  const replies: number[] = [];
  scope.postMessage("ready");
  for (let i = 1; i <= 5; i++) {
    box.call(Call.IN, i, 0, 1, 1, undefined);
    replies.push(box.data[0]);
  }
  scope.postMessage(replies);
};
