// Issue 13: the library met the way a JSR user meets it. A local HTTP server
// serves exactly the published file set (deno.json "publish.include"); child
// `deno run`s with a fresh DENO_DIR, a fresh DENO_KVM_CACHE, no DENO_KVM_LIB
// and the README's permissions import `http://127.0.0.1:<port>/...`:
// - `mod.ts` with NO `loadNative()` call: the first `Kvm.open()` compiles the
//   shim from the source shipped inside the module (nothing is fetched for
//   it) and runs a tiny real-mode guest and a 2-vCPU KvmContext (its Workers
//   load the shim too);
// - `src/vmm.ts` (the `./vmm` export), on another empty cache: a 2-vCPU
//   LinuxMachine whose "kernel" spins forever, run with a 2 s `timeoutMs`
//   that must fire (reason "timeout") and close cleanly: its AP Worker and
//   the watchdog must find the shim the main thread built;
// - `src/cli/boot_linux.ts` (the `./cli` export) prints its `--help`.
// Later runs, with the server stopped and `cc` off the PATH, work offline
// from the cached shim and Deno's module cache, with and without
// `loadNative()`.

import { ok, strictEqual } from "node:assert/strict";
import { lacksCap } from "./kvm_features.ts";
import { sha256Hex } from "../../src/cache_dir.ts";
import { SHIM_SOURCE_HASH } from "../../src/ffi/shim_hash.ts";

const name = "jsr import: no loadNative(), compiled once from the shipped source, then offline";
const root = new URL("../../", import.meta.url);

const LOCAL_BUILD = new URL("native/build/libkvm_shim.so", root).pathname;

/** Whether `cc` runs here (the QEMU sandbox's guest has none). */
function hasCc(): boolean {
  try {
    return new Deno.Command("cc", { args: ["--version"] }).outputSync().success;
  } catch {
    return false;
  }
}

// Without `cc` (the sandbox), the caches are seeded with the local build, as a build an earlier
// run left there: everything but the first compile is still tested.
const seed = !hasCc();

function skipReason(): string | undefined {
  if (seed) {
    try {
      Deno.statSync(LOCAL_BUILD);
    } catch {
      return "neither `cc` to compile the native shim on first use nor a local build to seed with";
    }
  }
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
  } catch (e) {
    return `/dev/kvm is not usable: ${e instanceof Error ? e.message : e}`;
  }
  return lacksCap("IRQCHIP"); // LinuxMachine needs the in-kernel interrupt controllers
}

