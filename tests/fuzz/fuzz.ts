// The fuzz driver shared by `deno task fuzz` (tests/fuzz/run.ts) and the
// short CI run (tests/unit/fuzz_test.ts): iterations of each target from one
// seed, each iteration reproducible alone, findings collected with what
// reproduces them.

import { Prng } from "./prng.ts";
import type { FuzzTarget } from "./targets.ts";

/** A failure found by the fuzzer. */
export interface Finding {
  /** The target. */
  target: string;
  /** The seed of the run. */
  seed: number;
  /** The iteration: with the seed and target, all that reproduces it. */
  iteration: number;
  /** What went wrong. */
  problem: string;
}

/** What one target's run did. */
export interface TargetReport {
  /** The target. */
  target: string;
  /** Iterations run. */
  iterations: number;
  /** Iterations that ended in the module's typed error. */
  refused: number;
  /** Iterations that ended in a valid result. */
  accepted: number;
  /** Findings. */
  findings: Finding[];
  /** Milliseconds spent. */
  ms: number;
}

/** Options of {@linkcode fuzzTarget}. */
export interface FuzzOptions {
  /** The run's seed. */
  seed: number;
  /** Iterations to run (from `first`). */
  iterations: number;
  /** The first iteration (default 0). */
  first?: number;
  /** Stop early after this many milliseconds (default: no limit). */
  budgetMs?: number;
  /** An iteration slower than this is a finding (a near-hang; default 2000 ms). */
  slowMs?: number;
  /** Resident memory above this is a finding (default 2 GiB). */
  maxRssBytes?: number;
}

/** Runs one target, then its `close`; never throws for what the target does. */
export function fuzzTarget(target: FuzzTarget, options: FuzzOptions): TargetReport {
  const report: TargetReport = {
    target: target.name,
    iterations: 0,
    refused: 0,
    accepted: 0,
    findings: [],
    ms: 0,
  };
  const start = performance.now();
  try {
    runIterations(target, options, report, start);
  } finally {
    target.close?.();
  }
  report.ms = performance.now() - start;
  return report;
}

/** The iterations of {@linkcode fuzzTarget}, recorded in `report`. */
function runIterations(
  target: FuzzTarget,
  options: FuzzOptions,
  report: TargetReport,
  start: number,
): void {
  const { seed, iterations, first = 0, budgetMs = Infinity } = options;
  const slowMs = options.slowMs ?? 2000;
  const maxRss = options.maxRssBytes ?? 2 * 1024 ** 3;
  for (let i = first; i < first + iterations; i++) {
    const rng = Prng.for(seed, target.name, i);
    const t0 = performance.now();
    const finding = (problem: string) =>
      report.findings.push({ target: target.name, seed, iteration: i, problem });
    try {
      target.run(rng);
      report.accepted++;
    } catch (e) {
      if (target.allowed.some((type) => e instanceof type)) report.refused++;
      else finding(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
    }
    const took = performance.now() - t0;
    if (took > slowMs) finding(`slow: ${took.toFixed(0)} ms`);
    report.iterations++;
    if (i % 64 === 0) {
      const rss = Deno.memoryUsage().rss;
      if (rss > maxRss) finding(`resident memory ${rss} bytes`);
    }
    if (performance.now() - start > budgetMs) break;
  }
}

/** The command that reproduces a finding. */
export function reproduce(f: Finding): string {
  return `deno task fuzz --seed ${f.seed} --target ${f.target} --iteration ${f.iteration}`;
}
