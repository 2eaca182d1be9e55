// Runs an adopted vCPU until run() throws; reports how it ended.
import { KvmError, loadNative, Vcpu } from "../../../mod.ts";

const scope = globalThis as unknown as {
  onmessage: (e: MessageEvent) => void;
  postMessage: (message: unknown) => void;
};

scope.onmessage = async (e: MessageEvent) => {
  const { fd, mmapSize, target, started } = e.data;
  await loadNative();
  let vcpu: Vcpu;
  try {
    vcpu = Vcpu.adopt(fd, 0, mmapSize, target);
  } catch (error) {
    scope.postMessage(error instanceof KvmError ? `adopt ${error.code}` : `adopt ${error}`);
    return;
  }
  const flag = new Int32Array(started);
  try {
    for (;;) {
      vcpu.run();
      Atomics.store(flag, 0, 1);
    }
  } catch (error) {
    scope.postMessage(error instanceof KvmError ? `run ${error.code}` : `run ${error}`);
  } finally {
    vcpu.close();
  }
};
