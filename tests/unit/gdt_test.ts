// The GDT entry encoder against descriptors whose encodings are well known.

import { strictEqual } from "node:assert/strict";
import { gdtEntry } from "../../src/boot/modes.ts";

Deno.test("gdtEntry encodes flat code, data and TSS descriptors", () => {
  strictEqual(gdtEntry(0, 0xfffff, 0x9b, 0xc), 0x00cf9b000000ffffn, "32-bit flat code");
  strictEqual(gdtEntry(0, 0xfffff, 0x93, 0xc), 0x00cf93000000ffffn, "32-bit flat data");
  strictEqual(gdtEntry(0, 0xfffff, 0x9b, 0xa), 0x00af9b000000ffffn, "64-bit code (L=1)");
  strictEqual(gdtEntry(0x12345678, 0x67, 0x8b, 0), 0x12008b345678_0067n, "TSS with a base");
  strictEqual(
    gdtEntry(0xff000000, 0xabcde, 0x92, 0x4),
    0xff4a92000000bcden,
    "base and limit split",
  );
});