/** Puts the local build in `cache` the way the loader leaves a build it made. */
function seedCache(cache: string): void {
  Deno.mkdirSync(cache, { recursive: true, mode: 0o700 });
  const path = `${cache}/libkvm_shim-${SHIM_SOURCE_HASH}.so`;
  const bytes = Deno.readFileSync(LOCAL_BUILD);
  Deno.writeFileSync(path, bytes, { mode: 0o755 });
  Deno.writeTextFileSync(`${path}.sha256`, sha256Hex(bytes), { mode: 0o600 });
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

// A 2-vCPU LinuxMachine whose kernel (a minimal ELF entered in 64-bit mode at 2 MiB) spins on
// `pause; jmp` forever: only the run's timeout ends it, whatever the KVM's speed.
const LINUX_SCRIPT = (base: string) => `
import { LinuxMachine } from "${base}/src/vmm.ts";

const LOOP = [0xf3, 0x90, 0xeb, 0xfc]; // pause; jmp back to the pause
const elf = new Uint8Array(0x100 + LOOP.length);
const v = new DataView(elf.buffer);
elf.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0); // ELF, 64-bit, little-endian, version 1
v.setUint16(16, 2, true); // ET_EXEC
v.setUint16(18, 62, true); // EM_X86_64
v.setBigUint64(24, 0x200000n, true); // e_entry
v.setBigUint64(32, 64n, true); // e_phoff
v.setUint16(54, 56, true); // e_phentsize
v.setUint16(56, 1, true); // e_phnum
v.setUint32(64, 1, true); // PT_LOAD
v.setBigUint64(64 + 8, 0x100n, true); // p_offset
v.setBigUint64(64 + 16, 0x200000n, true); // p_vaddr
v.setBigUint64(64 + 24, 0x200000n, true); // p_paddr
v.setBigUint64(64 + 32, BigInt(LOOP.length), true); // p_filesz
v.setBigUint64(64 + 40, BigInt(LOOP.length), true); // p_memsz
elf.set(LOOP, 0x100);
{
  using machine = LinuxMachine.create({ kernel: elf, memorySize: 64 << 20, cpus: 2, probeCpu: false });
  const exit = await machine.run({ timeoutMs: 2000 });
  console.log("linux exit " + exit.reason);
}
console.log("linux closed");
`;

interface ChildResult {
  code: number;
  stdout: string;
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
    await Deno.writeTextFile(`${temp}/linux.ts`, LINUX_SCRIPT(base));
    await Deno.mkdir(`${temp}/home`);
    const cache = `${temp}/kvm_cache`;
    if (seed) {
      console.log("no `cc` here: the shim caches are seeded with native/build/libkvm_shim.so");
      seedCache(cache);
      seedCache(`${temp}/kvm_cache_linux`);
    }
    const child = (mode: "load" | "open") => runChild(temp, port, ["main.ts", mode], { cache });

    // Empty cache, no loadNative(): Kvm.open() builds the shim from the shipped source (or
    // finds the seeded build).
    expectGuests(await child("open"), "the first run, without loadNative()");
    ok(!requests.includes("/native/kvm_shim.c"), `nothing fetched the C file: ${requests}`);
    ok(
      [...Deno.readDirSync(cache)].some((e) => /^libkvm_shim-\w+\.so$/.test(e.name)),
      "the shim is cached",
    );

    // ./vmm on its own empty cache: 2 vCPUs, the timeout fires, everything closes.
    const linux = await runChild(temp, port, ["linux.ts"], { cache: `${temp}/kvm_cache_linux` });
    strictEqual(linux.code, 0, `the LinuxMachine child exits 0:\n${linux.text}`);
    ok(linux.text.includes("linux exit timeout\n"), `the timeout fires:\n${linux.text}`);
    ok(linux.text.includes("linux closed\n"), `the machine closes:\n${linux.text}`);

    // ./cli: --help on stdout.
    const help = await runChild(temp, port, [`${base}/src/cli/boot_linux.ts`, "--help"], {
      cache,
    });
    strictEqual(help.code, 0, `cli --help exits 0:\n${help.text}`);
    ok(help.stdout.includes("--kernel"), `cli --help lists --kernel on stdout:\n${help.text}`);
  } finally {
    await server.shutdown();
  }
  try {
    // Offline: the server is gone and `cc` off the PATH; the same caches serve both runs.
    const port = Number(/127\.0\.0\.1:(\d+)/.exec(await Deno.readTextFile(`${temp}/main.ts`))![1]);
    const offline = (mode: "load" | "open") =>
      runChild(temp, port, ["main.ts", mode], { cache: `${temp}/kvm_cache`, path: "/nonexistent" });
    expectGuests(await offline("open"), "offline, Kvm.open() without loadNative()");
    expectGuests(await offline("load"), "offline, with loadNative()");
  } finally {
    await Deno.remove(temp, { recursive: true });
  }
});

/**
 * `deno run` of `args` (a script and its arguments) with the README's permissions, fresh
 * caches under `temp`, the shim cache `cache`, and `path` as PATH (default: ours, with `cc`).
 */
async function runChild(
  temp: string,
  port: number,
  args: string[],
  { cache, path = Deno.env.get("PATH") ?? "/usr/bin:/bin" }: { cache: string; path?: string },
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
      ...args,
    ],
    cwd: temp,
    clearEnv: true,
    env: {
      PATH: path,
      HOME: `${temp}/home`,
      DENO_DIR: `${temp}/deno_dir`,
      DENO_KVM_CACHE: cache,
      NO_COLOR: "1",
    },
    stdin: "null",
    // A wedged child fails the test instead of hanging it.
    signal: AbortSignal.timeout(300_000),
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  return { code: out.code, stdout, text: stdout + new TextDecoder().decode(out.stderr) };
}

function expectGuests(run: ChildResult, what: string): void {
  strictEqual(run.code, 0, `${what} exits 0:\n${run.text}`);
  ok(run.text.includes("byte A\n"), `${what} prints the guest's byte:\n${run.text}`);
  ok(run.text.includes("stops hlt,hlt\n"), `${what}: both vCPUs halt:\n${run.text}`);
  ok(run.text.includes("vcpus 0:e9:B 1:e9:C\n"), `${what}: each vCPU's byte:\n${run.text}`);
}
