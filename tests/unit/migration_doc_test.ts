// The libkvm migration table (docs/libkvm-migration.md) is checked against its
// two sources of truth: the classic libkvm header (every function and every
// member of struct kvm_callbacks must have a row, by its exact C name) and
// this library (every `Kvm.x`/`Vm.x`/`Vcpu.x`/`KvmContext.x` the table cites
// must exist). No KVM needed.

import { deepStrictEqual, ok } from "node:assert/strict";
import * as mod from "../../mod.ts";

const HEADER_URL = new URL("../../../shared/seed/libkvm.h", import.meta.url);
const DOC_URL = new URL("../../docs/libkvm-migration.md", import.meta.url);

/**
 * The header as given to this project: 74 function declarations (the issue
 * text says 80, but the header declares 74 distinct functions, counted by
 * hand and by this parser) and 21 callbacks.
 */
const EXPECTED_FUNCTIONS = 74;
const EXPECTED_CALLBACKS = 21;

/** Classes whose members the TypeScript column may cite as `Class.member`. */
const CITABLE = ["Kvm", "Vm", "Vcpu", "KvmContext", "GuestMemory", "EventFd", "Device"] as const;

/**
 * Instance fields the table cites: they live on instances, not prototypes,
 * so they are listed here and checked by the type checker instead.
 */
const INSTANCE_FIELDS: Record<string, readonly string[]> = {
  KvmContext: ["irqchipInKernel", "pitInKernel", "vm"] satisfies (keyof mod.KvmContext)[],
  Vcpu: ["id", "runArea"] satisfies (keyof mod.Vcpu)[],
};

/**
 * The `KvmContext` callbacks the table may cite as `callbacks.name`, checked
 * against `KvmCallbacks` by the type checker.
 */
const CALLBACKS = [
  "inb",
  "inw",
  "inl",
  "outb",
  "outw",
  "outl",
  "mmioRead",
  "mmioWrite",
  "debug",
  "halt",
  "shutdown",
  "ioWindow",
  "tryPushInterrupts",
  "pushNmi",
  "postRun",
  "preRun",
  "tprAccess",
] as const satisfies readonly (keyof mod.KvmCallbacks)[];

/** Marks a row whose TypeScript equivalent does not exist yet (exempt from the API check). */
const NOT_YET = "not yet implemented";

function headerPresent(): boolean {
  try {
    return Deno.statSync(HEADER_URL).isFile;
  } catch {
    return false;
  }
}

/** Index of the `}` that closes the `{` at `open`. */
function matchingBrace(text: string, open: number): number {
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    if (text[i] === "{") depth++;
    else if (text[i] === "}" && --depth === 0) return i;
  }
  throw new Error(`unbalanced brace at ${open}`);
}

/**
 * Extracts function and callback names from libkvm.h. The transcription lost
 * line breaks after `#include`, `#if ...` and `///` comments, so declarations
 * share lines with preprocessor directives and line comments: only block
 * comments are removed, and declarations are found by shape (a type word,
 * optional `*`, the name, `(`), never by line.
 */
