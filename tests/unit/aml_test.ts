// The AML encoder and the DSDT: byte encodings from the ACPI specification's
// grammar (PkgLength, NameString, integers), and a DSDT whose table checksum
// holds; where the ACPICA disassembler (iasl) is installed, it must read the
// DSDT back as the devices and \_S5 it was built from.

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { buildDsdt, integer, nameString, pkgLength } from "../../src/boot/aml.ts";

Deno.test("AML PkgLength: one byte up to 63 in all, then a nibble and 1-3 bytes", () => {
  deepStrictEqual(pkgLength(0), [1]);
  deepStrictEqual(pkgLength(62), [63]);
  // 63 + 2 bytes = 65 = 0x41: lead byte 0b01 << 6 | 0x1, then 0x41 >> 4.
  deepStrictEqual(pkgLength(63), [0x41, 0x04]);
  deepStrictEqual(pkgLength(0xffff), [0x82, 0x00, 0x10]); // 0x10002 in all: 2 + 8 + 8 bits
});

Deno.test("AML NameString: root, dual and multi-segment paths, padding with _", () => {
  deepStrictEqual(nameString("_HID"), [0x5f, 0x48, 0x49, 0x44]);
  deepStrictEqual(nameString("\\_S5"), [0x5c, 0x5f, 0x53, 0x35, 0x5f]);
  deepStrictEqual(nameString("\\_SB.V000").slice(0, 2), [0x5c, 0x2e]);
  deepStrictEqual(nameString("A.B.C").slice(0, 2), [0x2f, 3]);
});

Deno.test("AML integers use the shortest encoding", () => {
  deepStrictEqual(integer(0), [0]);
  deepStrictEqual(integer(1), [1]);
  deepStrictEqual(integer(0x10), [0x0a, 0x10]);
  deepStrictEqual(integer(0x1000), [0x0b, 0x00, 0x10]);
  deepStrictEqual(integer(0xd0000000), [0x0c, 0, 0, 0, 0xd0]);
  deepStrictEqual(integer(2 ** 32), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
});

const DEVICES = [
  { address: 0xd000_0000, size: 0x1000, gsi: 16 },
  { address: 0xd000_1000, size: 0x1000, gsi: 17 },
];

Deno.test("DSDT: header, length and checksum", () => {
  const dsdt = buildDsdt({ virtio: DEVICES, s5SlpTyp: 0 });
  strictEqual(new TextDecoder().decode(dsdt.subarray(0, 4)), "DSDT");
  strictEqual(new DataView(dsdt.buffer).getUint32(4, true), dsdt.length);
  strictEqual(dsdt.reduce((a, b) => (a + b) & 0xff, 0), 0);
  ok(new TextDecoder().decode(dsdt).includes("LNRO0005"));
});

function hasIasl(): boolean {
  try {
    return new Deno.Command("iasl", { args: ["-v"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

Deno.test({
  name: "DSDT: iasl disassembles the virtio devices and \\_S5",
  ignore: !hasIasl(),
  fn() {
    const dir = Deno.makeTempDirSync();
    try {
      Deno.writeFileSync(`${dir}/dsdt.aml`, buildDsdt({ virtio: DEVICES, s5SlpTyp: 0 }));
      const r = new Deno.Command("iasl", {
        args: ["-d", `${dir}/dsdt.aml`],
        stdout: "null",
        stderr: "null",
      })
        .outputSync();
      ok(r.success, "iasl -d failed");
      const asl = Deno.readTextFileSync(`${dir}/dsdt.dsl`);
      ok(asl.includes("Device (V001)"));
      ok(asl.includes('Name (_HID, "LNRO0005")'));
      ok(/Memory32Fixed \(ReadWrite,\s*0xD0001000,\s*\/\/ Address Base\s*0x00001000/.test(asl));
      ok(
        /Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x00000011,/.test(
          asl,
        ),
      );
      ok(/Name \(\\_S5, Package \(0x04\)/.test(asl));
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
