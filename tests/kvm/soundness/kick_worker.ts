// Kicks the posted target in a loop until told to stop.
import { loadNative, Vcpu } from "../../../mod.ts";

const scope = globalThis as unknown as {
  onmessage: (e: MessageEvent) => void;
  postMessage: (message: unknown) => void;
};

scope.onmessage = async (e: MessageEvent) => {
  const { target, control } = e.data;
  await loadNative();
  const words = new Int32Array(control);
  Atomics.store(words, 1, 1);
  let kicks = 0;
  while (Atomics.load(words, 0) === 0) {
    try {
      Vcpu.kick(target);
    } catch {
      // ESRCH: the thread the target names is gone.
    }
    kicks++;
  }
  scope.postMessage(kicks);
};
