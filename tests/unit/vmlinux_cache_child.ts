// A child of vmlinux_cache_race_test.ts: waits for the parent's start signal,
// then takes one kernel through the cache, and prints what it got.
//
// args: <cache directory> <sync|async> <kernel path or "tiny"> <ready file> <go file>

import { createHash } from "node:crypto";
import { cachedVmlinux, cachedVmlinuxAsync } from "../../src/boot/vmlinux.ts";
import { tinyBzImage } from "../fuzz/samples.ts";

const [directory, mode, kernel, ready, go] = Deno.args;
const image = kernel === "tiny" ? tinyBzImage() : Deno.readFileSync(kernel);
Deno.writeFileSync(ready, new Uint8Array());
// The start line: every child polls the same file, so their lookups run at the same time.
const deadline = Date.now() + 60_000;
for (;;) {
  try {
    Deno.statSync(go);
    break;
  } catch {
    if (Date.now() > deadline) throw new Error("no start signal within 60 s");
  }
}
let found;
if (mode === "async") {
  found = await cachedVmlinuxAsync(image, { directory });
  const problem = await found.save();
  if (problem) throw new Error(problem);
} else {
  found = cachedVmlinux(image, { directory });
}
if (found.cacheProblem) throw new Error(found.cacheProblem);
console.log(JSON.stringify({
  source: found.source,
  path: found.path,
  sha256: createHash("sha256").update(found.vmlinux).digest("hex"),
}));
