// The shim's symbols (issue 17: binding each one costs time in every isolate): every symbol is
// in exactly one group; loaded as usual all are bound at once, and with `lazySymbols` (the boot
// CLI, the machines' AP workers) the groups beyond the core bind on first use and call into the
// shim like the others.

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { loadNative, native, nativePath } from "../../src/ffi/library.ts";
import { CORE_SYMBOLS, LAZY_SYMBOL_GROUPS, SHIM_VERSION, symbols } from "../../src/ffi/symbols.ts";

/** An eventfd written and read back through `lib`: the eventfd group calls into the shim. */
function eventfdRoundTrip(lib: ReturnType<typeof native>): void {
  const fd = lib.kvm_eventfd(0, 0);
  ok(fd >= 0, `eventfd: ${fd}`);
  strictEqual(lib.kvm_write_u64(fd, 5n), 8);
  const value = new BigUint64Array(1);
  strictEqual(lib.kvm_read_u64(fd, value), 8);
  strictEqual(value[0], 5n);
  strictEqual(lib.kvm_close(fd), 0);
}

Deno.test("shim symbols: each one in exactly one group, and every one bound by a plain load", async () => {
  const grouped = [...CORE_SYMBOLS, ...LAZY_SYMBOL_GROUPS.flat()];
  deepStrictEqual([...grouped].sort(), Object.keys(symbols).sort());
  strictEqual(new Set(grouped).size, grouped.length, "no symbol in two groups");
  await loadNative();
  const lib = native();
  strictEqual(lib.kvm_shim_version(), SHIM_VERSION);
  for (const name of Object.keys(symbols)) {
    strictEqual(typeof lib[name as keyof typeof lib], "function", name);
  }
  eventfdRoundTrip(lib);
});

Deno.test("shim symbols: with lazySymbols the other groups bind on first use, and work", async () => {
  await loadNative();
  // A process of its own: this one loaded the shim already (the preload).
  const child = `
    import { loadNative, native } from ${
    JSON.stringify(import.meta.resolve("../../src/ffi/library.ts"))
  };
    import { symbols } from ${JSON.stringify(import.meta.resolve("../../src/ffi/symbols.ts"))};
    await loadNative({ path: ${JSON.stringify(nativePath)}, lazySymbols: true });
    const lib = native();
    const kinds = Object.keys(symbols).map((name) => typeof lib[name]);
    const fd = lib.kvm_eventfd(0, 0);
    const value = new BigUint64Array(1);
    const wrote = lib.kvm_write_u64(fd, 7n), read = lib.kvm_read_u64(fd, value);
    lib.kvm_close(fd);
    console.log(JSON.stringify({ kinds, fd, wrote, read, value: Number(value[0]),
      same: lib.kvm_eventfd === lib.kvm_eventfd, version: lib.kvm_shim_version() }));
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", child],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(120_000),
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  strictEqual(out.code, 0, new TextDecoder().decode(out.stderr));
  const got = JSON.parse(text);
  ok(got.kinds.every((k: string) => k === "function"), text);
  ok(got.fd >= 0, text);
  deepStrictEqual([got.wrote, got.read, got.value, got.same, got.version], [
    8,
    8,
    7,
    true,
    SHIM_VERSION,
  ]);
});
