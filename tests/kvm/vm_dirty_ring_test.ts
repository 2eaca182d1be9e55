// The dirty ring (KVM_CAP_DIRTY_LOG_RING) reports exactly the pages the guest
// wrote, in the vCPU's own ring. A page written through the MMU gives one
// entry until the next reset; a write the KVM emulates gives one entry per
// write (kvm_pvm emulates real mode: page 15 below comes twice there), so the
// tests compare sets of pages, not entry counts. As in
// vm_dirty_log_test.ts the guest's code and stack live in slot 0, which is not
// logged; the pages it writes are in slot 1 (KVM_MEM_LOG_DIRTY_PAGES).

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { Kvm, KvmError, type Vcpu, type Vm } from "../../mod.ts";
import { guest, type Item, nextOut } from "./vm_guest.ts";
import { featureTest, lacksCap } from "./kvm_features.ts";

/** Registers a test that needs KVM_CAP_DIRTY_LOG_RING, or prints why it is skipped. */
const test = (name: string, fn: () => void) => featureTest(name, lacksCap("DIRTY_LOG_RING"), fn);

function kvmError(operation: string, code: string, message: RegExp) {
  return (e: unknown) =>
    e instanceof KvmError && e.operation === operation && e.code === code &&
    message.test(e.message);
}

/** Harvests `vcpu`'s ring; returns the pages of slot 1 (sorted, distinct) and the entry count. */
function harvest(vm: Vm, vcpu: Vcpu): { pages: number[]; entries: number; slots: number[] } {
  const pages = new Set<number>();
  const slots = new Set<number>();
  const entries = vm.dirtyRing(vcpu).harvest((slot, offset) => {
    slots.add(slot);
    if (slot === 1) pages.add(offset);
  });
  return { pages: [...pages].sort((a, b) => a - b), entries, slots: [...slots] };
}

const LOGGED = 0x10000;

// deno-fmt-ignore
const PROGRAM: Item[] = [
  [0xbb, 0x00, 0x10],                         // mov bx, 0x1000
  [0x8e, 0xc3],                               // mov es, bx                ; ES base 0x10000
  [0x26, 0xc6, 0x06, 0x00, 0x00, 0x01],       // mov byte [es:0x0000], 1   ; page 0
  [0x26, 0xc6, 0x06, 0x04, 0x30, 0x02],       // mov byte [es:0x3004], 2   ; page 3
  [0x26, 0xc7, 0x06, 0xfe, 0x7f, 0x03, 0x03], // mov word [es:0x7ffe], 0x303 ; page 7
  [0x26, 0xc6, 0x06, 0x23, 0xf1, 0x04],       // mov byte [es:0xf123], 4   ; page 15
  [0x26, 0xc6, 0x06, 0x24, 0xf1, 0x04],       // mov byte [es:0xf124], 4   ; page 15 again
  [0x26, 0xa0, 0x00, 0x50],                   // mov al, [es:0x5000]       ; page 5, read only
  [0xe6, 0x10],                               // out 0x10, al
  [0x26, 0xc6, 0x06, 0x00, 0x30, 0x05],       // mov byte [es:0x3000], 5   ; page 3 again
  [0x26, 0xc6, 0x06, 0x00, 0x90, 0x06],       // mov byte [es:0x9000], 6   ; page 9
  [0xe6, 0x11],                               // out 0x11, al
  [0x26, 0xc6, 0x06, 0x00, 0xa0, 0x07],       // mov byte [es:0xa000], 7   ; page 10
  [0xe6, 0x12],                               // out 0x12, al
  [0xf4],                                     // hlt
];

function ringAndLoggedSlot(vm: Vm): void {
  vm.enableDirtyRing(64 * 1024);
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({
    slot: 1,
    guestPhysAddr: LOGGED,
    memorySize: ram.size,
    memory: ram,
    logDirtyPages: true,
  });
}

