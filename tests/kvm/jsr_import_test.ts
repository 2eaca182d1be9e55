// Issue 13: the library met the way a JSR user meets it. A local HTTP server
// serves exactly the published file set (deno.json "publish.include"); a child
// `deno run` with a fresh DENO_DIR, a fresh DENO_KVM_CACHE, no DENO_KVM_LIB and
// the README's permissions imports `http://127.0.0.1:<port>/mod.ts`, runs a
// tiny real-mode guest and a 2-vCPU KvmContext (its Workers load the shim too)
// and prints what the guests wrote. The first run fetches and compiles the
// shim (`loadNative()`); later runs, with the server stopped, work offline from
// the cached shim and Deno's module cache, and `Kvm.open()` needs no
// `loadNative()` at all.

import { ok, strictEqual } from "node:assert/strict";

const name = "jsr import: fetched and compiled once, then offline without loadNative()";
const root = new URL("../../", import.meta.url);

function skipReason(): string | undefined {
  try {
    new Deno.Command("cc", { args: ["--version"] }).outputSync();
  } catch {
    return "no `cc` to compile the native shim on first use";
  }
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
  } catch (e) {
    return `/dev/kvm is not usable: ${e instanceof Error ? e.message : e}`;
  }
  return undefined;
}

const reason = skipReason();
if (reason) console.log(`SKIP ${name} :: ${reason}`);

/** The published files, by URL path ("/mod.ts"), as `deno publish` includes them. */
function publishedFiles(): Map<string, string> {
  const config = JSON.parse(Deno.readTextFileSync(new URL("deno.json", root)));
  const files = new Map<string, string>();
  const add = (rel: string) => {
    const path = new URL(rel, root).pathname;
    const info = Deno.statSync(path);
    if (info.isFile) files.set(`/${rel}`, path);
    else if (info.isDirectory) {
      for (const entry of Deno.readDirSync(path)) {
        add(`${rel.replace(/\/$/, "")}/${entry.name}`);
      }
    }
  };
  for (const rel of config.publish.include as string[]) add(rel.replace(/\/$/, ""));
  return files;
}

// The user's script: `open` says whether to call loadNative() first.
const SCRIPT = (base: string) => `
import { Kvm, KvmContext, loadNative } from "${base}/mod.ts";

if (Deno.args[0] === "load") await loadNative();

const CODE = 0x1000;
{
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const ram = vm.allocateMemory(0x1000);
  ram.bytes.set([0xb0, 0x41, 0xe6, 0xe9, 0xf4]); // mov al, 'A'; out 0xe9, al; hlt
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0x1000, memory: ram });
  const vcpu = vm.createVcpu(0);
  const sregs = vcpu.getSregs();
  sregs.cs.base = 0n;
  sregs.cs.selector = 0;
  vcpu.setSregs(sregs);
  vcpu.setRegs(vcpu.getRegs().assign({ rip: 0n, rflags: 2n }));
  let out = "";
  for (let exit = vcpu.run(); exit.reason !== "hlt"; exit = vcpu.run()) {
    if (exit.reason === "io") out += String.fromCharCode(exit.value);
    else throw new Error("unexpected exit " + exit.reason);
  }
  console.log("byte " + out);
}

// Two vCPUs on Workers, each its own guest: vCPU n writes 'B' + n to port 0xe9 and halts.
const seen = [];
await using ctx = await KvmContext.create({
  memory: 1 << 20,
  vcpus: 2,
  irqchip: false,
  callbacks: { outb: (port, value, id) => void seen.push(id + ":" + port.toString(16) + ":" + String.fromCharCode(value)) },
});
for (const id of [0, 1]) {
  const at = CODE + id * 0x100;
  ctx.vm.writeGuest(at, [0xb0, 0x42 + id, 0xe6, 0xe9, 0xf4]);
  const vcpu = ctx.vcpu(id);
  const sregs = vcpu.getSregs();
  for (const s of [sregs.cs, sregs.ds, sregs.es, sregs.ss]) {
    s.base = 0n;
    s.selector = 0;
  }
  vcpu.setSregs(sregs);
  vcpu.setRegs(vcpu.getRegs().clear().assign({ rip: at, rflags: 2n, rsp: 0x8000 }));
}
const result = await ctx.run({ timeoutMs: 20000 });
console.log("stops " + result.vcpus.map((v) => v.stop.kind).join(","));
console.log("vcpus " + seen.sort().join(" "));
`;

