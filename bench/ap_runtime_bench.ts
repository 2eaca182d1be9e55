/**
 * The machines' AP path, measured: an application processor on its worker
 * loops on `out 0x10, al`; each exit is a round trip through its mailbox to
 * the bootstrap thread, which sits in `KVM_RUN` on a guest spinning without
 * exits (as a machine's bootstrap vCPU does) until the AP's kick brings it
 * out to serve. Prints AP exits per second over blocks of exits (median and
 * best block). Run: `deno run -A bench/ap_runtime_bench.ts [blocks]`.
 *
 * @module
 */

import { Kvm, setupRealMode } from "../mod.ts";
import { type ApHandlers, ApWorkers } from "../src/boot/ap_runtime.ts";

const BLOCK = 2_000;
const blocks = Number(Deno.args[0] ?? 15);
const OUT_LOOP = [0xfe, 0xc0, 0xe6, 0x10, 0xeb, 0xfa]; // inc al; out 0x10, al; jmp $-4
const SPIN = [0xeb, 0xfe]; // jmp $

using kvm = Kvm.open();
const vm = kvm.createVm();
const ram = vm.allocateMemory(0x10000);
vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0x10000, memory: ram });
ram.bytes.set(OUT_LOOP, 0x1000);
ram.bytes.set(SPIN, 0x2000);
const bsp = vm.createVcpu(0);
const ap = vm.createVcpu(1);
setupRealMode(bsp, { entry: 0x2000, stack: 0x8000 });
setupRealMode(ap, { entry: 0x1000, stack: 0x8000 });
bsp.adoptThread();
let exits = 0;
let wrong = 0;
let next = 1;
const handlers: ApHandlers = {
  io(_vcpu, _direction, port, _size, _count, data) {
    if (port !== 0x10 || data[0] !== (next & 0xff)) wrong++;
    next++;
    exits++;
  },
  mmio() {},
  tripleFault() {},
  systemEvent() {},
  error(_vcpu, detail) {
    throw new Error(detail);
  },
};
const aps = new ApWorkers();
aps.start([ap], bsp.kickTarget, kvm.vcpuMmapSize());
await aps.waitReady("bench", performance.now() + 30_000);
const rates: number[] = [];
try {
  for (let b = -1; b < blocks; b++) {
    const target = exits + BLOCK;
    const t0 = performance.now();
    while (exits < target) {
      bsp.run(); // returns "interrupted" when the AP kicks this thread
      aps.serve(handlers);
    }
    if (b >= 0) rates.push(BLOCK / ((performance.now() - t0) / 1000)); // block -1 warms up
  }
} finally {
  aps.stop();
  vm.close();
}
if (wrong !== 0) throw new Error(`${wrong} exits carried a wrong value`);
rates.sort((a, b) => a - b);
const f = (n: number) => Math.round(n).toLocaleString("en-US");
console.log(
  `AP PIO exit via ApWorkers: median ${f(rates[rates.length >> 1])} exits/s, best ${
    f(rates.at(-1)!)
  } (${blocks} blocks of ${BLOCK}; ${(1e6 / rates[rates.length >> 1]).toFixed(1)} us/exit)`,
);
