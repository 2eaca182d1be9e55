// Finding 2b: a KickTarget taken before vm.close(). Used to SIGSEGV, or,
// once the address was reused by a new mapping, to write a byte into it.
// Now a no-op: the mapping that reuses the address stays untouched.
import { GuestMemory, Kvm, Vcpu } from "../../../mod.ts";
import { fail } from "./common.ts";

for (let i = 0; i < 20; i++) {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const size = kvm.vcpuMmapSize();
  const target = vm.createVcpu(0).kickTarget;
  kvm.close();
  // Without reuse: the address is unmapped.
  Vcpu.kick(target);
  // With reuse: new mappings of the same size until one lands there.
  const held: GuestMemory[] = [];
  let reused: GuestMemory | undefined;
  for (let n = 0; n < 8 && !reused; n++) {
    const m = GuestMemory.allocate(size, { hugePages: false });
    if (m.address === target.runAddress) reused = m;
    else held.push(m);
  }
  Vcpu.kick(target);
  if (reused && reused.bytes[1] !== 0) {
    fail(`the kick wrote ${reused.bytes[1]} into a reused mapping`);
  }
  reused?.close();
  for (const m of held) m.close();
}
console.log("kick after vm.close: no-op ok");
