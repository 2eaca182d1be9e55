// Guest writes that never leave the kernel: ioeventfds (KVM_IOEVENTFD, PIO
// and MMIO, with and without datamatch) signal an eventfd instead of exiting,
// and coalesced zones (KVM_REGISTER_COALESCED_MMIO, MMIO and PIO) queue the
// writes in the ring shared through the vCPU's mapping.

import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { CoalescedRing, EventFd, KvmError } from "../../mod.ts";
import { guest, nextOut } from "./vm_guest.ts";

// deno-fmt-ignore
const IOEVENT_PROGRAM = [
  [0xba, 0x00, 0x05],                   // mov dx, 0x500
  [0xb0, 0x41],                         // mov al, 0x41
  [0xee],                               // out dx, al          ; ioeventfd, any value: no exit
  [0xba, 0x02, 0x05],                   // mov dx, 0x502
  [0xb8, 0x34, 0x12],                   // mov ax, 0x1234
  [0xef],                               // out dx, ax          ; datamatch 0x1234: no exit
  [0xb8, 0x11, 0x11],                   // mov ax, 0x1111
  [0xef],                               // out dx, ax          ; other data: an I/O exit
  [0xbb, 0x00, 0x20],                   // mov bx, 0x2000
  [0x8e, 0xc3],                         // mov es, bx          ; ES base 0x20000: no RAM there
  [0x26, 0xc6, 0x06, 0x00, 0x00, 0x42], // mov byte [es:0], 0x42      ; datamatch 0x42: no exit
  [0x26, 0xc6, 0x06, 0x00, 0x00, 0x43], // mov byte [es:0], 0x43      ; other data: MMIO exit
  [0x26, 0xc7, 0x06, 0x10, 0x00, 0xef, 0xbe], // mov word [es:0x10], 0xbeef ; any value: no exit
  [0xb0, 0x01],                         // mov al, 1
  [0xe6, 0x10],                         // out 0x10, al        ; done
  [0xf4],                               // hlt
];

Deno.test("ioeventfds are signalled by guest writes without an exit", () => {
  using g = guest(IOEVENT_PROGRAM);
  const { vm, vcpu } = g;
  using pio = EventFd.create();
  using pioMatch = EventFd.create();
  using mmioMatch = EventFd.create();
  using mmioAny = EventFd.create();
  vm.registerIoevent(pio, 0x500, { pio: true });
  vm.registerIoevent(pioMatch, 0x502, { pio: true, datamatch: 0x1234, length: 2 });
  vm.registerIoevent(mmioMatch, 0x20000, { datamatch: 0x42, length: 1 });
  vm.registerIoevent(mmioAny, 0x20010);

  const exits = [nextOut(vcpu), nextOut(vcpu), nextOut(vcpu), nextOut(vcpu)];
  deepStrictEqual(exits, ["out 502 1111", "mmio write 20000 43", "out 10 1", "hlt"]);
  strictEqual(pio.read(), 1n, "the PIO write signalled its eventfd");
  strictEqual(pioMatch.read(), 1n, "the matching PIO write signalled, the other did not");
  strictEqual(mmioMatch.read(), 1n, "the matching MMIO write signalled, the other did not");
  strictEqual(mmioAny.read(), 1n, "the MMIO write signalled its eventfd");

  // Unbound, the same writes exit as usual.
  vm.unregisterIoevent(pio, 0x500, { pio: true });
  vm.unregisterIoevent(mmioAny, 0x20010);
  vcpu.setRegs(vcpu.getRegs().assign({ rip: 0x1000n }));
  const again = Array.from({ length: 6 }, () => nextOut(vcpu));
  deepStrictEqual(again, [
    "out 500 41",
    "out 502 1111",
    "mmio write 20000 43",
    "mmio write 20010 ef,be",
    "out 10 1",
    "hlt",
  ]);
  strictEqual(pio.read(), 0n);
  strictEqual(pioMatch.read(), 1n, "the still-bound datamatch fired again");

  throws(
    () => vm.registerIoevent(pio, 0x500, { pio: true, datamatch: 1, length: 3 }),
    (e) => e instanceof KvmError && e.code === "EINVAL" && /length 3/.test(e.message),
  );
});

// deno-fmt-ignore
const COALESCED_PROGRAM = [
  [0xbb, 0x00, 0x30],                   // mov bx, 0x3000
  [0x8e, 0xc3],                         // mov es, bx                   ; ES base 0x30000
  [0x26, 0xc6, 0x06, 0x00, 0x00, 0x11], // mov byte [es:0], 0x11
  [0x26, 0xc7, 0x06, 0x02, 0x00, 0x22, 0x33], // mov word [es:2], 0x3322
  [0x26, 0x66, 0xc7, 0x06, 0x04, 0x00, 0x44, 0x55, 0x66, 0x77], // mov dword [es:4], 0x77665544
  [0xba, 0x00, 0x06],                   // mov dx, 0x600
  [0xb0, 0x88],                         // mov al, 0x88
  [0xee],                               // out dx, al                   ; coalesced port
  [0x26, 0xc6, 0x06, 0x01, 0x00, 0x99], // mov byte [es:1], 0x99
  [0xe6, 0x10],                         // out 0x10, al                 ; the only exit
  [0x26, 0xc6, 0x06, 0x08, 0x00, 0xaa], // mov byte [es:8], 0xaa        ; zone removed: exits
  [0xf4],                               // hlt
];

Deno.test("the coalesced ring holds the guest's MMIO and PIO writes in order, without exits", () => {
  using g = guest(COALESCED_PROGRAM);
  const { vm, vcpu } = g;
  vm.registerCoalescedMmio(0x30000, 0x100);
  vm.registerCoalescedPio(0x600, 4);
  const ring = vm.coalescedRing();
  strictEqual(ring.pending, 0);

  strictEqual(nextOut(vcpu), "out 10 88", "five writes, then the first exit");
  strictEqual(ring.pending, 5);
  const writes = ring.read().map((w) => ({
    address: w.address,
    pio: w.pio,
    data: [...w.data.subarray(0, w.length)],
  }));
  deepStrictEqual(writes, [
    { address: 0x30000, pio: false, data: [0x11] },
    { address: 0x30002, pio: false, data: [0x22, 0x33] },
    { address: 0x30004, pio: false, data: [0x44, 0x55, 0x66, 0x77] },
    { address: 0x600, pio: true, data: [0x88] },
    { address: 0x30001, pio: false, data: [0x99] },
  ]);
  strictEqual(ring.pending, 0, "reading consumed the entries");

  vm.unregisterCoalescedMmio(0x30000, 0x100);
  strictEqual(nextOut(vcpu), "mmio write 30008 aa", "without the zone the write exits");
  strictEqual(ring.drain(() => {}), 0);
  strictEqual(CoalescedRing.capacity, 170);
});