function parseLibkvmHeader(source: string): { functions: string[]; callbacks: string[] } {
  const text = source.replace(/\/\*[\s\S]*?\*\//g, " ");
  const start = text.search(/struct\s+kvm_callbacks\s*\{/);
  if (start < 0) throw new Error("struct kvm_callbacks not found");
  const open = text.indexOf("{", start);
  const close = matchingBrace(text, open);
  const callbacks = [...text.slice(open + 1, close).matchAll(/\(\s*\*\s*(\w+)\s*\)\s*\(/g)]
    .map((m) => m[1]);
  // Outside the struct: drop every brace block (the inline function's body),
  // so calls inside bodies are not mistaken for declarations.
  let outside = text.slice(0, start) + text.slice(close + 1);
  for (let at = outside.indexOf("{"); at >= 0; at = outside.indexOf("{")) {
    outside = outside.slice(0, at) + ";" + outside.slice(matchingBrace(outside, at) + 1);
  }
  const functions = [...outside.matchAll(/\b[A-Za-z_]\w*[\s*]+\b([A-Za-z_]\w*)\s*\(/g)]
    .map((m) => m[1])
    .filter((name) => name !== "defined");
  return { functions: [...new Set(functions)], callbacks: [...new Set(callbacks)] };
}

interface Row {
  line: number;
  cName: string;
  cells: string[];
}

/** Table rows whose first cell is a backticked name: `| \`name\` | ts | ioctl | notes |`. */
function tableRows(doc: string): Row[] {
  const rows: Row[] = [];
  doc.split("\n").forEach((text, i) => {
    const m = text.match(/^\| `(\w+)`\s*\|/);
    if (!m) return;
    const cells = text.slice(
      1,
      text.trimEnd().endsWith("|") ? text.trimEnd().length - 1 : undefined,
    )
      .split(/(?<!\\)\|/)
      .map((c) => c.trim());
    rows.push({ line: i + 1, cName: m[1], cells });
  });
  return rows;
}

const doc = Deno.readTextFileSync(DOC_URL);
const rows = tableRows(doc);

Deno.test({
  name: "libkvm.h parser: every function and callback, with the header's counts",
  ignore: !headerPresent(),
  fn() {
    const { functions, callbacks } = parseLibkvmHeader(Deno.readTextFileSync(HEADER_URL));
    // Spot checks of the awkward cases: a declaration after `#if defined(...)`
    // on the same line, a `static inline` one with a body, one after `#ifdef`,
    // a callback after `#endif` and after a `///` comment.
    for (
      const name of ["kvm_get_msr_list", "kvm_reset_mpstate", "kvm_set_guest_debug", "kvm_init"]
    ) {
      ok(functions.includes(name), `parser missed ${name}`);
    }
    for (const name of ["inb", "post_kvm_run", "push_nmi", "s390_handle_reset"]) {
      ok(callbacks.includes(name), `parser missed callback ${name}`);
    }
    ok(!functions.includes("cb") && !functions.includes("defined"), "parser took a non-function");
    deepStrictEqual(functions.length, EXPECTED_FUNCTIONS, `functions: ${functions.join(" ")}`);
    deepStrictEqual(callbacks.length, EXPECTED_CALLBACKS, `callbacks: ${callbacks.join(" ")}`);
  },
});

Deno.test({
  name: "migration table: one row per libkvm function and callback, by exact C name",
  ignore: !headerPresent(),
  fn() {
    const { functions, callbacks } = parseLibkvmHeader(Deno.readTextFileSync(HEADER_URL));
    const names = [...functions, ...callbacks];
    const missing = names.filter((n) => !doc.split("\n").some((l) => l.startsWith(`| \`${n}\``)));
    deepStrictEqual(missing, [], `rows missing from docs/libkvm-migration.md`);
    const seen = new Map<string, number>();
    for (const row of rows) {
      ok(
        !seen.has(row.cName),
        `${row.cName}: rows on lines ${seen.get(row.cName)} and ${row.line}`,
      );
      seen.set(row.cName, row.line);
      ok(names.includes(row.cName), `line ${row.line}: ${row.cName} is not in libkvm.h`);
    }
  },
});

Deno.test("migration table: every row has four cells, the first three filled", () => {
  ok(rows.length > 0, "no table rows found");
  for (const row of rows) {
    deepStrictEqual(
      row.cells.length,
      4,
      `line ${row.line} (${row.cName}): ${row.cells.length} cells`,
    );
    ok(row.cells.slice(0, 3).every((c) => c.length > 0), `line ${row.line} (${row.cName}): empty`);
  }
});

Deno.test("migration table: every cited Kvm/Vm/Vcpu/KvmContext member exists", () => {
  const exports = mod as unknown as Record<string, unknown>;
  const missing: string[] = [];
  let cited = 0;
  for (const row of rows) {
    const ts = row.cells[1];
    if (ts.includes(NOT_YET)) continue;
    for (const span of ts.matchAll(/`([^`]+)`/g)) {
      for (const m of span[1].matchAll(new RegExp(`\\b(${CITABLE.join("|")})\\.(\\w+)`, "g"))) {
        cited++;
        const [, className, member] = m;
        const cls = exports[className];
        const found = typeof cls === "function" &&
          (member in (cls.prototype as object) || member in cls ||
            (INSTANCE_FIELDS[className] ?? []).includes(member));
        if (!found) missing.push(`line ${row.line} (${row.cName}): ${className}.${member}`);
      }
    }
  }
  ok(cited > 50, `only ${cited} citations found: is the table written as \`Class.method()\`?`);
  deepStrictEqual(missing, [], 'cited but not in mod.ts (mark the row "not yet implemented")');
});

Deno.test("migration table: every cited `callbacks.name` is a KvmContext callback", () => {
  const known: readonly string[] = CALLBACKS;
  const unknown: string[] = [];
  let cited = 0;
  for (const row of rows) {
    if (row.cells[1].includes(NOT_YET)) continue;
    for (const m of row.cells[1].matchAll(/`callbacks\.(\w+)`/g)) {
      cited++;
      if (!known.includes(m[1])) unknown.push(`line ${row.line} (${row.cName}): callbacks.${m[1]}`);
    }
  }
  ok(cited >= 17, `only ${cited} callback citations found`);
  deepStrictEqual(unknown, [], "not in KvmCallbacks");
});
