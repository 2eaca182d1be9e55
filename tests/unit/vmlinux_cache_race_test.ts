// Concurrent first boots of the same new kernel (issue 17): several processes
// find the cache empty at the same moment and each extracts and writes the
// entry (the synchronous and the background writer side by side). Every one
// must get the right kernel, and the cache must end with exactly one whole,
// verified entry and no temporary files.

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { createHash } from "node:crypto";
import { hostKernelPath } from "../../src/boot/initramfs.ts";
import {
  bzImagePayload,
  cachedVmlinux,
  cachedVmlinuxAsync,
  compactElf,
  extractVmlinux,
} from "../../src/boot/vmlinux.ts";
import { tinyBzImage } from "../fuzz/samples.ts";

const CHILD = new URL("./vmlinux_cache_child.ts", import.meta.url).pathname;
const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

interface Report {
  source: "cache" | "extracted";
  path: string;
  sha256: string;
}

/** Starts one child per mode, lets them go at once, and returns what each reported. */
async function race(kernel: string, modes: string[]): Promise<{ reports: Report[]; dir: string }> {
  const dir = Deno.makeTempDirSync({ prefix: "vmlinux-race-" });
  const signals = Deno.makeTempDirSync({ prefix: "vmlinux-race-signals-" });
  try {
    const children = modes.map((mode, i) =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "--no-check",
          CHILD,
          dir,
          mode,
          kernel,
          `${signals}/ready-${i}`,
          `${signals}/go`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn()
    );
    // Bounded: children that never get ready are killed and the test fails.
    const deadline = Date.now() + 60_000;
    while (modes.some((_, i) => !exists(`${signals}/ready-${i}`)) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    Deno.writeFileSync(`${signals}/go`, new Uint8Array());
    const timer = setTimeout(() => children.forEach((c) => c.kill("SIGKILL")), 180_000);
    const outputs = await Promise.all(children.map((c) => c.output()));
    clearTimeout(timer);
    const reports = outputs.map((out, i) => {
      const stderr = new TextDecoder().decode(out.stderr);
      strictEqual(out.code, 0, `child ${i} (${modes[i]}) failed:\n${stderr}`);
      return JSON.parse(new TextDecoder().decode(out.stdout)) as Report;
    });
    return { reports, dir };
  } finally {
    Deno.removeSync(signals, { recursive: true });
  }
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The cache after the race: one entry, its hash, nothing else; the entry verifies and is read back. */
function checkCache(dir: string, image: Uint8Array, expected: string, reports: Report[]): void {
  const path = reports[0].path;
  ok(reports.every((r) => r.path === path), "one entry name for all");
  deepStrictEqual(
    [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
    [path.slice(dir.length + 1), `${path.slice(dir.length + 1)}.md5`],
    "the kernel and its check, no temporary files left",
  );
  const stored = Deno.readFileSync(path);
  strictEqual(
    Deno.readTextFileSync(`${path}.md5`),
    `md5 ${createHash("md5").update(stored).digest("hex")} ${stored.length}\n`,
    "the entry matches the MD5 and size beside it",
  );
  strictEqual(sha256(stored), expected);
  const again = cachedVmlinux(image, { directory: dir });
  strictEqual(again.source, "cache", "a later boot reads the entry back");
  strictEqual(sha256(again.vmlinux), expected);
}

Deno.test("vmlinux cache: four processes extracting the same small kernel at once leave one whole entry", async () => {
  const image = tinyBzImage();
  const expected = sha256(compactElf(extractVmlinux(image)));
  for (let round = 0; round < 3; round++) {
    const { reports, dir } = await race("tiny", ["sync", "async", "sync", "async"]);
    try {
      for (const r of reports) {
        strictEqual(r.sha256, expected, `round ${round}: every process got the kernel`);
      }
      checkCache(dir, image, expected, reports);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  }
});

const kernelPath = hostKernelPath();
const kernel = kernelPath ? Deno.readFileSync(kernelPath) : undefined;

Deno.test({
  name:
    "vmlinux cache: two first boots of the distribution kernel at once both extract it, one entry stays",
  ignore: kernel === undefined || bzImagePayload(kernel).format !== "xz",
  async fn() {
    const expected = sha256(compactElf(extractVmlinux(kernel!), { inPlace: true }));
    const { reports, dir } = await race(kernelPath!, ["sync", "async"]);
    try {
      for (const r of reports) strictEqual(r.sha256, expected);
      // Seconds of decoding each, so both normally find the cache empty and write an entry
      // (a child starved for that long by a loaded machine reads the other's entry instead).
      ok(reports.some((r) => r.source === "extracted"));
      if (reports.some((r) => r.source === "cache")) {
        console.log("  (one child started late and read the other's entry)");
      }
      checkCache(dir, kernel!, expected, reports);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

Deno.test("vmlinux cache: the background lookup verifies a hit and replaces a damaged entry", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "vmlinux-async-" });
  try {
    const image = tinyBzImage();
    const first = await cachedVmlinuxAsync(image, { directory: dir });
    strictEqual(first.source, "extracted");
    strictEqual(await first.save(), undefined, "written");
    const hit = await cachedVmlinuxAsync(image, { directory: dir });
    strictEqual(hit.source, "cache");
    strictEqual(sha256(hit.vmlinux), sha256(first.vmlinux));
    const bytes = Deno.readFileSync(first.path!);
    bytes[bytes.length - 20] ^= 0x01; // still a loadable ELF: only the check can tell
    Deno.writeFileSync(first.path!, bytes);
    const again = await cachedVmlinuxAsync(image, { directory: dir });
    strictEqual(again.source, "extracted", "the damaged entry was not used");
    await again.save();
    strictEqual(sha256(again.vmlinux), sha256(first.vmlinux));
    strictEqual((await cachedVmlinuxAsync(image, { directory: dir })).source, "cache");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("vmlinux cache: an entry of the SHA-256 era (no .md5 beside it) is extracted again and its .sha256 removed", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "vmlinux-old-" });
  try {
    const image = tinyBzImage();
    const first = cachedVmlinux(image, { directory: dir });
    const name = first.path!.slice(dir.length + 1);
    // What an older version left: the kernel and its SHA-256, no MD5.
    Deno.renameSync(`${first.path}.md5`, `${first.path}.sha256`);
    Deno.writeTextFileSync(`${first.path}.sha256`, sha256(first.vmlinux));
    const again = await cachedVmlinuxAsync(image, { directory: dir });
    strictEqual(again.source, "extracted");
    strictEqual(await again.save(), undefined, "written");
    deepStrictEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [name, `${name}.md5`]);
    strictEqual(cachedVmlinux(image, { directory: dir }).source, "cache");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
