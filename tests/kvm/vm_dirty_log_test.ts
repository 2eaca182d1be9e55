// The dirty log reports exactly the pages the guest wrote. The guest's code
// and stack live in slot 0, which is not logged (under a nested MMU the code
// page can show up dirty too); the pages it writes are in slot 1, 16 pages
// at 0x10000 with KVM_MEM_LOG_DIRTY_PAGES. The guest reaches them through
// ES = 0x1000, so `[es:0xN000]` is page N of slot 1.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { bitmapPages, DirtyBitmap, KvmError, type Vm } from "../../mod.ts";
import { KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE } from "../../src/abi/mod.ts";
import { guest, type Item, nextOut } from "./vm_guest.ts";

const LOGGED = 0x10000;

function withLoggedSlot(vm: Vm) {
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({
    slot: 1,
    guestPhysAddr: LOGGED,
    memorySize: ram.size,
    memory: ram,
    logDirtyPages: true,
  });
}

function kvmError(operation: string, code: string, message: RegExp) {
  return (e: unknown) =>
    e instanceof KvmError && e.operation === operation && e.code === code &&
    message.test(e.message);
}

// deno-fmt-ignore
const PROGRAM: Item[] = [
  [0xbb, 0x00, 0x10],                         // mov bx, 0x1000
  [0x8e, 0xc3],                               // mov es, bx                ; ES base 0x10000
  [0x26, 0xc6, 0x06, 0x00, 0x00, 0x01],       // mov byte [es:0x0000], 1   ; page 0
  [0x26, 0xc6, 0x06, 0x04, 0x30, 0x02],       // mov byte [es:0x3004], 2   ; page 3
  [0x26, 0xc7, 0x06, 0xfe, 0x7f, 0x03, 0x03], // mov word [es:0x7ffe], 0x303 ; page 7
  [0x26, 0xc6, 0x06, 0x23, 0xf1, 0x04],       // mov byte [es:0xf123], 4   ; page 15
  [0x26, 0xa0, 0x00, 0x50],                   // mov al, [es:0x5000]       ; page 5, read only
  [0xe6, 0x10],                               // out 0x10, al
  [0x26, 0xc6, 0x06, 0x00, 0x30, 0x05],       // mov byte [es:0x3000], 5   ; page 3 again
  [0x26, 0xc6, 0x06, 0x00, 0x90, 0x06],       // mov byte [es:0x9000], 6   ; page 9
  [0xe6, 0x11],                               // out 0x11, al
  [0xf4],                                     // hlt
];

Deno.test("the dirty log reports exactly the pages the guest wrote, and a get resets it", () => {
  using g = guest(PROGRAM, { setup: withLoggedSlot });
  const { vm, vcpu } = g;
  deepStrictEqual(bitmapPages(vm.getDirtyLog(1)), [], "nothing is dirty before the guest runs");
  deepStrictEqual(bitmapPages(vm.getMemMap(1)), [], "no page of slot 1 is allocated yet");

  strictEqual(nextOut(vcpu), "out 10 0");
  const bitmap = vm.getDirtyLog(1);
  strictEqual(bitmap.length, 8, "16 pages round up to one 64-bit word");
  deepStrictEqual(bitmapPages(bitmap), [0, 3, 7, 15], "the written pages, not the read one");
  deepStrictEqual(bitmapPages(vm.getDirtyLog(1)), [], "the get reset the log");
  deepStrictEqual(
    bitmapPages(vm.getMemMap(1)),
    [0, 3, 5, 7, 15],
    "mincore: the pages the guest touched are allocated (the read one too)",
  );

  strictEqual(nextOut(vcpu), "out 11 0");
  deepStrictEqual(bitmapPages(vm.getDirtyLog(1)), [3, 9], "page 3 was protected again");
  deepStrictEqual(Array.from(vm.readGuest(LOGGED + 0x3000, 5)), [5, 0, 0, 0, 2]);
  strictEqual(nextOut(vcpu), "hlt");
});

