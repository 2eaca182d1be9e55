// Every shell command in README.md (its ```sh / ```bash blocks) is run by CI
// (.ci/run) exactly as written, or is listed in NOT_RUN_BY_CI with why. A
// README command that CI does not run and that is not listed fails here, and
// so does a listed one that the README no longer shows (the list stays true).
// The listed commands are checked as far as is possible without running them:
// their `deno task` exists, the CLI accepts their arguments, the permissions
// line is the one tests/kvm/jsr_import_test.ts runs with.

import { deepStrictEqual, ok } from "node:assert/strict";
import { parseBootArgs } from "../../src/cli/boot_linux.ts";
import { INSTALL_COMMAND } from "../../tools/sandbox/host.ts";

const root = new URL("../../", import.meta.url);
const readme = Deno.readTextFileSync(new URL("README.md", root));
const ciScript = Deno.readTextFileSync(new URL(".ci/run", root));
const denoJson = JSON.parse(Deno.readTextFileSync(new URL("deno.json", root)));

/** README commands CI cannot run as written, each with the reason and what covers it instead. */
const NOT_RUN_BY_CI: Record<string, string> = {
  "deno add jsr:@deno-kvm/kvm":
    "needs jsr.io (CI has no registry access, and the version under test is not published yet); " +
    "tests/kvm/jsr_import_test.ts imports the published file set over HTTP instead",
  "deno run --allow-ffi --allow-read --allow-write --allow-env --allow-run=cc main.ts":
    "a user's main.ts importing from jsr.io; tests/kvm/jsr_import_test.ts runs such a script " +
    "with these permissions (and --allow-import naming its local server instead of jsr.io)",
  'deno task boot:linux -- --kernel /vmlinuz --initrd initrd.cpio --cmdline "console=ttyS0" --memory 512M --cpus 2':
    "interactive (a shell on the console until you exit it), and a Linux boot takes most of an " +
    "hour on a software KVM such as kvm_pvm; tests/unit/cli_test.ts runs the CLI, " +
    "tests/kvm/linux_boot_test.ts boots Linux, and this test parses these arguments",
  "deno run -A jsr:@deno-kvm/kvm/cli --help":
    "needs jsr.io; tests/unit/cli_test.ts runs the same entry's --help from the checkout",
};

/** Joins `\` continuations and drops a trailing comment (a `#` after a blank, outside quotes). */
function normalize(line: string): string {
  let quote = "";
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = "";
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if (c === "#" && (i === 0 || /\s/.test(line[i - 1]))) {
      return line.slice(0, i).trim();
    }
  }
  return line.trim();
}

/** The commands of the shell blocks of a Markdown text, continuation lines joined. */
export function markdownShellCommands(markdown: string): string[] {
  const commands: string[] = [];
  let inShell = false;
  let inFence = false;
  let pending = "";
  for (const line of markdown.split("\n")) {
    const fence = /^\s*```(\S*)/.exec(line);
    if (fence) {
      if (!inFence) {
        inFence = true;
        inShell = ["sh", "bash", "shell", "console"].includes(fence[1]);
      } else {
        inFence = inShell = false;
      }
      continue;
    }
    if (!inShell) continue;
    const text = line.replace(/^\$ /, "");
    if (text.trimEnd().endsWith("\\")) {
      pending += text.trimEnd().slice(0, -1).trim() + " ";
      continue;
    }
    const command = normalize(pending + text.trim());
    pending = "";
    if (command) commands.push(command);
  }
  return commands;
}

/**
 * The command lines of a shell script as it runs them, each also without its leading `NAME=value`
 * assignments (they only add to the environment: the command itself is the one written).
 */
export function scriptCommands(script: string): Set<string> {
  const commands = new Set<string>();
  for (const raw of script.split("\n")) {
    const line = normalize(raw);
    if (!line) continue;
    commands.add(line);
    commands.add(line.replace(/^(?:[A-Za-z_][A-Za-z0-9_]*=(?:"[^"]*"|'[^']*'|\S*)\s+)+/, ""));
  }
  return commands;
}

/** Splits a command line into words (double and single quotes; no expansions). */
function words(command: string): string[] {
  const out: string[] = [];
  for (const m of command.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)) out.push(m[1] ?? m[2] ?? m[3]);
  return out;
}

Deno.test("README: the shell blocks are found, continuation lines joined, comments dropped", () => {
  deepStrictEqual(
    markdownShellCommands(
      '```sh\ndeno task a   # why\nx --y \\\n  --z "#1"\n```\n```ts\nnot();\n```\n',
    ),
    ["deno task a", 'x --y --z "#1"'],
  );
  const ci = scriptCommands("  KVM_TESTS=required KVM_TARGET=$target deno task test # all\n");
  ok(ci.has("deno task test") && ci.has("KVM_TESTS=required KVM_TARGET=$target deno task test"));
});

