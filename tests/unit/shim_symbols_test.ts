// The shim's symbols are bound in groups (issue 17: binding each one costs time in every
// isolate): every symbol is in exactly one group, each group binds on first use, and a bound
// symbol calls into the shim.

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { loadNative, native } from "../../src/ffi/library.ts";
import { CORE_SYMBOLS, LAZY_SYMBOL_GROUPS, SHIM_VERSION, symbols } from "../../src/ffi/symbols.ts";

Deno.test("shim symbols: each one in exactly one group, and every one callable", async () => {
  const grouped = [...CORE_SYMBOLS, ...LAZY_SYMBOL_GROUPS.flat()];
  deepStrictEqual([...grouped].sort(), Object.keys(symbols).sort());
  strictEqual(new Set(grouped).size, grouped.length, "no symbol in two groups");
  await loadNative();
  const lib = native();
  strictEqual(lib.kvm_shim_version(), SHIM_VERSION);
  for (const name of Object.keys(symbols)) {
    strictEqual(typeof lib[name as keyof typeof lib], "function", name);
  }
  // A lazily bound group calls into the shim: an eventfd written and read back.
  const fd = lib.kvm_eventfd(0, 0);
  ok(fd >= 0, `eventfd: ${fd}`);
  strictEqual(lib.kvm_write_u64(fd, 5n), 8);
  const value = new BigUint64Array(1);
  strictEqual(lib.kvm_read_u64(fd, value), 8);
  strictEqual(value[0], 5n);
  strictEqual(lib.kvm_close(fd), 0);
  strictEqual(lib.kvm_eventfd, lib.kvm_eventfd, "bound once");
});
