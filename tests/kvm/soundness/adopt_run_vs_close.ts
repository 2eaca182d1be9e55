// Finding 2d: a Worker in Vcpu.adopt(...).run() while the main thread calls
// vm.close(). The run area was unmapped under the running worker (SIGSEGV).
// Now the worker's run() ends with EBADF and the mapping goes when it is done.
import { Kvm, setupRealMode } from "../../../mod.ts";
import { fail, OUT_LOOP } from "./common.ts";

const seen = new Map<string, number>();
for (let i = 0; i < 20; i++) {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
  ram.bytes.set(OUT_LOOP, 0x1000);
  const vcpu = vm.createVcpu(0);
  setupRealMode(vcpu, { entry: 0x1000, stack: 0x8000 });
  const started = new SharedArrayBuffer(4);
  const worker = new Worker(new URL("./adopt_worker.ts", import.meta.url).href, { type: "module" });
  const done = new Promise<string>((resolve) => worker.onmessage = (e) => resolve(e.data));
  worker.postMessage({
    fd: vcpu.unsafeFd,
    mmapSize: kvm.vcpuMmapSize(),
    target: vcpu.kickTarget,
    started,
  });
  // Close while the worker runs the guest (or, some rounds, before it adopted).
  const flag = new Int32Array(started);
  if (i % 4 !== 0) {
    while (Atomics.load(flag, 0) === 0) await new Promise((r) => setTimeout(r, 1));
  }
  kvm.close();
  const how = await done;
  worker.terminate();
  if (how !== "run EBADF" && how !== "adopt EBADF") {
    fail(`round ${i}: the worker ended with ${how}`);
  }
  seen.set(how, (seen.get(how) ?? 0) + 1);
}
console.log(`adopted run vs close: ${[...seen].map(([k, v]) => `${k} x${v}`).join(", ")} ok`);