Deno.test("README: every shell command is run by .ci/run as written, or listed with why not", () => {
  const commands = markdownShellCommands(readme);
  ok(commands.length >= 8, `the README's shell commands were found: ${commands.join(" | ")}`);
  const ci = scriptCommands(ciScript);
  const missing = commands.filter((c) => !ci.has(c) && !(c in NOT_RUN_BY_CI));
  deepStrictEqual(
    missing,
    [],
    "README commands that .ci/run does not run as written: run them there, or add them to " +
      "NOT_RUN_BY_CI with the reason",
  );
  const stale = Object.keys(NOT_RUN_BY_CI).filter((c) => !commands.includes(c));
  deepStrictEqual(stale, [], "NOT_RUN_BY_CI lists commands the README no longer shows");
  const redundant = Object.keys(NOT_RUN_BY_CI).filter((c) => ci.has(c));
  deepStrictEqual(redundant, [], "NOT_RUN_BY_CI lists commands .ci/run runs after all");
});

Deno.test("README: every `deno task` it names exists, in the blocks and in the text", () => {
  const tasks = new Set(Object.keys(denoJson.tasks));
  const named = new Set<string>();
  for (const m of readme.matchAll(/deno task ([a-z][\w:-]*)/g)) named.add(m[1]);
  ok(named.has("example") && named.has("test"), "the quick start's tasks are found");
  deepStrictEqual([...named].filter((t) => !tasks.has(t)), [], "tasks missing from deno.json");
});

Deno.test("README: the boot:linux command's arguments are accepted by the CLI", () => {
  const boot = markdownShellCommands(readme).filter((c) => c.startsWith("deno task boot:linux"));
  ok(boot.length > 0, "the README shows a boot:linux command");
  for (const command of boot) {
    const config = parseBootArgs(words(command).slice(3));
    ok(typeof config === "object", `${command}: parsed as a boot`);
    ok(config.initrd !== undefined && config.cpus >= 1, `${command}: ${JSON.stringify(config)}`);
  }
});

Deno.test("README: the permissions line is the one the JSR-import test runs with", () => {
  const line = markdownShellCommands(readme).find((c) => /^deno run --allow-ffi/.test(c));
  ok(line, "the README shows the install section's deno run line");
  const test = Deno.readTextFileSync(new URL("tests/kvm/jsr_import_test.ts", root));
  for (const flag of words(line).filter((w) => w.startsWith("--allow-"))) {
    const name = flag.replace(/=.*/, "");
    // The test serves the package itself: its --allow-net names that server, not jsr.io.
    const expected = name === "--allow-net" ? "`--allow-net=127.0.0.1:" : `"${flag}"`;
    ok(test.includes(expected), `tests/kvm/jsr_import_test.ts runs with ${flag}`);
  }
});

Deno.test("README: the sandbox's apt-get command is the one the tooling runs and prints", () => {
  const flat = readme.replace(/\s+/g, " ");
  const install = INSTALL_COMMAND.split(" && ").at(-1)!.replace(/^sudo /, "");
  ok(install.includes("--no-install-recommends"), install);
  ok(flat.includes(install), `README.md shows ${install}`);
});
