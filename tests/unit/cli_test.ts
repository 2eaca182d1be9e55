// The boot CLI (src/cli/boot_linux.ts) as a user meets it: a child process,
// its exit code, stdout and stderr. Every refusal here happens before KVM is
// opened, so none of these tests needs /dev/kvm.

import {
  deepStrictEqual as assertEquals,
  match as assertMatch,
  ok as assert,
  throws,
} from "node:assert/strict";
import {
  ExitCode,
  hostMemory,
  parseBootArgs,
  parseSize,
  UsageError,
} from "../../src/cli/boot_linux.ts";
import { ConsoleInput } from "../../src/cli/console_input.ts";

const CLI = new URL("../../src/cli/boot_linux.ts", import.meta.url).pathname;
const WRAPPER = new URL("../../examples/boot_linux.ts", import.meta.url).pathname;

async function cli(
  args: string[],
  script = CLI,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("cli: --help prints every option with its default and the exit codes on stdout, exit 0", async () => {
  const { code, stdout, stderr } = await cli(["--help"]);
  assertEquals(code, 0);
  assertEquals(stderr, "");
  for (
    const option of [
      "--kernel",
      "--initrd",
      "--cmdline",
      "--memory",
      "--cpus",
      "--timeout",
      "--guest-decompress",
      "--trace",
      "--help",
      "--version",
    ]
  ) assert(stdout.includes(option), `--help lacks ${option}`);
  for (const def of ["(default: 512M)", "(default: 1)", "(default: none)", "console=ttyS0"]) {
    assert(stdout.includes(def), `--help lacks ${def}`);
  }
  for (const exit of ["0 ", "1 ", "2 ", "124 "]) assertMatch(stdout, new RegExp(`\\n  ${exit}`));
});

Deno.test("cli: --version prints the package's name and version", async () => {
  const deno = JSON.parse(await Deno.readTextFile(new URL("../../deno.json", import.meta.url)));
  const { code, stdout } = await cli(["--version"]);
  assertEquals(code, 0);
  assertEquals(stdout.trim(), `boot_linux (${deno.name}) ${deno.version}`);
});

Deno.test("cli: arguments after a leading -- (deno task x -- args) are taken as without it", async () => {
  assertEquals((await cli(["--", "--version"])).code, 0);
  // Through the repository's wrapper, as `deno task boot:linux -- --kernel ...` runs it.
  const { code, stderr } = await cli(["--", "--kernel", "/dev/zero"], WRAPPER);
  assertEquals(code, ExitCode.usage);
  assertMatch(stderr, /character device/);
});

Deno.test("cli: bad arguments exit 2 with the reason on stderr, before any KVM work", async (t) => {
  const cases: [string[], RegExp][] = [
    [[], /--kernel PATH is required/],
    [["--kernel", "k", "--cpus", "abc"], /--cpus: "abc"/],
    [["--kernel", "k", "--cpus", "0"], /--cpus: "0"/],
    [["--kernel", "k", "--cpus", "65"], /--cpus: "65"/],
    [["--kernel", "k", "--timeout", "abc"], /--timeout: "abc"/],
    [["--kernel", "k", "--timeout", "-1"], /--timeout/],
    [["--kernel", "k", "--memory", "lots"], /--memory: bad size/],
    [["--kernel", "k", "--memory", "3M"], /not a positive multiple of 2 MiB/],
    [["--kernel", "k", "--memory", "1048576G"], /more than this host's RAM/],
    [["--kernel", "k", "--bogus"], /Unknown option '--bogus'/],
    [["--kernel", "/nonexistent/vmlinuz"], /ENOENT.*\/nonexistent\/vmlinuz/],
    [["--kernel", "/dev/zero"], /\/dev\/zero is a character device/],
    [["--kernel", "/dev/null"], /\/dev\/null is a character device/],
  ];
  for (const [args, message] of cases) {
    await t.step(args.join(" ") || "(no arguments)", async () => {
      const { code, stdout, stderr } = await cli(args);
      assertEquals(code, ExitCode.usage, stderr);
      assertEquals(stdout, "");
      assertMatch(stderr, message);
      assert(!stderr.includes("    at "), `a stack trace:\n${stderr}`);
    });
  }
});

Deno.test("cli: a file that is no kernel, or an initrd that cannot be read, exits 2 naming it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const notKernel = `${dir}/notes.txt`;
    await Deno.writeTextFile(notKernel, "not a kernel at all\n".repeat(100));
    const bad = await cli(["--kernel", notKernel]);
    assertEquals(bad.code, ExitCode.usage);
    assertMatch(bad.stderr, /bzImage/);
    const initrd = await cli(["--kernel", notKernel, "--initrd", dir]);
    assertEquals(initrd.code, ExitCode.usage);
    assertMatch(initrd.stderr, /initrd .* is a directory/);
    // Larger than the guest's RAM: refused from its size, before it is read.
    const big = `${dir}/big.img`;
    await Deno.writeFile(big, new Uint8Array(0));
    await Deno.truncate(big, 8 << 20);
    const large = await cli(["--kernel", notKernel, "--initrd", big, "--memory", "4M"]);
    assertEquals(large.code, ExitCode.usage);
    assertMatch(large.stderr, /initrd .* is 8388608 bytes, more than the 4194304 accepted/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: parseBootArgs defaults and conversions", () => {
  const config = parseBootArgs([
    "--kernel",
    "k",
    "--memory",
    "1G",
    "--cpus",
    "2",
    "--timeout",
    "1.5",
  ]);
  assert(typeof config === "object");
  assertEquals(config.memorySize, 2 ** 30);
  assertEquals(config.cpus, 2);
  assertEquals(config.timeoutMs, 1500);
  assertEquals(config.cmdline, undefined);
  const defaults = parseBootArgs(["--", "--kernel", "k"]);
  assert(typeof defaults === "object");
  assertEquals(defaults.memorySize, 512 * 2 ** 20);
  assertEquals(defaults.cpus, 1);
  assertEquals(defaults.timeoutMs, undefined);
  assertEquals(parseBootArgs(["-h"]), "help");
  assertEquals(parseSize("262144K"), 256 * 2 ** 20);
  assertEquals(parseSize("64"), 64 * 2 ** 20);
  throws(() => parseSize("1T"), UsageError);
  assert((hostMemory() ?? 1) > 0);
});

Deno.test("cli: the option forms parseArgs took (no node:util loaded): =value, repeats, flags, refusals", () => {
  const config = parseBootArgs([
    "--kernel=k",
    "--disk",
    "a.img",
    "--disk=b.img,ro",
    "--net",
    "tap0",
    "--rng",
    "--cmdline=-no-dash-start",
    "--console",
    "virtio",
    "--",
  ]);
  assert(typeof config === "object");
  assertEquals(config.kernel, "k");
  assertEquals(config.disks, [{ path: "a.img", readOnly: false }, {
    path: "b.img",
    readOnly: true,
  }]);
  assertEquals(config.net, ["tap0"]);
  assertEquals(config.rng, true);
  assertEquals(config.cmdline, "-no-dash-start");
  assertEquals(config.console, "virtio");
  assertEquals(parseBootArgs(["--version", "--kernel", "k"]), "version");
  const refused: [string[], RegExp][] = [
    [["--kernel"], /'--kernel <value>' argument missing/],
    [["--kernel", "k", "extra"], /Unexpected argument 'extra'/],
    [["--kernel", "k", "--", "extra"], /Unexpected argument 'extra'/],
    [["--kernel", "k", "--trace=yes"], /'--trace' does not take an argument/],
    [["--kernel", "-k"], /'--kernel' argument is ambiguous/],
    [["--kernel", "k", "-x"], /Unknown option '-x'/],
  ];
  for (const [args, message] of refused) {
    throws(
      () => parseBootArgs(args),
      (e: Error) => e instanceof UsageError && message.test(e.message),
    );
  }
  // The CLI's start-up loads no Node built-in (Node's compatibility layer costs every boot).
  const graph = new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL("../../src/cli/boot_linux.ts", import.meta.url).pathname],
    stdout: "piped",
    stderr: "null",
  }).outputSync();
  const modules = JSON.parse(new TextDecoder().decode(graph.stdout)).modules as {
    specifier: string;
  }[];
  assertEquals(modules.filter((m) => /^node:(?!crypto$)/.test(m.specifier)), []);
});