test("the dirty ring reports exactly the pages the guest wrote; after a reset, only new writes", () => {
  using g = guest(PROGRAM, { setup: ringAndLoggedSlot });
  const { vm, vcpu } = g;
  const ring = vm.dirtyRing(vcpu);
  strictEqual(ring.entries, 4096, "64 KiB of 16-byte entries");
  strictEqual(vm.dirtyRingBytes, 64 * 1024);
  strictEqual(ring.harvest(), 0, "nothing is dirty before the guest runs");

  strictEqual(nextOut(vcpu), "out 10 0");
  const pending = ring.pending;
  ok(pending >= 4, `${pending} entries for the four pages written`);
  const first = harvest(vm, vcpu);
  deepStrictEqual(first.pages, [0, 3, 7, 15], "the written pages, not the read one");
  deepStrictEqual(first.slots, [1], "only the logged slot has entries");
  strictEqual(first.entries, pending, "harvest visits every pending entry");
  strictEqual(ring.pending, 0, "harvested");
  strictEqual(vm.resetDirtyRings(), pending, "the reset recycles the harvested entries");
  strictEqual(vm.resetDirtyRings(), 0, "nothing more to reset");

  strictEqual(nextOut(vcpu), "out 11 0");
  // A visitor that throws leaves its entry (and the rest) for the next harvest.
  const before = ring.pending;
  ok(before >= 2, `${before} entries for pages 3 and 9`);
  const firstSeen: number[] = [];
  throws(() =>
    ring.harvest((_slot, offset) => {
      firstSeen.push(offset);
      throw new Error("visitor failed");
    }), /visitor failed/);
  strictEqual(ring.pending, before, "the entry the visitor threw on is not harvested");
  const again = harvest(vm, vcpu);
  strictEqual(again.entries, before, "the next harvest starts at that entry");
  ok(again.pages.includes(firstSeen[0]), `page ${firstSeen[0]}, the thrown-on one, comes again`);
  deepStrictEqual(again.pages, [3, 9], "page 3 was write-protected again by the reset");

  // Two harvests, then one reset for both.
  strictEqual(nextOut(vcpu), "out 12 0");
  deepStrictEqual(harvest(vm, vcpu).pages, [10], "only the new page");
  strictEqual(vm.harvestDirtyRings(), 0, "harvestDirtyRings: every ring is empty");
  ok(vm.resetDirtyRings() >= 3, "both harvests are reset at once");
  strictEqual(vcpu.run().reason, "hlt");
  deepStrictEqual(Array.from(vm.readGuest(LOGGED + 0x3000, 5)), [5, 0, 0, 0, 2]);
});

/**
 * Straight-line unreal-mode code that writes one byte to each of `pages`
 * pages from `base` up (`mov ebx, addr; mov [ebx], al` per page), then
 * `out 0x10, al` and `hlt`.
 */
function writePages(base: number, pages: number): Item[] {
  const items: Item[] = [];
  for (let i = 0; i < pages; i++) {
    const address = base + i * 0x1000;
    items.push([
      ...[
        0x66,
        0xbb,
        address & 0xff,
        (address >> 8) & 0xff,
        (address >> 16) & 0xff,
        address >>> 24,
      ],
      ...[0x67, 0x88, 0x03], // mov [ebx], al (through DS, whose limit is 4 GiB)
    ]);
  }
  items.push([0xe6, 0x10], [0xf4]); // out 0x10, al; hlt
  return items;
}

/**
 * The smallest ring this KVM accepts: one page (256 entries), or more where
 * the hardware's own log (Intel PML) reserves entries.
 */
function smallestRing(): number {
  using kvm = Kvm.open();
  for (let bytes = 4096;; bytes *= 2) {
    using vm = kvm.createVm();
    try {
      vm.enableDirtyRing(bytes);
      return bytes;
    } catch (e) {
      if (!(e instanceof KvmError) || e.code !== "EINVAL" || bytes >= 64 * 1024) throw e;
    }
  }
}

