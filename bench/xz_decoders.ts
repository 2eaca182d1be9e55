/**
 * The cold path of a first boot, piece by piece, for a bzImage with an xz
 * payload (issue 17): the TypeScript decoder against the system's liblzma
 * (on this thread, and on a blocking-pool thread while this one works), the
 * TypeScript decoder in a Worker, the hashes and the cache write. Prints one
 * line per measurement, in ms.
 *
 * ```
 * deno run -A bench/xz_decoders.ts [KERNEL]            # natively
 * deno task sandbox -- deno run -A bench/xz_decoders.ts  # in the sandbox
 * ```
 *
 * `KVM_XZ_BENCH_RUNS` (default 2) repeats each measurement; `KVM_XZ_BENCH_TS=0`
 * skips the TypeScript decoder (20-35 s in the sandbox).
 * A script, not a `deno bench` file (each case takes seconds).
 *
 * @module
 */

import { hostKernelPath } from "../src/boot/initramfs.ts";
import { bzImagePayload, compactElf } from "../src/boot/vmlinux.ts";
import { decompressXz } from "../src/boot/xz.ts";
import { liblzma, liblzmaProblem } from "../src/boot/xz_native.ts";
import { sha256Hex, writeExclusive } from "../src/cache_dir.ts";

const runs = Number(Deno.env.get("KVM_XZ_BENCH_RUNS") ?? 2);
const withTs = Deno.env.get("KVM_XZ_BENCH_TS") !== "0";
const kernelPath = Deno.args[0] ?? hostKernelPath();
if (!kernelPath) {
  console.log("xz_decoders: no kernel (pass a bzImage path)");
  Deno.exit(0);
}
const image = Deno.readFileSync(kernelPath);
const { format, payload } = bzImagePayload(image);
if (format !== "xz") {
  console.log(`xz_decoders: ${kernelPath} is ${format}-compressed, not xz`);
  Deno.exit(0);
}
const stream = payload.subarray(0, payload.length - 4);
const size = new DataView(payload.buffer, payload.byteOffset + payload.length - 4)
  .getUint32(0, true);
const lib = liblzma();
console.log(
  `xz_decoders: ${kernelPath}, ${stream.length} bytes of xz -> ${size}; ` +
    (lib ? `liblzma ${lib.version} (${lib.path})` : `no liblzma: ${liblzmaProblem()}`) +
    `; ${navigator.hardwareConcurrency} CPUs`,
);

const line = (what: string, ms: number, extra = "") =>
  console.log(`${what.padEnd(52)} ${ms.toFixed(0).padStart(7)} ms${extra ? `  ${extra}` : ""}`);

function time<T>(fn: () => T): [T, number] {
  const start = performance.now();
  const value = fn();
  return [value, performance.now() - start];
}

/** Main-thread work done while `promise` runs: how much of its time this thread keeps. */
async function busyWhile<T>(promise: Promise<T>): Promise<[T, number, number]> {
  const start = performance.now();
  let done = false;
  let value!: T;
  promise.then((v) => (value = v, done = true));
  let spins = 0;
  // Slices of 5 ms of work, with an event-loop turn between them to see the promise settle.
  while (!done) {
    const until = performance.now() + 5;
    while (performance.now() < until) spins++;
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  return [value, performance.now() - start, spins];
}

let reference: Uint8Array | undefined;
const same = (a: Uint8Array) =>
  reference === undefined ||
  (a.length === reference.length && a.every((b, i) => b === reference![i]));

for (let run = 0; run < runs; run++) {
  console.log(`-- run ${run + 1}`);
  line("SHA-256 of the bzImage (node:crypto)", time(() => sha256Hex(image))[1]);
  if (lib) {
    const [out, ms] = time(() => lib.decode(stream, { maxOutput: size }));
    reference ??= out;
    line("liblzma, this thread", ms);
    // A calibration of the busy loop alone, then the same loop while liblzma decodes.
    const [, aloneMs, aloneSpins] = await busyWhile(
      new Promise((resolve) => setTimeout(resolve, ms)),
    );
    const [outAsync, asyncMs, spins] = await busyWhile(
      lib.decodeAsync(stream, { maxOutput: size }),
    );
    line(
      "liblzma, blocking-pool thread, this thread busy",
      asyncMs,
      `this thread kept ${(100 * (spins / asyncMs) / (aloneSpins / aloneMs)).toFixed(0)} % ` +
        `of its speed; same bytes: ${same(outAsync)}`,
    );
  }
  if (withTs) {
    const [out, ms] = time(() => decompressXz(stream, { maxOutput: size }));
    line("TypeScript decoder, this thread", ms, `same bytes: ${same(out)}`);
    reference ??= out;
    const worker = new Worker(new URL("./xz_decoders_worker.ts", import.meta.url), {
      type: "module",
    });
    const done = new Promise<{ ms: number; length: number }>((resolve) => {
      worker.onmessage = (e) => resolve(e.data);
    });
    worker.postMessage({ stream });
    const [answer, totalMs] = await busyWhile(done);
    worker.terminate();
    line(
      "TypeScript decoder in a Worker (start to answer)",
      totalMs,
      `decode ${answer.ms.toFixed(0)} ms, start + transfer ${
        (totalMs - answer.ms).toFixed(0)
      } ms; length ${answer.length}`,
    );
  }
  if (reference) {
    const copy = reference.slice();
    const [compacted, compactMs] = time(() => compactElf(copy, { inPlace: true }));
    line("compactElf in place", compactMs, `${compacted.length} bytes`);
    line("SHA-256 of the compacted kernel (node:crypto)", time(() => sha256Hex(compacted))[1]);
    const [, digestMs] = time(() =>
      crypto.subtle.digest("SHA-256", compacted as Uint8Array<ArrayBuffer>)
    );
    line("crypto.subtle.digest, this thread's share (copy)", digestMs);
    const dir = Deno.makeTempDirSync();
    try {
      const [path, writeMs] = time(() => writeExclusive(dir, compacted, ".bench-", ".tmp"));
      line("cache write: exclusive create, write, fdatasync", writeMs);
      line("cache read back (readFileSync)", time(() => Deno.readFileSync(path))[1]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  }
}
