// `deno task fuzz [--iterations N] [--seed S] [--target NAME]... [--iteration I]`:
// long seeded fuzz runs of the loaders and device models. The seed is printed
// (random when not given); each finding prints the command that reproduces it.
// Exit status 1 when anything was found.

import { parseArgs } from "node:util";
import { fuzzTarget, reproduce } from "./fuzz.ts";
import { ABI_BOOT_TARGETS } from "./abi_boot_targets.ts";
import { TARGETS as LOADER_DEVICE_TARGETS } from "./targets.ts";
import { VIRTIO_TARGETS } from "./virtio_targets.ts";

/** Every target: the loaders and legacy devices, virtio, Multiboot and the struct codecs. */
const TARGETS = [...LOADER_DEVICE_TARGETS, ...VIRTIO_TARGETS, ...ABI_BOOT_TARGETS];

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    iterations: { type: "string" },
    seed: { type: "string" },
    target: { type: "string", multiple: true },
    iteration: { type: "string" },
  },
});
const seed = args.seed !== undefined ? Number(args.seed) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
const one = args.iteration !== undefined ? Number(args.iteration) : undefined;
const iterations = one !== undefined ? 1 : Number(args.iterations ?? 10000);
const names = args.target ?? [];
const unknown = names.filter((n) => !TARGETS.some((t) => t.name === n));
if (unknown.length > 0 || !Number.isInteger(iterations) || iterations < 1) {
  console.error(
    `usage: deno task fuzz [--iterations N] [--seed S] [--target ${
      TARGETS.map((t) => t.name).join("|")
    }]... [--iteration I]`,
  );
  Deno.exit(2);
}
const targets = names.length > 0 ? TARGETS.filter((t) => names.includes(t.name)) : TARGETS;
console.log(`fuzz: seed ${seed}, ${iterations} iterations per target`);
let found = 0;
for (const target of targets) {
  const report = fuzzTarget(target, { seed, iterations, first: one ?? 0 });
  console.log(
    `${target.name.padEnd(8)} ${report.iterations} iterations (${report.accepted} accepted, ` +
      `${report.refused} refused with a typed error) in ${(report.ms / 1000).toFixed(1)} s, ` +
      `${report.findings.length} findings`,
  );
  for (const f of report.findings.slice(0, 10)) {
    console.log(`  FINDING ${f.problem}\n    reproduce: ${reproduce(f)}`);
  }
  found += report.findings.length;
}
Deno.exit(found > 0 ? 1 : 0);
