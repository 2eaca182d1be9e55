// The loader's failures say what to do: which permission flag is missing, that
// a C compiler is needed, and it builds into the per-user cache when there is
// no local build.

import { ok, strictEqual } from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;

async function runDeno(args: string[], env: Record<string, string> = {}, cwd = root) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env: { NO_COLOR: "1", ...env },
    clearEnv: "PATH" in env,
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, text };
}

const PROBE = `
import { Kvm } from "./mod.ts";
try { Kvm.open("/dev/null"); } catch (e) { console.log(e.name + ": " + e.message); }
`;

Deno.test("without --allow-ffi the error names the flag", async () => {
  const script = `${root}/.loader-probe-${Deno.pid}.ts`;
  await Deno.writeTextFile(script, PROBE);
  const { text } = await runDeno(["run", "--no-check", "--allow-read", "--allow-env", script])
    .finally(() => Deno.remove(script));
  ok(text.includes("NativeLoadError"), text);
  ok(text.includes("--allow-ffi"), text);
});

Deno.test("a copy without a local build is compiled into the cache; without cc it says so", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kvm-loader-" });
  try {
    await Deno.mkdir(`${dir}/native`);
    await Deno.copyFile(`${root}/native/kvm_shim.c`, `${dir}/native/kvm_shim.c`);
    await new Deno.Command("cp", { args: ["-r", `${root}/src`, `${root}/mod.ts`, dir] }).output();
    const cache = `${dir}/cache`;

    // No compiler on PATH: a clear message, not a crash.
    const noCc = await runDeno(["eval", "--no-check", "-A", PROBE], {
      PATH: "/nonexistent",
      DENO_KVM_CACHE: cache,
    }, dir);
    ok(noCc.text.includes("`cc` is not installed"), noCc.text);

    // With a compiler: built into the cache keyed by the source hash, then loaded
    // (opening /dev/null as KVM then fails with ENOTTY, from the kernel).
    const built = await runDeno(
      ["eval", "--no-check", "-A", PROBE],
      { DENO_KVM_CACHE: cache },
      dir,
    );
    ok(built.text.includes("KvmError: KVM_GET_API_VERSION failed: ENOTTY"), built.text);
    const files = [...Deno.readDirSync(cache)].map((e) => e.name).sort();
    strictEqual(files.length, 2, `one cached build and its SHA-256: ${files}`);
    ok(/^libkvm_shim-[0-9a-f]{16}\.so$/.test(files[0]), files[0]);
    strictEqual(files[1], `${files[0]}.sha256`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