interface ChildResult {
  code: number;
  text: string;
}

Deno.test({ name, ignore: reason !== undefined }, async () => {
  const files = publishedFiles();
  ok(files.has("/mod.ts") && files.has("/native/kvm_shim.c"), "mod.ts and the shim are published");
  const temp = await Deno.makeTempDir({ prefix: "kvm-jsr-import-" });
  const requests: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    requests.push(path);
    const file = files.get(path);
    if (!file) return new Response("not found", { status: 404 });
    const type = path.endsWith(".ts") ? "application/typescript" : "text/plain";
    return new Response(await Deno.readFile(file), { headers: { "content-type": type } });
  });
  try {
    const port = server.addr.port;
    const base = `http://127.0.0.1:${port}`;
    await Deno.writeTextFile(`${temp}/main.ts`, SCRIPT(base));
    await Deno.mkdir(`${temp}/home`);
    const env = {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      DENO_KVM_CACHE: `${temp}/kvm_cache`,
    };
    const child = (mode: "load" | "open") => runChild(temp, port, mode, env.PATH);
    // Cold cache, no loadNative(): Kvm.open() says what to do.
    const cold = await child("open");
    ok(cold.code !== 0, `without loadNative() on a cold cache the child fails:\n${cold.text}`);
    ok(cold.text.includes("await loadNative()"), `the error says what to do:\n${cold.text}`);

    // First run: loadNative() fetches the shim's source and compiles it.
    expectGuests(await child("load"), "the first run");
    ok(requests.includes("/native/kvm_shim.c"), "the first run fetched the shim's source");
    ok(
      [...Deno.readDirSync(env.DENO_KVM_CACHE)].some((e) => /^libkvm_shim-\w+\.so$/.test(e.name)),
      "the shim is cached",
    );
  } finally {
    await server.shutdown();
  }
  try {
    // Offline: the server is gone and `cc` off the PATH; the same caches serve both runs.
    const port = /127\.0\.0\.1:(\d+)/.exec(await Deno.readTextFile(`${temp}/main.ts`))![1];
    const offline = (mode: "load" | "open") => runChild(temp, Number(port), mode, "/nonexistent");
    expectGuests(await offline("open"), "offline, Kvm.open() without loadNative()");
    expectGuests(await offline("load"), "offline, with loadNative()");
  } finally {
    await Deno.remove(temp, { recursive: true });
  }
});

/** `deno run` of the user's script with the README's permissions and fresh caches under `temp`. */
async function runChild(
  temp: string,
  port: number,
  mode: "load" | "open",
  path: string,
): Promise<ChildResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-config",
      `--allow-import=127.0.0.1:${port}`, // what jsr.io gets by default
      "--allow-ffi",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-run=cc",
      `--allow-net=127.0.0.1:${port}`,
      "main.ts",
      mode,
    ],
    cwd: temp,
    clearEnv: true,
    env: {
      PATH: path,
      HOME: `${temp}/home`,
      DENO_DIR: `${temp}/deno_dir`,
      DENO_KVM_CACHE: `${temp}/kvm_cache`,
      NO_COLOR: "1",
    },
    stdin: "null",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, text };
}

function expectGuests(run: ChildResult, what: string): void {
  strictEqual(run.code, 0, `${what} exits 0:\n${run.text}`);
  ok(run.text.includes("byte A\n"), `${what} prints the guest's byte:\n${run.text}`);
  ok(run.text.includes("stops hlt,hlt\n"), `${what}: both vCPUs halt:\n${run.text}`);
  ok(run.text.includes("vcpus 0:e9:B 1:e9:C\n"), `${what}: each vCPU's byte:\n${run.text}`);
}
