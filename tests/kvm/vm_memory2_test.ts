// KVM_SET_USER_MEMORY_REGION2 (Linux 6.8+, KVM_CAP_USER_MEMORY2) with a real
// guest: every slot here is set through region2. Slot 0 holds the code (RAM
// at 0); slot 1 is 4 pages of data the guest reads and writes through ES, then
// the host moves it and deletes it between the guest's OUTs, and the guest's
// accesses follow (the moved slot shows the same bytes at the new address;
// an address without a slot exits as MMIO).

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { type GuestMemory, Kvm, KvmError, setupRealMode, type Vcpu, type Vm } from "../../mod.ts";
import { nextOut } from "./vm_guest.ts";
import { featureTest, lacksCap } from "./kvm_features.ts";

/** Registers a test that needs KVM_CAP_USER_MEMORY2, or prints why it is skipped. */
const test = (name: string, fn: () => void) => featureTest(name, lacksCap("USER_MEMORY2"), fn);

const ENTRY = 0x1000;
const OLD = 0x20000;
const NEW = 0x30000;
const DATA_SIZE = 0x4000;

// deno-fmt-ignore
const PROGRAM = [
  0xbb, 0x00, 0x20,                   // mov bx, 0x2000
  0x8e, 0xc3,                         // mov es, bx                 ; ES base 0x20000 (slot 1)
  0x26, 0xa0, 0x10, 0x00,             // mov al, [es:0x0010]        ; the byte the host wrote
  0xe6, 0x10,                         // out 0x10, al
  0x26, 0xc6, 0x06, 0x34, 0x12, 0x5a, // mov byte [es:0x1234], 0x5a ; a write, page 1 of slot 1
  0xe6, 0x11,                         // out 0x11, al               ; (the host moves slot 1 here)
  0xbb, 0x00, 0x30,                   // mov bx, 0x3000
  0x8e, 0xc3,                         // mov es, bx                 ; ES base 0x30000
  0x26, 0xa0, 0x34, 0x12,             // mov al, [es:0x1234]        ; its own write, moved
  0xe6, 0x12,                         // out 0x12, al
  0xbb, 0x00, 0x20,                   // mov bx, 0x2000
  0x8e, 0xc3,                         // mov es, bx
  0x26, 0xa0, 0x10, 0x00,             // mov al, [es:0x0010]        ; the old place: MMIO now
  0xe6, 0x13,                         // out 0x13, al               ; (the host deletes slot 1 here)
  0xbb, 0x00, 0x30,                   // mov bx, 0x3000
  0x8e, 0xc3,                         // mov es, bx
  0x26, 0xa0, 0x34, 0x12,             // mov al, [es:0x1234]        ; the new place: MMIO now
  0xf4,                               // hlt
];

interface Setup extends Disposable {
  vm: Vm;
  vcpu: Vcpu;
  data: GuestMemory;
}

function region2Guest(): Setup {
  const kvm = Kvm.open();
  try {
    const vm = kvm.createVm();
    const ram = vm.allocateMemory(0x10000);
    ram.bytes.set(PROGRAM, ENTRY);
    vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
    const data = vm.allocateMemory(DATA_SIZE);
    data.bytes[0x10] = 0xa7;
    vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: OLD, memorySize: DATA_SIZE, memory: data });
    const vcpu = vm.createVcpu(0);
    setupRealMode(vcpu, { entry: ENTRY, stack: 0x8000 });
    return { vm, vcpu, data, [Symbol.dispose]: () => kvm.close() };
  } catch (e) {
    kvm.close();
    throw e;
  }
}

/** Runs to the next exit, which must be an MMIO read of `address`; answers it with `value`. */
function answerMmioRead(vcpu: Vcpu, address: number, value: number): void {
  const exit = vcpu.run();
  ok(
    exit.reason === "mmio",
    `expected an MMIO read of ${address.toString(16)}, got ${exit.reason}`,
  );
  if (exit.reason !== "mmio") return;
  deepStrictEqual(
    { address: exit.address, isWrite: exit.isWrite, length: exit.length },
    { address, isWrite: false, length: 1 },
  );
  exit.value = value;
}

