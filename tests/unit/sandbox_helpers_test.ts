import assert from "node:assert/strict";
import { ConsoleParser } from "../../tools/sandbox/console.ts";
import { elfInterpreter, elfIsBootablePvh } from "../../tools/sandbox/elf.ts";
import { moduleLoadOrder, parseLdd } from "../../tools/sandbox/host.ts";
import { bzImagePayload } from "../../tools/sandbox/kernel.ts";
import {
  exitMarkerPrefix,
  passedEnv,
  runScript,
  shellQuote,
  startMarker,
} from "../../tools/sandbox/script.ts";

Deno.test("shellQuote survives a round trip through sh", async () => {
  const words = ["plain", "", "with space", "it's", `"double"`, "$HOME", "`x`", "a\nb", "*", "\\"];
  const script = `printf '%s\\0' ${words.map(shellQuote).join(" ")}`;
  const out = await new Deno.Command("sh", { args: ["-c", script], stdout: "piped" }).output();
  assert.deepEqual(new TextDecoder().decode(out.stdout).split("\0").slice(0, -1), words);
});

Deno.test("runScript exports env, execs the command, rejects bad names", () => {
  const s = runScript(["deno", "test", "a b"], { KVM_TESTS: "1", X: "it's" });
  assert.match(s, /^export KVM_TESTS=1$/m);
  assert.match(s, /^export X='it'\\''s'$/m);
  assert.match(s, /^exec deno test 'a b'$/m);
  assert.throws(() => runScript(["x"], { "A-B": "1" }), /bad environment variable/);
  assert.throws(() => runScript([], {}), /empty command/);
});

Deno.test("passedEnv keeps only the forwarded variables", () => {
  assert.deepEqual(
    passedEnv({
      KVM_TESTS: "1",
      KVM_FOO: "2",
      DENO_KVM_X: "3",
      CI: "true",
      NO_COLOR: "1",
      HOME: "/h",
      PATH: "/b",
    }),
    { KVM_TESTS: "1", KVM_FOO: "2", DENO_KVM_X: "3", CI: "true", NO_COLOR: "1" },
  );
});

function parse(chunks: string[], quiet: boolean) {
  let written = "";
  let started = 0;
  const p = new ConsoleParser({
    nonce: "n1",
    quiet,
    write: (t) => written += t,
    onStart: () => started++,
  });
  for (const c of chunks) p.push(c);
  p.end();
  return { p, written, started };
}

/** Splits a string into chunks of every size from 1 up, to exercise held-back marker prefixes. */
function shred(s: string): string[] {
  const out: string[] = [];
  for (let i = 0, n = 1; i < s.length; i += n, n = (n % 7) + 1) out.push(s.slice(i, i + n));
  return out;
}

const consoleText = `[ 1.0] boot noise\r\n${startMarker("n1")}\r\nhello\r\n@@ not a marker\r\n` +
  `partial${exitMarkerPrefix("n1")}3@@\r\n[ 2.0] reboot: Power down\r\n`;

Deno.test("ConsoleParser: quiet forwards only the command's output, in any chunking", () => {
  for (const chunks of [[consoleText], shred(consoleText), consoleText.split("")]) {
    const { p, written, started } = parse(chunks, true);
    assert.equal(written, "hello\n@@ not a marker\npartial");
    assert.equal(p.output, written);
    assert.equal(p.bootLog, "[ 1.0] boot noise\n");
    assert.equal(p.exitCode, 3);
    assert.equal(p.phase, "done");
    assert.equal(started, 1);
  }
});

Deno.test("ConsoleParser: verbose forwards everything but the markers", () => {
  const { written } = parse(shred(consoleText), false);
  assert.equal(
    written,
    "[ 1.0] boot noise\nhello\n@@ not a marker\npartial[ 2.0] reboot: Power down\n",
  );
});

Deno.test("ConsoleParser: a marker of another run, or none at all", () => {
  const { p, written } = parse(
    [`${startMarker("n1")}\n${exitMarkerPrefix("other")}0@@\nend`],
    true,
  );
  assert.equal(written, `${exitMarkerPrefix("other")}0@@\nend`);
  assert.equal(p.exitCode, null);
  const panic = parse(["Kernel panic - not syncing\n"], true);
  assert.equal(panic.p.phase, "boot");
  assert.equal(panic.p.bootLog, "Kernel panic - not syncing\n");
  assert.equal(panic.written, "");
});

Deno.test("ConsoleParser: text looking like a marker head is released at the line end", () => {
  const { written } = parse([startMarker("n1"), "\n@@DENO-KVM-SANDBOX-", "oops", "\nmore"], true);
  assert.equal(written, "@@DENO-KVM-SANDBOX-oops\nmore");
});

Deno.test("moduleLoadOrder puts dependencies first", () => {
  const dep = [
    "kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko",
    "kernel/arch/x86/kvm/kvm-amd.ko.xz: kernel/drivers/crypto/ccp/ccp.ko.xz kernel/arch/x86/kvm/kvm.ko " +
    "kernel/virt/lib/irqbypass.ko",
    "kernel/drivers/crypto/ccp/ccp.ko.xz:",
    "kernel/virt/lib/irqbypass.ko:",
  ].join("\n");
  assert.deepEqual(moduleLoadOrder(dep, "kvm-amd"), [
    "kernel/drivers/crypto/ccp/ccp.ko.xz",
    "kernel/virt/lib/irqbypass.ko",
    "kernel/arch/x86/kvm/kvm.ko",
    "kernel/arch/x86/kvm/kvm-amd.ko.xz",
  ]);
  assert.equal(moduleLoadOrder(dep, "kvm-intel"), null);
});

Deno.test("parseLdd keeps absolute paths, including the loader", () => {
  const text = `\tlinux-vdso.so.1 (0x00007ffc)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f00)
\t/lib64/ld-linux-x86-64.so.2 => /usr/lib64/ld-linux-x86-64.so.2 (0x00007f01)
`;
  assert.deepEqual(parseLdd(text), [
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib64/ld-linux-x86-64.so.2",
    "/usr/lib64/ld-linux-x86-64.so.2",
  ]);
  assert.throws(() => parseLdd("\tlibfoo.so => not found\n"), /not found/);
});

Deno.test("elfInterpreter tells the running deno (dynamic) from non-ELF data", async () => {
  const head = new Uint8Array(64 * 1024);
  const f = await Deno.open(Deno.execPath());
  try {
    await f.read(head);
  } finally {
    f.close();
  }
  assert.match(elfInterpreter(head) ?? "", /^\/.*ld-.*\.so/);
  assert.throws(() => elfInterpreter(new Uint8Array(100)), /not an ELF/);
  assert.equal(elfIsBootablePvh(head), false); // truncated: segments lie beyond the buffer
});

const kernelImage = (() => {
  try {
    return [...Deno.readDirSync("/boot")].map((e) => `/boot/${e.name}`).find((p) =>
      p.includes("vmlinuz-")
    );
  } catch {
    return undefined;
  }
})();

Deno.test({
  name: "bzImagePayload finds the compressed kernel of the installed bzImage",
  ignore: kernelImage === undefined,
  fn: async () => {
    let image: Uint8Array;
    try {
      image = await Deno.readFile(kernelImage!);
    } catch {
      return; // unreadable to this user (Ubuntu): nothing to check
    }
    const payload = bzImagePayload(image);
    assert.ok(payload);
    const magics = [
      [0xfd, 0x37, 0x7a, 0x58],
      [0x28, 0xb5, 0x2f, 0xfd],
      [0x1f, 0x8b],
      [0x5d, 0x00],
      [0x02, 0x21],
      [
        0x42,
        0x5a,
      ],
      [0x89, 0x4c],
    ];
    assert.ok(
      magics.some((m) => m.every((b, i) => payload[i] === b)),
      `payload starts ${payload.subarray(0, 4)}`,
    );
    assert.equal(bzImagePayload(new Uint8Array(4096)), null);
  },
});
