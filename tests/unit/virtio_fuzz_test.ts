// A short seeded fuzz run of the virtio targets (the virtqueue parser, the
// virtio-mmio registers, virtio-blk, virtio-rng), as a unit test: no
// iteration may throw or break an invariant. `deno task fuzz --target virtq`
// (and the others) runs them long.

import { strictEqual } from "node:assert/strict";
import { fuzzTarget, reproduce } from "../fuzz/fuzz.ts";
import { VIRTIO_TARGETS } from "../fuzz/virtio_targets.ts";

const SEED = 20261130;
const ITERATIONS = 3000;

for (const target of VIRTIO_TARGETS) {
  Deno.test(`fuzz: ${target.name}, ${ITERATIONS} iterations from seed ${SEED}`, () => {
    const report = fuzzTarget(target, { seed: SEED, iterations: ITERATIONS, budgetMs: 2500 });
    const found = report.findings.map((f) => `${f.problem} (${reproduce(f)})`);
    strictEqual(found.length, 0, found.slice(0, 5).join("\n"));
  });
}
