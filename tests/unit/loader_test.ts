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

/** A copy of the sources (no local build) in a fresh directory, removed afterwards. */
async function withCopy(fn: (dir: string) => Promise<void>, withSource = true) {
  const dir = await Deno.makeTempDir({ prefix: "kvm-loader-" });
  try {
    await Deno.mkdir(`${dir}/native`);
    if (withSource) await Deno.copyFile(`${root}/native/kvm_shim.c`, `${dir}/native/kvm_shim.c`);
    await new Deno.Command("cp", { args: ["-r", `${root}/src`, `${root}/mod.ts`, dir] }).output();
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("a local build is loaded only when it and its directory are not group/world-writable", async () => {
  await withCopy(async (dir) => {
    const build = `${dir}/native/build`;
    await Deno.mkdir(build, { mode: 0o755 });
    await Deno.chmod(build, 0o755);
    const cc = await new Deno.Command("cc", {
      args: [
        "-O2",
        "-fPIC",
        "-shared",
        "-o",
        `${build}/libkvm_shim.so`,
        `${dir}/native/kvm_shim.c`,
      ],
    }).output();
    ok(cc.success, new TextDecoder().decode(cc.stderr));
    // An empty cache: a refused local build must not be quietly replaced by a cached one.
    const env = { DENO_KVM_CACHE: `${dir}/cache`, DENO_KVM_LIB: "" };
    const probe = () => runDeno(["eval", "--no-check", "-A", PROBE], env, dir);

    await Deno.chmod(`${build}/libkvm_shim.so`, 0o757);
    let run = await probe();
    ok(run.text.includes("NativeLoadError: refusing to load the local native shim"), run.text);
    ok(run.text.includes("writable by others"), run.text);

    await Deno.chmod(`${build}/libkvm_shim.so`, 0o755);
    await Deno.chmod(build, 0o775);
    run = await probe();
    ok(run.text.includes("refusing to load the local native shim"), run.text);
    ok(run.text.includes(`${build} is writable by its group`), run.text);

    await Deno.chmod(build, 0o755);
    if (Deno.uid() === 0) {
      // Root can hand the file to someone else: another user's build is refused too.
      await Deno.chown(`${build}/libkvm_shim.so`, 65534, null);
      run = await probe();
      ok(run.text.includes("is owned by uid 65534, not by the current user"), run.text);
      await Deno.chown(`${build}/libkvm_shim.so`, 0, null);
    }
    run = await probe();
    ok(run.text.includes("KvmError: KVM_GET_API_VERSION failed: ENOTTY"), run.text);
  });
});

Deno.test("without the C file on disk the built-in source is compiled, by Kvm.open() or loadNative()", async () => {
  await withCopy(async (dir) => {
    const { SHIM_SOURCE_HASH } = await import("../../src/ffi/shim_hash.ts");
    for (const [what, before] of [["sync", ""], ["async", "await loadNative();\n"]]) {
      const cache = `${dir}/cache-${what}`;
      const script = `import { loadNative } from "./mod.ts";\n${before}${PROBE}`;
      const run = await runDeno(
        ["eval", "--no-check", "-A", script],
        { DENO_KVM_CACHE: cache, DENO_KVM_LIB: "" },
        dir,
      );
      ok(run.text.includes("KvmError: KVM_GET_API_VERSION failed: ENOTTY"), `${what}: ${run.text}`);
      const files = [...Deno.readDirSync(cache)].map((e) => e.name).sort();
      strictEqual(
        files.join(" "),
        `libkvm_shim-${SHIM_SOURCE_HASH}.so libkvm_shim-${SHIM_SOURCE_HASH}.so.sha256`,
        `${what}: the build is keyed by SHIM_SOURCE_HASH`,
      );
      strictEqual(Deno.statSync(`${cache}/${files[0]}`).mode! & 0o777, 0o755);
    }
  }, false);
});