test("region2 slots: the guest reads and writes them; a moved slot follows; a deleted one is MMIO", () => {
  using g = region2Guest();
  const { vm, vcpu, data } = g;

  strictEqual(nextOut(vcpu), "out 10 a7", "the guest read the byte the host wrote in slot 1");
  strictEqual(nextOut(vcpu), "out 11 a7");
  strictEqual(data.bytes[0x1234], 0x5a, "the guest's write landed in slot 1's host memory");
  deepStrictEqual(Array.from(vm.readGuest(OLD + 0x1234, 1)), [0x5a]);

  // Move slot 1 (same id, same size, a new guest address: KVM_MR_MOVE).
  vm.setUserMemoryRegion2({
    slot: 1,
    guestPhysAddr: NEW,
    memorySize: DATA_SIZE,
    memory: data,
  });
  strictEqual(vm.memorySlots.get(1)!.guestPhysAddr, NEW, "the VM records the move");
  strictEqual(nextOut(vcpu), "out 12 5a", "at 0x31234 the guest reads its own write");
  answerMmioRead(vcpu, OLD + 0x10, 0x42); // nothing is at 0x20010 any more
  strictEqual(nextOut(vcpu), "out 13 42", "the MMIO answer reached the guest");

  // Delete slot 1 through region2 (size 0).
  vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: NEW, memorySize: 0 });
  ok(!vm.memorySlots.has(1), "the VM forgets the deleted slot");
  answerMmioRead(vcpu, NEW + 0x1234, 0);
  strictEqual(vcpu.run().reason, "hlt");
  strictEqual(data.bytes[0x1234], 0x5a, "deleting the slot left its host memory alone");
});

function kvmError(code: string, message: RegExp) {
  return (e: unknown) =>
    e instanceof KvmError && e.operation === "KVM_SET_USER_MEMORY_REGION2" && e.code === code &&
    message.test(e.message);
}

test("region2 error paths: overlap, alignment, range (checked first) and the kernel's own", () => {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion2({ slot: 0, guestPhysAddr: 0x10000, memorySize: ram.size, memory: ram });
  const other = vm.allocateMemory(0x4000);

  // Checked by the library, with the errno the kernel would give.
  throws(
    () =>
      vm.setUserMemoryRegion2({
        slot: 1,
        guestPhysAddr: 0x1f000,
        memorySize: 0x2000,
        memory: other,
      }),
    kvmError("EEXIST", /slot 1: 0x1f000\.\.0x21000 overlaps slot 0 at 0x10000/),
  );
  throws(
    () =>
      vm.setUserMemoryRegion2({
        slot: 1,
        guestPhysAddr: 0x20800,
        memorySize: 0x1000,
        memory: other,
      }),
    kvmError("EINVAL", /guest address 0x20800 is not page aligned/),
  );
  throws(
    () =>
      vm.setUserMemoryRegion2({
        slot: 1,
        guestPhysAddr: 0x20000,
        memorySize: 0x1800,
        memory: other,
      }),
    kvmError("EINVAL", /size 0x1800 is not a multiple of the page size/),
  );
  throws(
    () =>
      vm.setUserMemoryRegion2({
        slot: 1,
        guestPhysAddr: 0x20000,
        memorySize: 0x1000,
        memory: other,
        offset: 0x800,
      }),
    kvmError("EINVAL", /offset 0x800 into the memory is not page aligned/),
  );
  throws(
    () =>
      vm.setUserMemoryRegion2({
        slot: 1,
        guestPhysAddr: 0x20000,
        memorySize: 0x8000,
        memory: other,
      }),
    kvmError("EINVAL", /exceed the 0x4000-byte memory/),
  );

  // Refused by the kernel itself: these prove the struct reaches it field by field.
  throws(
    () =>
      vm.setUserMemoryRegion2({
        slot: 1,
        guestPhysAddr: 0x20000,
        memorySize: 0x1000,
        userspaceAddr: other.address + 0x10n, // host address not page aligned
      }),
    kvmError("EINVAL", /slot 1 at 0x20000/),
  );
  ok(!vm.memorySlots.has(1), "a refused slot is not recorded");
  vm.setUserMemoryRegion2({ slot: 1, guestPhysAddr: 0x20000, memorySize: 0x1000, memory: other });
  throws(
    () =>
      vm.setUserMemoryRegion2({
        slot: 2,
        guestPhysAddr: 0x20000,
        memorySize: 0x1000,
        memory: other,
      }),
    kvmError("EEXIST", /slot 2: 0x20000\.\.0x21000 overlaps slot 1/),
  );
  // A slot that names a guest_memfd on a VM type without private memory.
  throws(
    () =>
      vm.setUserMemoryRegion2({
        slot: 3,
        guestPhysAddr: 0x40000,
        memorySize: 0x1000,
        memory: other,
        guestMemfd: 0,
      }),
    kvmError("EINVAL", /slot 3 at 0x40000/),
  );
  ok(!vm.memorySlots.has(3), "a refused slot is not recorded");

  // Moving onto another slot is refused; the slot stays where it was.
  throws(
    () =>
      vm.setUserMemoryRegion2({
        slot: 1,
        guestPhysAddr: 0x18000,
        memorySize: 0x1000,
        memory: other,
      }),
    kvmError("EEXIST", /overlaps slot 0/),
  );
  strictEqual(vm.memorySlots.get(1)!.guestPhysAddr, 0x20000);
});
