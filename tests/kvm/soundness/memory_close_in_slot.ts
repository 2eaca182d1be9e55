// Finding 4: closing guest memory that a memory slot still uses. The kernel
// keeps the slot's host address: a later mapping at the same address became
// the guest's RAM. Now close() is refused with EBUSY until the slot is gone.
import { GuestMemory, Kvm, setupRealMode } from "../../../mod.ts";
import { expectKvmError, fail } from "./common.ts";

using kvm = Kvm.open();
using vm = kvm.createVm();
const size = 0x10000;
const ram = GuestMemory.allocate(size, { hugePages: false });
vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: size, memory: ram });
// mov byte [0x2000], 0x5a; hlt
ram.bytes.set([0xc6, 0x06, 0x00, 0x20, 0x5a, 0xf4], 0x1000);
let refused = false;
try {
  ram.close();
} catch {
  refused = true;
}
if (!refused) {
  // What the old code allowed: an unrelated allocation at the same address, written by the guest.
  const other = GuestMemory.allocate(size, { hugePages: false });
  other.bytes.set([0xc6, 0x06, 0x00, 0x20, 0x5a, 0xf4], 0x1000);
  const vcpu = vm.createVcpu(0);
  setupRealMode(vcpu, { entry: 0x1000, stack: 0x8000 });
  vcpu.setWatchdog(5000);
  vcpu.run();
  if (other.address === ram.address || other.bytes[0x2000] === 0x5a) {
    fail("the guest wrote into memory allocated after its RAM was closed");
  }
  fail("close() of memory in a slot was not refused");
}
expectKvmError("close while slot 0 uses it", "EBUSY", () => ram.close(), "slot 0");
vm.removeMemoryRegion(0);
ram.close();
console.log(`after removing the slot: closed=${ram.closed}`);
