// The ABI is checked, not trusted: this test generates a C program from the
// TypeScript definitions (every struct codec exported by src/abi/, every ioctl
// number, every constant table), compiles it against <linux/kvm.h>, and
// compares what C says with what TypeScript says. A struct or ioctl added to
// src/abi/ is covered without editing this test.

import { deepStrictEqual, ok } from "node:assert/strict";
import { type AnyStructDef, cMember, fieldSize } from "../../src/abi/struct.ts";

const abiDir = new URL("../../src/abi/", import.meta.url);

/** Constant tables: exported object name → prefix of its C names. */
const CONSTANT_TABLES: Record<string, string> = {
  Cap: "KVM_CAP_",
  ExitReason: "KVM_EXIT_",
};

/**
 * Constants newer than the <linux/kvm.h> of Debian 12 that this project is
 * built against; they are checked wherever the header has them.
 */
const NEWER_THAN_HEADERS = new Set([
  "KVM_EXIT_MEMORY_FAULT",
  "KVM_CAP_USER_MEMORY2",
  "KVM_CAP_MEMORY_FAULT_INFO",
  "KVM_CAP_MEMORY_ATTRIBUTES",
  "KVM_CAP_GUEST_MEMFD",
  "KVM_CAP_VM_TYPES",
  "KVM_SET_USER_MEMORY_REGION2",
]);

interface Expected {
  structs: AnyStructDef[];
  constants: Map<string, number | bigint>;
}

async function collect(): Promise<Expected> {
  const structs = new Map<string, AnyStructDef>();
  const constants = new Map<string, number | bigint>();
  for await (const entry of Deno.readDir(abiDir)) {
    if (!entry.name.endsWith(".ts")) continue;
    const module = await import(new URL(entry.name, abiDir).href);
    for (const [name, value] of Object.entries(module)) {
      if (isStruct(value)) structs.set(value.cName, value);
      else if (name in CONSTANT_TABLES) {
        for (const [key, v] of Object.entries(value as Record<string, number>)) {
          constants.set(CONSTANT_TABLES[name] + key, v);
        }
      } else if (/^KVM_[A-Z0-9_]+$/.test(name) && typeof value === "number") {
        constants.set(name, value);
      }
    }
  }
  return { structs: [...structs.values()], constants };
}

function isStruct(value: unknown): value is AnyStructDef {
  return typeof value === "function" && "cName" in value && "fields" in value && "size" in value;
}

/** Offset checks of every field, nested structs included, as (C path, offset, size). */
function fieldChecks(def: AnyStructDef, prefix = "", base = 0): [string, number, number][] {
  const out: [string, number, number][] = [];
  for (const [name, field] of Object.entries(def.fields)) {
    const path = prefix + cMember(name, field);
    out.push([path, base + field.offset, fieldSize(field)]);
    if (typeof field.type !== "string") {
      out.push(...fieldChecks(field.type, `${path}.`, base + field.offset));
    }
  }
  return out;
}

function probeSource(expected: Expected): string {
  const lines = [
    "#include <stdio.h>",
    "#include <stddef.h>",
    "#include <linux/kvm.h>",
    "int main(void) {",
  ];
  for (const def of expected.structs) {
    lines.push(`  printf("size ${def.cName} %zu\\n", sizeof(${def.cName}));`);
    for (const [path] of fieldChecks(def)) {
      lines.push(
        `  printf("field ${def.cName} ${path} %zu %zu\\n", offsetof(${def.cName}, ${path}), ` +
          `sizeof(((${def.cName} *)0)->${path}));`,
      );
    }
  }
  for (const name of expected.constants.keys()) {
    lines.push(`#ifdef ${name}`);
    lines.push(`  printf("const ${name} %llu\\n", (unsigned long long)(${name}));`);
    lines.push("#endif");
  }
  lines.push("  return 0;", "}");
  return lines.join("\n");
}

Deno.test("ABI: every struct, field, ioctl and constant matches <linux/kvm.h>", async () => {
  const expected = await collect();
  ok(expected.structs.length >= 5, "struct codecs were found");
  ok(expected.constants.size >= 100, "constants were found");

  const dir = await Deno.makeTempDir({ prefix: "kvm-abi-" });
  try {
    await Deno.writeTextFile(`${dir}/probe.c`, probeSource(expected));
    const cc = await new Deno.Command("cc", {
      args: ["-Wall", "-Werror", "-o", `${dir}/probe`, `${dir}/probe.c`],
    }).output();
    ok(cc.success, `the probe compiles:\n${new TextDecoder().decode(cc.stderr)}`);
    const run = await new Deno.Command(`${dir}/probe`).output();
    ok(run.success, "the probe runs");
    const said = new TextDecoder().decode(run.stdout).trim().split("\n");

    const actual = new Map<string, string>();
    for (const line of said) {
      const [kind, ...rest] = line.split(" ");
      if (kind === "size") actual.set(`size ${rest.slice(0, -1).join(" ")}`, rest.at(-1)!);
      else if (kind === "field") {
        actual.set(`field ${rest.slice(0, -2).join(" ")}`, rest.slice(-2).join(" "));
      } else actual.set(`const ${rest[0]}`, rest[1]);
    }

    const mismatches: string[] = [];
    const check = (key: string, want: string) => {
      const got = actual.get(key);
      if (got !== want) mismatches.push(`${key}: TypeScript says ${want}, C says ${got}`);
    };
    for (const def of expected.structs) {
      check(`size ${def.cName}`, String(def.size));
      for (const [path, offset, size] of fieldChecks(def)) {
        check(`field ${def.cName} ${path}`, `${offset} ${size}`);
      }
    }
    const absent: string[] = [];
    for (const [name, value] of expected.constants) {
      if (!actual.has(`const ${name}`)) {
        if (!NEWER_THAN_HEADERS.has(name)) absent.push(name);
        continue;
      }
      check(`const ${name}`, BigInt(value).toString());
    }
    deepStrictEqual(mismatches, []);
    deepStrictEqual(absent, [], "constants missing from <linux/kvm.h>");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
