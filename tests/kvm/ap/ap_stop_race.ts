// Run in a child process by ../ap_runtime_test.ts: ApWorkers.stop() racing
// the AP's worker, 20 rounds per way: right after start() (the worker still
// loading: it must never run the vCPU), after waitReady() with the AP's
// request left waiting (stop() answers it), and while requests are being
// served. Every round then closes the VM; where the worker had claimed its
// vCPU, every hold must have been given back (the VM released). A crash
// fails the test by its signal.
import { Kvm, setupRealMode } from "../../../mod.ts";
import { type ApHandlers, ApWorkers } from "../../../src/boot/ap_runtime.ts";
import { VmLife } from "../../../src/kvm/lifetime.ts";

const OUT_LOOP = [0xfe, 0xc0, 0xe6, 0x10, 0xeb, 0xfa]; // inc al; out 0x10, al; jmp $-4
let served = 0;
const handlers: ApHandlers = {
  io: () => void served++,
  mmio() {},
  tripleFault() {},
  systemEvent() {},
  error(_vcpu, detail) {
    console.log(`VIOLATION the AP reported an error: ${detail}`);
    Deno.exit(1);
  },
};
const ROUNDS = 20;
const WAYS = ["at start", "request waiting", "while serving"] as const;
for (const way of WAYS) {
  for (let round = 0; round < ROUNDS; round++) {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    const ram = vm.allocateMemory(0x10000);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0x10000, memory: ram });
    ram.bytes.set(OUT_LOOP, 0x1000);
    const bsp = vm.createVcpu(0);
    const ap = vm.createVcpu(1);
    setupRealMode(ap, { entry: 0x1000, stack: 0x8000 });
    bsp.adoptThread();
    const life = ap.kickTarget.life!;
    const aps = new ApWorkers();
    aps.start([ap], bsp.kickTarget, kvm.vcpuMmapSize());
    if (way !== "at start") {
      await aps.waitReady("race", performance.now() + 30_000);
      // Let the AP post a request (it then waits for the answer).
      await new Promise((r) => setTimeout(r, round % 5));
      if (way === "while serving") {
        for (let i = 0; i < round * 10; i++) aps.serve(handlers);
      }
    }
    aps.stop();
    if (aps.leakedVcpus.length > 0) {
      console.log(`VIOLATION ${way} round ${round}: ${aps.errors.join("; ")}`);
      Deno.exit(1);
    }
    const ripAfter = way === "at start" ? ap.getRegs().rip : 0n;
    vm.close();
    kvm.close();
    if (way === "at start" && ripAfter !== 0x1000n) {
      console.log(`VIOLATION the AP ran after stop() at start (rip ${ripAfter})`);
      Deno.exit(1);
    }
    if (way !== "at start" && !new VmLife(life).vmReleased) {
      console.log(`VIOLATION ${way} round ${round}: a hold was left, the VM is not released`);
      Deno.exit(1);
    }
  }
  console.log(`stop ${way}: ${ROUNDS} rounds ok`);
}
console.log(`served ${served} requests`);
