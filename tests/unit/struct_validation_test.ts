// The struct layer refuses values its fields cannot hold (issue 12): one
// KvmError EINVAL, operation "encode <struct>", naming the field, for every
// scalar type, through setters and assign(); the field keeps its old bytes.
// Also the real codecs (kvm_regs, kvm_userspace_memory_region, kvm_cpuid_entry2).

import { deepStrictEqual, ok as assert, strictEqual } from "node:assert/strict";
import { defineStruct, fitsScalar, type Scalar } from "../../src/abi/struct.ts";
import { KvmRegs as Regs } from "../../src/abi/x86.ts";
import { KvmUserspaceMemoryRegion as UserspaceMemoryRegion } from "../../src/abi/memory.ts";
import { KvmCpuidEntry2 as CpuidEntry2 } from "../../src/abi/cpuid.ts";
import { KvmError } from "../../src/errors.ts";

const Every = defineStruct("struct every", 64, {
  a: { offset: 0, type: "u8" },
  b: { offset: 1, type: "i8" },
  c: { offset: 2, type: "u16" },
  d: { offset: 4, type: "i16" },
  e: { offset: 8, type: "u32" },
  f: { offset: 12, type: "i32" },
  g: { offset: 16, type: "u64" },
  h: { offset: 24, type: "i64" },
  list: { offset: 32, type: "u16", count: 4 },
  wide: { offset: 40, type: "u64", count: 2 },
  inner: {
    offset: 56,
    type: defineStruct("struct inner", 8, { x: { offset: 0, type: "u32" } }),
  },
});

/** [field, type, accepted values, refused values]. */
const CASES: [string, Scalar, unknown[], unknown[]][] = [
  ["a", "u8", [0, 1, 0xff], [-1, 0x100, 0.5, NaN, Infinity, "1", 1n, null, undefined]],
  ["b", "i8", [-0x80, 0, 0x7f], [0x80, -0x81, 1.5, NaN, 1n]],
  ["c", "u16", [0, 0xffff], [-1, 0x10000, 2.5, -Infinity, 1n]],
  ["d", "i16", [-0x8000, 0x7fff], [0x8000, -0x8001, 0.1, 1n]],
  ["e", "u32", [0, 0xffffffff, 1 | 0x80000000, -1], [2 ** 32, -(2 ** 31) - 1, 0.5, NaN, 1n]],
  ["f", "i32", [-(2 ** 31), 2 ** 31 - 1, 0xffffffff], [2 ** 32, -(2 ** 31) - 1, 0.5, 1n]],
  [
    "g",
    "u64",
    [0, 0n, 2 ** 53, 2n ** 64n - 1n, 0xffffffff80000000n],
    [-1, -1n, 2 ** 64, 2n ** 64n, 0.5, NaN, Infinity, "1", null],
  ],
  [
    "h",
    "i64",
    [-(2n ** 63n), 2n ** 63n - 1n, -1, -(2 ** 63)],
    [2n ** 63n, -(2n ** 63n) - 1n, 2 ** 63, 0.5, NaN, "1"],
  ],
];

function refusal(fn: () => unknown, field: string, structName = "struct every"): KvmError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert(caught instanceof KvmError, `expected a KvmError for ${field}, got ${caught}`);
  strictEqual(caught.code, "EINVAL");
  strictEqual(caught.operation, `encode ${structName}`);
  assert(caught.message.includes(`field ${field} `), caught.message);
  return caught;
}

for (const [field, type, good, bad] of CASES) {
  Deno.test(`struct ${type} field: integers in range stored, anything else a KvmError naming it`, () => {
    const s = new Every() as unknown as Record<string, unknown> & InstanceType<typeof Every>;
    for (const v of good) {
      assert(fitsScalar(type, v), `${type} accepts ${String(v)}`);
      s[field] = v;
      s.assign({ [field]: v });
      const expected = type === "u64"
        ? BigInt.asUintN(64, BigInt(v as number | bigint))
        : type === "i64"
        ? BigInt.asIntN(64, BigInt(v as number | bigint))
        : type === "u32"
        ? (v as number) >>> 0
        : type === "i32"
        ? (v as number) | 0
        : v;
      strictEqual(s[field], expected, `${type} ${String(v)} reads back`);
    }
    s[field] = type.endsWith("64") ? 7n : 7;
    const before = s.bytes.slice();
    for (const v of bad) {
      assert(!fitsScalar(type, v), `${type} refuses ${String(v)}`);
      const e = refusal(() => {
        s[field] = v;
      }, field);
      assert(e.message.includes(`(${type})`), e.message);
      // assign() skips undefined fields (a subset of the fields is the point of it).
      if (v !== undefined) refusal(() => s.assign({ [field]: v } as never), field);
      deepStrictEqual(s.bytes, before, `a refused ${String(v)} left ${field} as it was`);
    }
  });
}

Deno.test("struct arrays and nested structs: assign() checks every element first", () => {
  const s = new Every();
  s.assign({ list: [1, 2, 0xffff], wide: [1, 2n ** 64n - 1n] });
  deepStrictEqual(Array.from(s.list), [1, 2, 0xffff, 0]);
  deepStrictEqual(Array.from(s.wide), [1n, 2n ** 64n - 1n]);
  const before = s.bytes.slice();
  const e = refusal(() => s.assign({ list: [1, 2, 0x10000] }), "list[2]");
  assert(e.message.includes("65536"), e.message);
  refusal(() => s.assign({ wide: [0, -1n] }), "wide[1]");
  refusal(() => s.assign({ list: [1, 2, 3, 4, 5] }), "list");
  refusal(() => s.assign({ list: 5 as unknown as number[] }), "list");
  deepStrictEqual(s.bytes, before, "refused arrays stored nothing");
  refusal(() => s.assign({ inner: { x: 2 ** 32 } }), "x", "struct inner");
  s.assign({ inner: { x: 0xdeadbeef } });
  strictEqual(s.inner.x, 0xdeadbeef);
});

Deno.test("the kernel's structs refuse out-of-range fields by name", () => {
  const regs = new Regs();
  refusal(() => regs.assign({ rip: 2n ** 64n }), "rip", Regs.cName);
  refusal(() => regs.assign({ rax: 0.5 }), "rax", Regs.cName);
  refusal(
    () => {
      regs.rflags = -1n;
    },
    "rflags",
    Regs.cName,
  );
  const region = new UserspaceMemoryRegion();
  refusal(() => region.assign({ slot: 2 ** 32 }), "slot", UserspaceMemoryRegion.cName);
  refusal(
    () => region.assign({ guestPhysAddr: 2 ** 64 }),
    "guestPhysAddr",
    UserspaceMemoryRegion.cName,
  );
  const entry = new CpuidEntry2();
  entry.ecx = entry.ecx | 0x80000000; // a bitwise result is negative: the same 32 bits, accepted
  strictEqual(entry.ecx, 0x80000000);
  refusal(
    () => {
      entry.eax = NaN;
    },
    "eax",
    CpuidEntry2.cName,
  );
});
