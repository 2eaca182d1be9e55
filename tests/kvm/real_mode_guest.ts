// Shared set-up for integration tests: a VM with flat real-mode state and a
// guest program copied into its RAM.

import { Kvm, setupRealMode, type Vcpu, type Vm } from "../../mod.ts";

/** A VM with `ramSize` bytes at guest physical 0 and one vCPU in real mode. */
export interface RealModeGuest extends Disposable {
  kvm: Kvm;
  vm: Vm;
  vcpu: Vcpu;
}

/**
 * Creates a VM with RAM at 0, copies `code` to `entry`, and points vCPU 0 at
 * it in real mode with CS = DS = ES = SS = 0.
 */
export function realModeGuest(code: number[], entry = 0x1000, ramSize = 0x10000): RealModeGuest {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const ram = vm.allocateMemory(ramSize);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ramSize, memory: ram });
  ram.bytes.set(code, entry);
  const vcpu = vm.createVcpu(0);
  setupRealMode(vcpu, { entry, stack: 0x8000 });
  return { kvm, vm, vcpu, [Symbol.dispose]: () => kvm.close() };
}
