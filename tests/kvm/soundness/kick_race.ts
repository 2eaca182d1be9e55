// Finding 2b, racing: a Worker kicks a vCPU's target in a loop while the main
// thread closes the VM and maps new memory of the run area's size (so the
// address is reused). The kick wrote into unmapped or reused memory.
import { GuestMemory, Kvm } from "../../../mod.ts";
import { fail } from "./common.ts";

for (let i = 0; i < 20; i++) {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const size = kvm.vcpuMmapSize();
  const vcpu = vm.createVcpu(0);
  const control = new SharedArrayBuffer(8);
  const words = new Int32Array(control);
  const worker = new Worker(new URL("./kick_worker.ts", import.meta.url).href, { type: "module" });
  const done = new Promise((resolve) => worker.onmessage = (e) => resolve(e.data));
  // threadId 0: only the run-area write, no signal (the vCPU thread here is the main thread).
  worker.postMessage({ target: { ...vcpu.kickTarget, threadId: 0 }, control });
  while (Atomics.load(words, 1) === 0) await new Promise((r) => setTimeout(r, 1));
  const runAddress = vcpu.kickTarget.runAddress;
  kvm.close();
  const maps: GuestMemory[] = [];
  for (let n = 0; n < 8; n++) maps.push(GuestMemory.allocate(size, { hugePages: false }));
  await new Promise((r) => setTimeout(r, 5));
  Atomics.store(words, 0, 1);
  await done;
  worker.terminate();
  for (const m of maps) {
    if (m.address === runAddress && m.bytes[1] !== 0) {
      fail(`round ${i}: a kick wrote into reused memory`);
    }
    m.close();
  }
}
console.log("kick race with vm.close: 20 rounds ok");
