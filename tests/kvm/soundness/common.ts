// Shared by the soundness scripts: each runs in its own process (see
// ../soundness_test.ts), prints what happened and exits 0 only when the
// library answered with a typed error or its documented result.

import { KvmError } from "../../../mod.ts";

/** Prints `label: ok` when `f` throws a KvmError with `code`, else fails the script. */
export function expectKvmError(label: string, code: string, f: () => unknown, mention?: string) {
  try {
    f();
  } catch (e) {
    if (e instanceof KvmError && e.code === code && (!mention || e.message.includes(mention))) {
      console.log(`${label}: ${code} ok`);
      return;
    }
    fail(`${label}: expected KvmError ${code}${mention ? ` naming ${mention}` : ""}, got ${e}`);
  }
  fail(`${label}: expected KvmError ${code}, but it returned`);
}

/** Reports a violation and exits 1 (a result, not a crash). */
export function fail(message: string): never {
  console.log(`VIOLATION ${message}`);
  Deno.exit(1);
}

/** A guest that loops on `out 0x10, al` (exits forever): `inc al; out 0x10, al; jmp $-4`. */
export const OUT_LOOP = [0xfe, 0xc0, 0xe6, 0x10, 0xeb, 0xfa];
