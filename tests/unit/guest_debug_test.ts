// The encoding of KVM_SET_GUEST_DEBUG's argument: control flags and the DR7
// image (Intel SDM vol. 3, "Debug Control Register (DR7)"), checked bit by bit.

import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { KvmGuestDebug } from "../../src/abi/debug.ts";
import { encodeGuestDebug } from "../../src/kvm/guest_debug.ts";
import { KvmError } from "../../src/errors.ts";

Deno.test("encodeGuestDebug: flags, DR0-DR3 addresses, and DR7 enable/RW/LEN fields", () => {
  const out = new KvmGuestDebug();
  encodeGuestDebug({
    singleStep: true,
    softwareBreakpoints: true,
    hardwareBreakpoints: [
      { address: 0x1008, kind: "exec" },
      { address: 0x3000, kind: "write", length: 2 },
      { address: 0x4000, kind: "readwrite", length: 8 },
      { address: 0x5000n, kind: "write", length: 4 },
    ],
  }, out);
  // ENABLE | SINGLESTEP | USE_SW_BP | USE_HW_BP
  strictEqual(out.control, 0x1 | 0x2 | 0x10000 | 0x20000);
  deepStrictEqual([...out.debugreg.subarray(0, 4)], [0x1008n, 0x3000n, 0x4000n, 0x5000n]);
  const dr7 = 0b10_10_10_10n | // G0..G3
    (0b00_00n << 16n) | // DR0: exec, length 1
    (0b01_01n << 20n) | // DR1: write, length 2
    (0b10_11n << 24n) | // DR2: read/write, length 8
    (0b11_01n << 28n); // DR3: write, length 4
  strictEqual(out.debugreg[7], dr7);

  encodeGuestDebug({ singleStep: true }, out);
  strictEqual(out.control, 0x3, "no hardware breakpoints: DR7 stays 0");
  strictEqual(out.debugreg[7], 0n);
  encodeGuestDebug({ enable: false, singleStep: true }, out);
  strictEqual(out.control, 0, "disabled");
});

Deno.test("encodeGuestDebug refuses five breakpoints, bad lengths and misalignment", () => {
  const out = new KvmGuestDebug();
  const einval = (e: unknown) => e instanceof KvmError && e.code === "EINVAL";
  const bp = { address: 0x1000, kind: "exec" as const };
  throws(() => encodeGuestDebug({ hardwareBreakpoints: [bp, bp, bp, bp, bp] }, out), einval);
  throws(
    () =>
      encodeGuestDebug({
        hardwareBreakpoints: [{ address: 0x1000, kind: "write", length: 3 as 4 }],
      }, out),
    einval,
  );
  throws(
    () =>
      encodeGuestDebug({
        hardwareBreakpoints: [{ address: 0x1002, kind: "readwrite", length: 4 }],
      }, out),
    einval,
  );
});
