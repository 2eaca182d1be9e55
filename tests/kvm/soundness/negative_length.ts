// Finding 5: lengths and addresses at the edges. readGuest(gpa, -1) used to
// return almost the whole slot; now every bad number is KvmError EINVAL
// naming the parameter.
import { Kvm } from "../../../mod.ts";
import { expectKvmError } from "./common.ts";

using kvm = Kvm.open();
using vm = kvm.createVm();
const ram = vm.allocateMemory(0x10000);
vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
for (
  const [name, gpa, length, param] of [
    ["length -1", 0, -1, "length"],
    ["length -1 mid-slot", 0x1000, -1, "length"],
    ["length 1.5", 0, 1.5, "length"],
    ["length NaN", 0, NaN, "length"],
    ["length Infinity", 0, Infinity, "length"],
    ["gpa -1", -1, 1, "gpa"],
    ["gpa 0.5", 0.5, 1, "gpa"],
    ["gpa NaN", NaN, 1, "gpa"],
  ] as const
) {
  expectKvmError(`readGuest ${name}`, "EINVAL", () => vm.readGuest(gpa, length), param);
  expectKvmError(`guestMemory ${name}`, "EINVAL", () => vm.guestMemory(gpa, length), param);
}
expectKvmError("writeGuest gpa -4", "EINVAL", () => vm.writeGuest(-4, [1, 2, 3, 4]), "gpa");
console.log(`readGuest(0, 0): ${vm.readGuest(0, 0).length} bytes`);
