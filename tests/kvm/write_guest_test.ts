// vm.writeGuest validates the bytes of a number array (review finding: 0.5
// was written as 0 and -1 as 255, a bigint threw an untyped TypeError): each
// bad value is a KvmError(EINVAL) naming `data[i]`, and nothing is written.
// Typed arrays and DataViews are written as their bytes, unchecked.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { Kvm, KvmError } from "../../mod.ts";

Deno.test("writeGuest: number arrays must hold integers 0..255; views are written as bytes", () => {
  using kvm = Kvm.open();
  const vm = kvm.createVm();
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });

  const bad: [unknown[], number, RegExp][] = [
    [[1, 0.5], 1, /data\[1\] 0\.5 /],
    [[-1], 0, /data\[0\] -1 /],
    [[7, 7, 256], 2, /data\[2\] 256 /],
    [[NaN], 0, /data\[0\] NaN /],
    [[1n], 0, /data\[0\] 1n /],
    [["1"], 0, /data\[0\] 1 /],
    [[Infinity], 0, /data\[0\] Infinity /],
  ];
  for (const [data, index, message] of bad) {
    ram.bytes.fill(0xaa, 0x100, 0x110);
    throws(
      () => vm.writeGuest(0x100, data as number[]),
      (e: unknown) => {
        ok(e instanceof KvmError, `a KvmError for ${String(data)}, got ${e}`);
        strictEqual(e.code, "EINVAL");
        strictEqual(e.operation, "write guest memory");
        ok(message.test(e.message), `${e.message} names data[${index}]`);
        return true;
      },
    );
    ok(ram.bytes.subarray(0x100, 0x110).every((b) => b === 0xaa), `nothing written for ${data}`);
  }

  vm.writeGuest(0x200, [0, 1, 0x7f, 0xff]);
  deepStrictEqual([...ram.bytes.subarray(0x200, 0x204)], [0, 1, 0x7f, 0xff]);
  vm.writeGuest(0x300, new Uint8Array([9, 8, 7]));
  deepStrictEqual([...ram.bytes.subarray(0x300, 0x303)], [9, 8, 7]);
  // Other views: their bytes (little-endian x86), not elements truncated to bytes.
  vm.writeGuest(0x400, new Uint16Array([0x1234, 0xabcd]));
  deepStrictEqual([...ram.bytes.subarray(0x400, 0x404)], [0x34, 0x12, 0xcd, 0xab]);
  const backing = new Uint8Array([1, 2, 3, 4, 5, 6]);
  vm.writeGuest(0x500, new DataView(backing.buffer, 2, 3));
  deepStrictEqual([...ram.bytes.subarray(0x500, 0x504)], [3, 4, 5, 0]);
  vm.writeGuest(0x600, new Int8Array([-1, -128]));
  deepStrictEqual([...ram.bytes.subarray(0x600, 0x602)], [0xff, 0x80]);
});