Deno.test("cli: console input keeps what the UART did not take and offers it again, bounded", () => {
  let room = 3;
  const got: number[] = [];
  let quit = 0;
  const input = new ConsoleInput({
    receive: (bytes) => {
      const n = Math.min(room, bytes.length);
      got.push(...bytes.subarray(0, n));
      room -= n;
      return n;
    },
    quit: () => quit++,
    ringSize: 8,
    pendingSize: 4,
  });
  // The ring takes 8 bytes, no more: the pump would wait for the rest.
  assertEquals(input.push(new TextEncoder().encode("abcdefghij")), 8);
  input.poll(); // the UART takes 3 of the 4 pending; 4 stay in the ring
  assertEquals(String.fromCharCode(...got), "abc");
  assertEquals(input.pending, 1);
  input.poll(); // no room: nothing taken, nothing more read from the ring
  assertEquals(input.pending, 4);
  assertEquals(input.push(new TextEncoder().encode("XYZ")), 3); // the ring had room for 4
  room = 100; // the guest read its FIFO
  input.poll();
  input.poll();
  assertEquals(String.fromCharCode(...got), "abcdefghXYZ");
  assertEquals(input.pending, 0);
  // Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A x quits.
  input.push(new Uint8Array([0x01, 0x01, 0x71, 0x01, 0x78]));
  input.poll();
  assertEquals(got.slice(-2), [0x01, 0x71]);
  assertEquals(quit, 1);
});

Deno.test("cli: console input stays in order across the ring counters' 2^32 wrap", () => {
  const got: number[] = [];
  const input = new ConsoleInput({
    receive: (bytes) => (got.push(...bytes), bytes.length),
    quit: () => {},
    ringSize: 8,
  });
  // Both free-running counters just below the Int32 wrap, as after 2 GiB of input.
  new Int32Array(input.ring, 0, 2).fill(2 ** 31 - 3);
  const text = "0123456789abcdefghij";
  for (let at = 0; at < text.length;) {
    at += input.push(new TextEncoder().encode(text.slice(at)));
    input.poll();
  }
  assertEquals(String.fromCharCode(...got), text);
  throws(() => new ConsoleInput({ receive: () => 0, quit: () => {}, ringSize: 6 }), RangeError);
});
