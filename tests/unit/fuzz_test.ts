// A short seeded fuzz run of every target (the loaders and the device models),
// as a unit test: each iteration ends in a valid result or the module's typed
// error, never an untyped exception, a hang or unbounded memory. The seed is
// fixed so CI is reproducible; `deno task fuzz` runs long, with any seed.

import { strictEqual } from "node:assert/strict";
import { fuzzTarget, reproduce } from "../fuzz/fuzz.ts";
import { TARGETS } from "../fuzz/targets.ts";

const SEED = 20261129;
const ITERATIONS = 3000;

for (const target of TARGETS) {
  Deno.test(`fuzz: ${target.name}, ${ITERATIONS} iterations from seed ${SEED}`, () => {
    // The budget keeps the whole file near 10 s on a slow 2-core machine.
    const report = fuzzTarget(target, { seed: SEED, iterations: ITERATIONS, budgetMs: 2500 });
    const found = report.findings.map((f) => `${f.problem} (${reproduce(f)})`);
    strictEqual(found.length, 0, found.join("\n"));
  });
}
