// Issue 12: the native shim's cache is trusted only when it is ours. A copy
// of the sources without a local build loads its shim from a cache directory
// given by DENO_KVM_CACHE; each test damages or plants something there and
// runs the loader in a child process (a truncated library would kill it with
// SIGBUS; a planted one would run its constructor).

import { ok, strictEqual } from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;

// Loaded when Kvm.open("/dev/null") gets as far as the kernel (ENOTTY).
const PROBE = `
import { Kvm } from "./mod.ts";
try { Kvm.open("/dev/null"); } catch (e) { console.log(e.name + ": " + e.message); }
`;
const LOADED = "KvmError: KVM_GET_API_VERSION failed: ENOTTY";

// A library whose constructor leaves a marker: what an attacker would plant.
const PLANTED_C = `
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void) {
  int fd = open(MARKER, O_CREAT | O_WRONLY, 0600);
  if (fd >= 0) close(fd);
}
`;

async function withCopy(fn: (dir: string, cache: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "kvm-shim-cache-" });
  try {
    await Deno.mkdir(`${dir}/native`);
    await Deno.copyFile(`${root}/native/kvm_shim.c`, `${dir}/native/kvm_shim.c`);
    await new Deno.Command("cp", { args: ["-r", `${root}/src`, `${root}/mod.ts`, dir] }).output();
    await fn(dir, `${dir}/cache`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function probe(dir: string, cache: string, before = "") {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", "-A", before + PROBE],
    cwd: dir,
    env: { NO_COLOR: "1", DENO_KVM_CACHE: cache, DENO_KVM_LIB: "" },
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, signal: out.signal, text };
}

function shimPath(cache: string): string {
  const name = [...Deno.readDirSync(cache)].map((e) => e.name).find((n) => n.endsWith(".so"));
  ok(name, "a cached build");
  return `${cache}/${name}`;
}

async function plant(path: string, marker: string) {
  const src = `${path}.planted.c`;
  await Deno.writeTextFile(src, PLANTED_C.replace("MARKER", JSON.stringify(marker)));
  const cc = await new Deno.Command("cc", { args: ["-shared", "-fPIC", "-o", path, src] })
    .output();
  await Deno.remove(src);
  ok(cc.success, new TextDecoder().decode(cc.stderr));
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("shim cache: a truncated build is rebuilt, never loaded", async () => {
  await withCopy(async (dir, cache) => {
    ok((await probe(dir, cache)).text.includes(LOADED));
    const path = shimPath(cache);
    const size = Deno.statSync(path).size;
    Deno.truncateSync(path, size >> 1);
    const again = await probe(dir, cache);
    strictEqual(again.signal, null, `no SIGBUS: ${again.text}`);
    ok(again.text.includes(LOADED), again.text);
    strictEqual(Deno.statSync(path).size, size, "rebuilt whole");
  });
});

Deno.test("shim cache: a planted library without our hash is replaced, its constructor never runs", async () => {
  await withCopy(async (dir, cache) => {
    ok((await probe(dir, cache)).text.includes(LOADED));
    const path = shimPath(cache);
    const marker = `${dir}/planted-ran`;
    await plant(path, marker);
    const again = await probe(dir, cache);
    ok(!exists(marker), "the planted constructor did not run");
    ok(again.text.includes(LOADED), again.text);
  });
});

Deno.test("shim cache: a directory writable by others, or a library not ours, is refused by name", async () => {
  await withCopy(async (dir, cache) => {
    ok((await probe(dir, cache)).text.includes(LOADED));
    const path = shimPath(cache);
    const marker = `${dir}/planted-ran`;
    await plant(path, marker);
    Deno.chmodSync(path, 0o644);
    Deno.chmodSync(cache, 0o757);
    const shared = await probe(dir, cache);
    ok(shared.text.includes("NativeLoadError"), shared.text);
    ok(shared.text.includes(`cache directory ${cache}`), shared.text);
    ok(shared.text.includes("writable by others"), shared.text);
    Deno.chmodSync(cache, 0o700);
    Deno.chmodSync(path, 0o664);
    const groupWritable = await probe(dir, cache);
    ok(groupWritable.text.includes(`refusing to load the cached native shim ${path}`));
    ok(groupWritable.text.includes("writable by its group"), groupWritable.text);
    if (Deno.uid() === 0) {
      // Under sudo -E, root would find a user's cache: not loaded.
      Deno.chmodSync(path, 0o644);
      Deno.chownSync(path, 65534, 65534);
      const other = await probe(dir, cache);
      ok(other.text.includes("owned by uid 65534"), other.text);
      Deno.chownSync(cache, 65534, 65534);
      ok((await probe(dir, cache)).text.includes(`cache directory ${cache}`));
    }
    ok(!exists(marker), "the planted constructor never ran");
  });
});

Deno.test("shim cache: the build writes no file through a symlink at a predictable name", async () => {
  await withCopy(async (dir, cache) => {
    const victim = `${dir}/victim`;
    await Deno.writeTextFile(victim, "precious");
    // The old loader wrote the C source to <cache>/kvm_shim-<pid>.c, following symlinks.
    const out = await probe(
      dir,
      cache,
      `Deno.mkdirSync(${JSON.stringify(cache)}, { recursive: true, mode: 0o700 });
       Deno.symlinkSync(${JSON.stringify(victim)}, ${
        JSON.stringify(cache)
      } + "/kvm_shim-" + Deno.pid + ".c");
       Deno.symlinkSync(${JSON.stringify(victim)}, ${
        JSON.stringify(cache)
      } + "/" + "TMP" + Deno.pid);`,
    );
    ok(out.text.includes(LOADED), out.text);
    strictEqual(await Deno.readTextFile(victim), "precious");
  });
});
