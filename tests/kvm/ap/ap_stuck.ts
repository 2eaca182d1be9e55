// Run in a child process by ../ap_runtime_test.ts: an AP whose worker is
// stuck in native code (a device handler blocked in read(2) with the kick
// signal blocked). ApWorkers.stop() must give up on it after its timeout,
// report it (leakedVcpus, errors) and leave its hold on the vCPU, so that
// closing the VM does not unmap the run area under it: when the handler
// returns and writes the exit's data, the process lives on (no SIGSEGV).
import { EventFd, Kvm, setupRealMode } from "../../../mod.ts";
import { ApWorkers } from "../../../src/boot/ap_runtime.ts";

const OUT_LOOP = [0xfe, 0xc0, 0xe6, 0x10, 0xeb, 0xfa]; // inc al; out 0x10, al; jmp $-4
const efd = EventFd.create({ nonBlocking: false });
const shared = new SharedArrayBuffer(4);
const words = new Int32Array(shared);
const kvm = Kvm.open();
const vm = kvm.createVm();
const ram = vm.allocateMemory(0x10000);
vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0x10000, memory: ram });
ram.bytes.set(OUT_LOOP, 0x1000);
const bsp = vm.createVcpu(0);
const ap = vm.createVcpu(1);
setupRealMode(ap, { entry: 0x1000, stack: 0x8000 });
bsp.adoptThread();
const aps = new ApWorkers();
aps.start([ap], bsp.kickTarget, kvm.vcpuMmapSize(), {
  devices: [{
    url: new URL("./stuck_ap_device.ts", import.meta.url).href,
    options: { fd: efd.unsafeFd, shared },
  }],
  stopTimeoutMs: 300,
});
await aps.waitReady("AP stuck test", performance.now() + 30_000);
while (Atomics.load(words, 0) !== 1) await new Promise((r) => setTimeout(r, 5));
aps.stop();
const leaked = aps.leakedVcpus;
const errors = aps.errors.join("; ");
vm.close();
kvm.close();
// Let the handler return into the run area stop() must have kept.
efd.write(1n);
for (let i = 0; i < 200 && Atomics.load(words, 0) !== 2; i++) {
  await new Promise((r) => setTimeout(r, 10));
}
efd.close();
if (leaked.length !== 1 || leaked[0] !== 1) {
  console.log(`VIOLATION leakedVcpus ${JSON.stringify(leaked)}`);
  Deno.exit(1);
}
console.log(`stuck AP: leaked vCPU ${leaked[0]} (${errors}), handler state ${words[0]} ok`);
Deno.exit(0);