Deno.test("a DirtyBitmap takes the log in place and lists its pages, in both of its scans", () => {
  using g = guest(PROGRAM, { setup: withLoggedSlot });
  const { vm, vcpu } = g;
  const simd = new DirtyBitmap(0x10000);
  const js = new DirtyBitmap(0x10000, { simd: false });
  const list = (d: DirtyBitmap) => Array.from(d.pages.subarray(0, d.scan()));

  strictEqual(vm.getDirtyLog(1, simd.bytes), simd.bytes, "the kernel wrote into the wasm memory");
  deepStrictEqual(list(simd), [], "nothing is dirty before the guest runs");
  strictEqual(nextOut(vcpu), "out 10 0");
  vm.getDirtyLog(1, simd.bytes);
  deepStrictEqual(list(simd), [0, 3, 7, 15], "the written pages, not the read one");
  deepStrictEqual(list(simd), bitmapPages(simd.bytes), "as the bit-by-bit scan");

  strictEqual(nextOut(vcpu), "out 11 0");
  vm.getDirtyLog(1, js.bytes);
  deepStrictEqual(list(js), [3, 9], "the JavaScript scan, after the second pass");
  vm.getDirtyLog(1, simd.bytes);
  deepStrictEqual(list(simd), [], "the get reset the log");
  strictEqual(nextOut(vcpu), "hlt");
});

Deno.test("with manual protect, a get keeps the log and clearDirtyLog resets it", () => {
  using g = guest(PROGRAM, {
    setup: (vm) => {
      ok(vm.checkExtension("MANUAL_DIRTY_LOG_PROTECT2") & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
      vm.enableCap("MANUAL_DIRTY_LOG_PROTECT2", [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE]);
      withLoggedSlot(vm);
    },
  });
  const { vm, vcpu } = g;
  strictEqual(nextOut(vcpu), "out 10 0");
  deepStrictEqual(bitmapPages(vm.getDirtyLog(1)), [0, 3, 7, 15]);
  deepStrictEqual(bitmapPages(vm.getDirtyLog(1)), [0, 3, 7, 15], "a get does not reset");
  // Clear only pages 0 and 3 (bit 0 of the bitmap is firstPage).
  const some = new Uint8Array(8);
  some[0] = 0b1001;
  vm.clearDirtyLog(1, 0, 16, some);
  deepStrictEqual(bitmapPages(vm.getDirtyLog(1)), [7, 15], "pages 0 and 3 were cleared");
  vm.clearDirtyLog(1);
  deepStrictEqual(bitmapPages(vm.getDirtyLog(1)), [], "clearDirtyLog reset the rest");

  strictEqual(nextOut(vcpu), "out 11 0");
  deepStrictEqual(bitmapPages(vm.getDirtyLog(1)), [3, 9], "cleared pages are logged again");
});

Deno.test("dirty-log bad input gets typed errors", () => {
  using g = guest([[0xf4]], { setup: withLoggedSlot });
  const { vm } = g;
  throws(
    () => vm.getDirtyLog(0),
    kvmError("KVM_GET_DIRTY_LOG", "ENOENT", /slot 0 has no dirty log/),
  );
  throws(() => vm.getDirtyLog(7), kvmError("KVM_GET_DIRTY_LOG", "ENOENT", /slot 7 is not set/));
  throws(() => vm.clearDirtyLog(1), kvmError("KVM_CLEAR_DIRTY_LOG", "EINVAL", /manual/));
  throws(() => vm.getMemMap(3), kvmError("mincore guest memory", "ENOENT", /slot 3/));
  vm.enableCap("MANUAL_DIRTY_LOG_PROTECT2", [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE]);
  throws(
    () => vm.clearDirtyLog(1, 3, 8),
    kvmError("KVM_CLEAR_DIRTY_LOG", "EINVAL", /first page 3 is not a multiple of 64/),
  );
  throws(
    () => vm.clearDirtyLog(1, 0, 32),
    kvmError("KVM_CLEAR_DIRTY_LOG", "EINVAL", /exceed the slot's 16 pages/),
  );
  throws(
    () => vm.getDirtyLog(1, new Uint8Array(4)),
    kvmError("KVM_GET_DIRTY_LOG", "EINVAL", /8-byte/),
  );
});
