// The boot CLI's bundle (src/cli/bundle_cache.ts): run only while every source file it was built
// from is unchanged and its bytes are the recorded ones; otherwise the sources run and the
// bundle is built again after the run.

import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
} from "node:assert/strict";
import {
  bootCliBundle,
  buildBundle,
  checkBundle,
  launch,
  rewriteBundle,
} from "../../src/cli/bundle_cache.ts";
import { STAMP_SETTLED_MS } from "../../src/cache_dir.ts";

/**
 * Whether `deno bundle` works here: it fetches esbuild on its first use, which a machine
 * without network access and without a cached copy cannot (the bundle is then never built, and
 * the sources always run: what the tests that need no bundler check).
 */
const bundler = (() => {
  const dir = Deno.makeTempDirSync({ prefix: "cli-bundle-probe-" });
  try {
    Deno.writeTextFileSync(`${dir}/a.ts`, "export const a = 1;\n");
    return new Deno.Command(Deno.execPath(), {
      args: ["bundle", "--no-config", `${dir}/a.ts`],
      stdout: "null",
      stderr: "null",
    }).outputSync().success;
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
})();

/** Until the files just written have settled: a stamp is only taken of a settled file. */
const settle = () => new Promise((resolve) => setTimeout(resolve, STAMP_SETTLED_MS + 200));

/**
 * A small program like the CLI: an entry with `main`, a module in a subdirectory that reads a
 * file next to itself through `import.meta.url` (which the bundle must keep pointing there).
 */
async function project(dir: string, answer: number): Promise<URL> {
  await Deno.mkdir(`${dir}/src/lib`, { recursive: true });
  await Deno.writeTextFile(`${dir}/src/lib/data.txt`, "40");
  await writeDep(dir, answer);
  await Deno.writeTextFile(
    `${dir}/src/entry.ts`,
    `import { value } from "./lib/dep.ts";\n` +
      `export function main(argv: readonly string[]): Promise<number> {\n` +
      `  return Promise.resolve(value() + argv.length);\n}\n` +
      `if (import.meta.main) Deno.exit(await main(Deno.args));\n`,
  );
  return new URL(`file://${dir}/src/entry.ts`);
}

function writeDep(dir: string, add: number): Promise<void> {
  return Deno.writeTextFile(
    `${dir}/src/lib/dep.ts`,
    `const DATA = new URL("./data.txt", import.meta.url);\n` +
      `export function value(): number {\n` +
      `  return Number(Deno.readTextFileSync(DATA)) + ${add};\n}\n`,
  );
}

/** `launch` with its `--trace` lines caught. */
async function launchTraced(
  argv: string[],
  options: Parameters<typeof launch>[1],
): Promise<{ code: number; said: string[] }> {
  const said: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => said.push(args.join(" "));
  try {
    return { code: await launch([...argv, "--trace"], options), said };
  } finally {
    console.error = original;
  }
}

Deno.test({
  name: "cli bundle: built once the sources settled, run in their place, its URLs the sources'",
  ignore: !bundler,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "cli-bundle-" });
  try {
    const entry = await project(dir, 2);
    const directory = `${dir}/cache/cli`;
    // Just written: not stamped, so not bundled (the next run builds).
    assertMatch((await buildBundle({ entry, directory }))!, /changed less than 2 s ago/);
    assertMatch((await checkBundle({ entry, directory })).reason!, /cannot stat/);
    await settle();
    assertEquals(await buildBundle({ entry, directory }), undefined);
    const check = await checkBundle({ entry, directory });
    assert(check.url, check.reason);
    const bundle = await Deno.readTextFile(new URL(check.url));
    // dep.ts's import.meta.url is its own source's URL inside the bundle.
    assert(bundle.includes(JSON.stringify(`file://${dir}/src/lib/dep.ts`)));
    assert(!bundle.includes("import.meta.url"));
    const { main } = await import(check.url);
    assertEquals(await main(["a"]), 43);
    // The bundle and its record are private to the user, as the kernel cache's entries.
    for (const entry of Deno.readDirSync(directory)) {
      assertEquals(Deno.statSync(`${directory}/${entry.name}`).mode! & 0o077, 0);
    }
    const { code, said } = await launchTraced(["a"], { entry, directory });
    assertEquals(code, 44); // 40 + 2 + two arguments ("a", "--trace")
    assert(said.some((s) => /CLI loaded from its bundle/.test(s)), said.join("\n"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "cli bundle: an edited source file makes the launcher run the sources, then rebuild",
  ignore: !bundler,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "cli-bundle-" });
  try {
    const entry = await project(dir, 2);
    const directory = `${dir}/cache/cli`;
    await settle();
    assertEquals(await buildBundle({ entry, directory }), undefined);
    const built = (await checkBundle({ entry, directory })).url;
    assert(built);
    // An edit of a module deep in the graph, of the same size (only the stamp's times change).
    await writeDep(dir, 7);
    assertMatch((await checkBundle({ entry, directory })).reason!, /dep\.ts changed/);
    let { code, said } = await launchTraced([], { entry, directory });
    assertEquals(code, 48); // the edited source: 40 + 7 + "--trace"
    assert(said.some((s) => /CLI loaded from its sources/.test(s)), said.join("\n"));
    // Too fresh to be stamped: no bundle recorded, the old one still refused.
    assert(said.some((s) => /not built: .*changed less than 2 s ago/.test(s)), said.join("\n"));
    assertMatch((await checkBundle({ entry, directory })).reason!, /dep\.ts changed/);
    await settle();
    ({ code, said } = await launchTraced([], { entry, directory })); // sources, then rebuilt
    assertEquals(code, 48);
    assert(said.some((s) => /bundle was built/.test(s)), said.join("\n"));
    const rebuilt = (await checkBundle({ entry, directory })).url;
    assert(rebuilt && rebuilt !== built);
    // The old bundle is gone, the new one runs the edit.
    assert(!(await Deno.stat(new URL(built)).catch(() => undefined)));
    ({ code, said } = await launchTraced([], { entry, directory }));
    assertEquals(code, 48);
    assert(said.some((s) => /CLI loaded from its bundle/.test(s)), said.join("\n"));
    // A deleted source (or one renamed away) is a change too.
    await Deno.remove(`${dir}/src/lib/data.txt`);
    await Deno.writeTextFile(`${dir}/src/lib/data.txt`, "40");
    await settle();
    // data.txt is read at run time, not part of the graph: the bundle stays fresh.
    assert((await checkBundle({ entry, directory })).url);
    await Deno.rename(`${dir}/src/lib/dep.ts`, `${dir}/dep.moved`);
    await Deno.rename(`${dir}/dep.moved`, `${dir}/src/lib/dep.ts`);
    assertMatch((await checkBundle({ entry, directory })).reason!, /dep\.ts changed/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "cli bundle: a damaged, replaced or foreign bundle or record is not used",
  ignore: !bundler,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "cli-bundle-" });
  try {
    const entry = await project(dir, 2);
    const directory = `${dir}/cache/cli`;
    await settle();
    assertEquals(await buildBundle({ entry, directory }), undefined);
    await settle(); // the bundle too: its first check then keeps its stamp
    const url = (await checkBundle({ entry, directory })).url;
    assert(url);
    const path = new URL(url).pathname;
    assert(Deno.statSync(`${path}.stamp`).isFile, "the bundle's stamp is kept once it is checked");
    assert((await checkBundle({ entry, directory })).url); // by its stamp
    const good = await Deno.readFile(path);
    // One flipped bit, same size.
    const flipped = good.slice();
    flipped[flipped.length >> 1] ^= 1;
    await Deno.writeFile(path, flipped);
    assertMatch((await checkBundle({ entry, directory })).reason!, /is damaged/);
    const { code, said } = await launchTraced([], { entry, directory });
    assertEquals(code, 43);
    assert(said.some((s) => /CLI loaded from its sources/.test(s)), said.join("\n"));
    // Truncated.
    await Deno.writeFile(path, good.subarray(0, good.length - 10));
    assertMatch((await checkBundle({ entry, directory })).reason!, /is damaged/);
    await Deno.writeFile(path, good);
    assert((await checkBundle({ entry, directory })).url);
    // Writable by others: not trusted, whatever it holds.
    await Deno.chmod(path, 0o666);
    assertMatch((await checkBundle({ entry, directory })).reason!, /writable by/);
    await Deno.chmod(path, 0o600);
    // A symlink in its place.
    await Deno.rename(path, `${path}.real`);
    await Deno.symlink(`${path}.real`, path);
    assertMatch((await checkBundle({ entry, directory })).reason!, /symlink/);
    await Deno.remove(path);
    await Deno.rename(`${path}.real`, path);
    // The record: damaged, or naming another entry.
    const record = [...Deno.readDirSync(directory)].find((e) => e.name.endsWith(".json"))!.name;
    const text = await Deno.readTextFile(`${directory}/${record}`);
    await Deno.writeTextFile(`${directory}/${record}`, text.slice(0, -20));
    assertMatch((await checkBundle({ entry, directory })).reason!, /is damaged/);
    await Deno.writeTextFile(`${directory}/${record}`, text.replace(entry.href, `${entry.href}x`));
    assertMatch((await checkBundle({ entry, directory })).reason!, /built for/);
    await Deno.writeTextFile(`${directory}/${record}`, text.replace(Deno.version.deno, "0.0.1"));
    assertMatch((await checkBundle({ entry, directory })).reason!, /built by Deno 0\.0\.1/);
    await Deno.writeTextFile(`${directory}/${record}`, text);
    assert((await checkBundle({ entry, directory })).url);
    // Turned off: the sources run and nothing is built.
    Deno.env.set("DENO_KVM_CLI_BUNDLE", "0");
    try {
      const off = await launchTraced([], { entry, directory });
      assert(off.said.some((s) => /DENO_KVM_CLI_BUNDLE=0/.test(s)), off.said.join("\n"));
      assert(!off.said.some((s) => /built/.test(s)), off.said.join("\n"));
    } finally {
      Deno.env.delete("DENO_KVM_CLI_BUNDLE");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli bundle: a bundle whose module URLs cannot be placed is refused", () => {
  const files = ["/p/a.ts"];
  assertMatch(
    (rewriteBundle("// p/a.ts\nconst m = await import(x);\n", files) as { problem: string })
      .problem,
    /dynamic import/,
  );
  assertMatch(
    (rewriteBundle("// p/a.ts\nconst d = import.meta.dirname;\n", files) as { problem: string })
      .problem,
    /unknown use of import.meta/,
  );
  assertMatch(
    (rewriteBundle("// p/other.ts\nconst u = import.meta.url;\n", files) as { problem: string })
      .problem,
    /outside a known module/,
  );
  assertMatch(
    (rewriteBundle("const u = import.meta.url;\n", files) as { problem: string }).problem,
    /outside a known module/,
  );
  assertEquals(
    rewriteBundle("// p/a.ts\nif (import.meta.main) f();\n", files),
    "// p/a.ts\nif (import.meta.main) f();\n",
  );
});

Deno.test({
  name:
    "cli bundle: the boot CLI and its AP workers bundle, with the sources' worker and shim URLs",
  ignore: !bundler,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "cli-bundle-" });
  try {
    const options = bootCliBundle(`${dir}/cli`);
    let problem = await buildBundle(options);
    if (problem && /less than 2 s ago/.test(problem)) {
      // A checkout (or an edit) just now: once settled it must build.
      await settle();
      problem = await buildBundle(options);
    }
    assertEquals(problem, undefined);
    const check = await checkBundle(options);
    assert(check.url && check.workerUrl, check.reason);
    const bundle = await Deno.readTextFile(new URL(check.url));
    const src = new URL("../../src/", import.meta.url).href;
    for (
      const module of [
        "ffi/library.ts",
        "context/protocol.ts",
        "boot/ap_runtime.ts",
        "cli/boot_linux.ts",
      ]
    ) assert(bundle.includes(JSON.stringify(`${src}${module}`)), `${module}'s URL is not kept`);
    const { main, setApWorkerModule } = await import(check.url);
    assertEquals(typeof main, "function");
    assertEquals(typeof setApWorkerModule, "function");
    // The AP workers' bundle: the vCPU worker's import of device modules (absolute URLs) is
    // kept, the shim's URLs are the sources', and the AP device is its default export.
    const worker = await Deno.readTextFile(new URL(check.workerUrl));
    assert(worker.includes("await import(spec.url)"));
    assert(worker.includes(JSON.stringify(`${src}ffi/library.ts`)));
    assert(!worker.includes("import.meta"));
    assert(/export \{\s*apDevice as default\s*\}/.test(worker));
    // Without its allowance the vCPU worker's dynamic import refuses the bundle.
    const files = [options.worker!.dynamicImportsIn![0]];
    const marked = `// ${files[0].slice(1)}\nconst m = await import(spec.url);\n`;
    assertMatch((rewriteBundle(marked, files) as { problem: string }).problem, /dynamic import/);
    assertEquals(rewriteBundle(marked, files, files), marked);
    // ...and a literal one stays refused even there (it would resolve against the bundle).
    const literal = `// ${files[0].slice(1)}\nconst m = await import("./x.ts");\n`;
    assertMatch(
      (rewriteBundle(literal, files, files) as { problem: string }).problem,
      /dynamic import/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli bundle: a failed build is kept, and not tried again by every run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cli-bundle-" });
  try {
    const entry = await project(dir, 2);
    const directory = `${dir}/cache/cli`;
    await settle();
    // A bundler that fails (as deno bundle does offline without esbuild).
    assertMatch((await buildBundle({ entry, directory, deno: "/bin/false" }))!, /deno info failed/);
    const record = [...Deno.readDirSync(directory)].find((e) => e.name.endsWith(".failed"));
    assert(record, "the failure is kept");
    assertEquals(Deno.statSync(`${directory}/${record.name}`).mode! & 0o077, 0);
    // Not tried again: the real deno is not even run.
    assertMatch((await buildBundle({ entry, directory }))!, /the last build, \d+ s ago, failed/);
    const { code, said } = await launchTraced([], { entry, directory });
    assertEquals(code, 43);
    assert(said.some((s) => /not built: the last build/.test(s)), said.join("\n"));
    if (!bundler) return;
    // An hour later (here: the record's time set back), built, and the record gone.
    const old = new Date(Date.now() - 2 * 3_600_000);
    await Deno.utime(`${directory}/${record.name}`, old, old);
    assertEquals(await buildBundle({ entry, directory }), undefined);
    assert(![...Deno.readDirSync(directory)].some((e) => e.name.endsWith(".failed")));
    assert((await checkBundle({ entry, directory })).url);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
