// A short seeded fuzz run of the targets added for issue 12 (tests/fuzz/abi_boot_targets.ts):
// the Multiboot loader and the struct codecs' encoders. No iteration may throw
// an untyped exception or break an invariant. `deno task fuzz --target multiboot`
// (or `struct`) runs them long.

import { strictEqual } from "node:assert/strict";
import { fuzzTarget, reproduce } from "../fuzz/fuzz.ts";
import { ABI_BOOT_TARGETS } from "../fuzz/abi_boot_targets.ts";

const SEED = 20261130;
const ITERATIONS = 3000;

for (const target of ABI_BOOT_TARGETS) {
  Deno.test(`fuzz: ${target.name}, ${ITERATIONS} iterations from seed ${SEED}`, () => {
    const report = fuzzTarget(target, { seed: SEED, iterations: ITERATIONS, budgetMs: 2500 });
    const found = report.findings.map((f) => `${f.problem} (${reproduce(f)})`);
    strictEqual(found.length, 0, found.slice(0, 5).join("\n"));
  });
}