test("a full ring stops the vCPU with dirtyRingFull until it is harvested and reset", () => {
  const bytes = smallestRing();
  const entries = bytes / 16;
  // The kernel calls a ring full (soft limit) 64 entries or more before its
  // end, and checks on the next guest entry; so the guest writes 32 pages
  // fewer than the ring holds: past the limit, never past the end, even on a
  // KVM that emulates all of these writes in one go (kvm_pvm does: there the
  // full exit comes after the OUT).
  const written = entries - 32;
  const setup = (vm: Vm) => {
    vm.enableDirtyRing(bytes);
    const ram = vm.allocateMemory(entries * 0x1000);
    vm.setUserMemoryRegion({
      slot: 1,
      guestPhysAddr: 0x100000,
      memorySize: ram.size,
      memory: ram,
      logDirtyPages: true,
    });
  };
  using g = guest(writePages(0x100000, written), { setup, unreal: true });
  const { vm, vcpu } = g;
  strictEqual(vm.dirtyRing(vcpu).entries, entries);

  const seen = new Set<number>();
  const collect = (slot: number, offset: number) => {
    if (slot === 1) seen.add(offset);
  };
  const exits: string[] = [];
  // Bounded: the guest is straight-line code, and each full exit frees the ring.
  for (let round = 0; round < 16; round++) {
    const exit = vcpu.run();
    exits.push(exit.reason === "io" ? `out ${exit.port.toString(16)}` : exit.reason);
    if (exit.reason === "hlt") break;
    if (exit.reason !== "dirtyRingFull") continue;
    if (exits.filter((e) => e === "dirtyRingFull").length === 1) {
      const rip = vcpu.getRegs().rip;
      strictEqual(vcpu.run().reason, "dirtyRingFull", "it stays full while nothing is reset");
      const harvested = vm.harvestDirtyRings(collect);
      ok(harvested > 0 && harvested <= entries, `${harvested} entries at the full exit`);
      strictEqual(vcpu.run().reason, "dirtyRingFull", "harvesting alone does not free the ring");
      strictEqual(vcpu.getRegs().rip, rip, "the guest did not advance while full");
      strictEqual(vm.resetDirtyRings(), harvested, "the reset frees what was harvested");
    } else {
      vm.harvestDirtyRings(collect);
      vm.resetDirtyRings();
    }
  }
  strictEqual(exits.at(-1), "hlt", `the guest finished once the ring was reset: ${exits}`);
  ok(exits.includes("dirtyRingFull"), `a full exit came: ${exits}`);
  ok(exits.includes("out 10"), `the guest's OUT came: ${exits}`);
  vm.harvestDirtyRings(collect);
  deepStrictEqual(
    [...seen].sort((a, b) => a - b),
    Array.from({ length: written }, (_, i) => i),
    `every one of the ${written} written pages`,
  );
});
test("dirty-ring misuse gets typed errors; a closed vCPU's ring is unmapped", () => {
  using kvm = Kvm.open();
  {
    using vm = kvm.createVm();
    throws(() => vm.dirtyRing(0), kvmError("dirty ring", "EINVAL", /not enabled/));
    throws(() => vm.resetDirtyRings(), kvmError("KVM_RESET_DIRTY_RINGS", "EINVAL", /not enabled/));
    throws(
      () => vm.enableDirtyRing(12288),
      kvmError("KVM_ENABLE_CAP", "EINVAL", /12288 bytes is not a power of two/),
    );
    throws(() => vm.enableDirtyRing(2048), kvmError("KVM_ENABLE_CAP", "EINVAL", /power of two/));
    const max = vm.checkExtension("DIRTY_LOG_RING");
    if (max > 0) {
      throws(
        () => vm.enableDirtyRing(max * 2),
        kvmError("KVM_ENABLE_CAP", "E2BIG", /exceeds the kernel's/),
      );
    }
    vm.enableDirtyRing(16384);
    throws(() => vm.enableDirtyRing(16384), kvmError("KVM_ENABLE_CAP", "EINVAL", /already/));

    const ram = vm.allocateMemory(0x10000);
    vm.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 0,
      memorySize: ram.size,
      memory: ram,
      logDirtyPages: true,
    });
    throws(
      () => vm.getDirtyLog(0),
      kvmError("KVM_GET_DIRTY_LOG", "ENXIO", /the dirty ring is on/),
    );
    const vcpu = vm.createVcpu(0);
    const ring = vm.dirtyRing(vcpu);
    strictEqual(vm.dirtyRing(0), ring);
    throws(() => vm.dirtyRing(1), kvmError("dirty ring", "ENOENT", /vCPU 1 is not an open vCPU/));
    vcpu.close();
    strictEqual(ring.bytes.length, 0, "the ring's views are detached with its vCPU");
    throws(() => ring.harvest(), kvmError("harvest dirty ring", "EBADF", /vCPU 0 is closed/));
    throws(() => vm.dirtyRing(vcpu), kvmError("dirty ring", "ENOENT", /vCPU 0/));
    strictEqual(vm.harvestDirtyRings(), 0, "no open vCPU, no ring");
  }
  {
    using vm = kvm.createVm();
    vm.createVcpu(0).close();
    throws(
      () => vm.enableDirtyRing(16384),
      kvmError("KVM_ENABLE_CAP", "EINVAL", /before creating any vCPU/),
    );
  }
});
