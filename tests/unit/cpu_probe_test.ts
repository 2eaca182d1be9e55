// What the CPU probe's findings do to a CPUID table and to Linux's command
// line (the probing itself needs KVM: tests/kvm/linux_boot_test.ts prints it).

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import {
  type CpuidBit,
  type CpuProbeReport,
  hideUnusableFeatures,
  linuxClearCpuid,
} from "../../src/boot/cpu_probe.ts";
import type { CpuidEntry } from "../../src/abi/cpuid.ts";

const entry = (fn: number, index: number, regs: Partial<CpuidEntry> = {}): CpuidEntry => ({
  function: fn,
  index,
  flags: 0,
  eax: 0,
  ebx: 0,
  ecx: 0,
  edx: 0,
  ...regs,
});

const CX16: CpuidBit = { leaf: 1, index: 0, reg: "ecx", bit: 13 };
const XSAVE: CpuidBit = { leaf: 1, index: 0, reg: "ecx", bit: 26 };
const AVX: CpuidBit = { leaf: 1, index: 0, reg: "ecx", bit: 28 };

function report(unusable: string[], hiddenBits: CpuidBit[], stuckBits: CpuidBit[]): CpuProbeReport {
  return { results: [], unusable, hiddenBits, zeroLeaves: [0xd], stuckBits, ms: 0 };
}

Deno.test("cpu probe: hidden bits are cleared, leaf 0xD zeroed, other bits and leaves kept", () => {
  const table = [
    entry(1, 0, { ecx: 0xffff_ffff, ebx: 0x0102_0800 }),
    entry(0xd, 0, { eax: 0x2e7, ebx: 0xa88 }),
    entry(0xd, 1, { eax: 0xf }),
    entry(7, 0, { ebx: 0x1 }),
  ];
  hideUnusableFeatures(table, report(["cx16", "xsave"], [CX16, XSAVE, AVX], []));
  strictEqual(table[0].ecx, (0xffff_ffff & ~(1 << 13 | 1 << 26 | 1 << 28)) >>> 0);
  strictEqual(table[0].ebx, 0x0102_0800);
  deepStrictEqual([table[1].eax, table[1].ebx, table[2].eax], [0, 0, 0]);
  strictEqual(table[3].ebx, 1);
});

Deno.test("cpu probe: clearcpuid= names Linux's X86_FEATURE numbers of the stuck features only", () => {
  // cx16 could be hidden through CPUID; xsave was forced on by the KVM.
  strictEqual(
    linuxClearCpuid(report(["cx16", "xsave"], [CX16, XSAVE, AVX], [XSAVE, AVX])),
    "clearcpuid=154", // X86_FEATURE_XSAVE = 4 * 32 + 26; Linux clears AVX with it
  );
  strictEqual(linuxClearCpuid(report(["cx16"], [CX16], [])), undefined);
  strictEqual(
    linuxClearCpuid(
      report(["popcnt", "smap"], [], [
        { leaf: 1, index: 0, reg: "ecx", bit: 23 },
        { leaf: 7, index: 0, reg: "ebx", bit: 20 },
      ]),
    ),
    "clearcpuid=151,308", // POPCNT 4*32+23, SMAP 9*32+20
  );
});
