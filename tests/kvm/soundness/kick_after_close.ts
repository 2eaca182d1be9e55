// Finding 2a: kicking a vCPU after it closed. Used to write immediate_exit
// into the unmapped run area (SIGSEGV). Now a no-op.
import { Kvm, Vcpu } from "../../../mod.ts";

for (let i = 0; i < 20; i++) {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const vcpu = vm.createVcpu(0);
  const target = vcpu.kickTarget;
  vcpu.close();
  Vcpu.kick(vcpu.kickTarget);
  Vcpu.kick(target);
}
console.log("kick after vcpu.close: no-op ok");
