// Finding 2c: a GuestRam view read after its owner closed. The worker's views
// pointed into RAM the owner had unmapped (SIGSEGV). Now the GuestRam holds
// the vCPU's entry in the lifetime record: its views stay readable until it
// closes, view() after the owner closed is EBADF, and numbers are checked.
import { GuestRam, Kvm } from "../../../mod.ts";
import { expectKvmError, fail } from "./common.ts";

for (let i = 0; i < 20; i++) {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
  ram.bytes[0x1000] = 0x5a;
  const vcpu = vm.createVcpu(0);
  const guestRam = new GuestRam(
    [{ guestPhysAddr: 0, size: ram.size, hostAddress: ram.address }],
    vcpu.kickTarget,
  );
  if (i === 0) {
    expectKvmError("GuestRam.view length -1", "EINVAL", () => guestRam.view(0, -1), "length");
    expectKvmError("GuestRam.view gpa NaN", "EINVAL", () => guestRam.view(NaN, 1), "gpa");
    expectKvmError("GuestRam.view length 0.5", "EINVAL", () => guestRam.view(0, 0.5), "length");
  }
  const view = guestRam.view(0x1000, 16);
  kvm.close();
  if (view[0] !== 0x5a) fail(`a view read ${view[0]} after the owner closed`);
  if (i === 0) expectKvmError("GuestRam.view after close", "EBADF", () => guestRam.view(0, 1));
  guestRam.close();
  if (view.length !== 0) fail("the view is not empty after GuestRam.close()");
}
console.log("GuestRam views after the owner closed: readable until GuestRam.close() ok");
