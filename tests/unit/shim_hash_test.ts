// Issue 13: a JSR import finds its cached shim by SHIM_SOURCE_HASH without
// fetching the source; the constant must be the hash of the published source.

import { strictEqual } from "node:assert/strict";
import { SHIM_SOURCE_HASH, shimSourceHash } from "../../src/ffi/library.ts";

Deno.test("shim hash: SHIM_SOURCE_HASH is the hash of native/kvm_shim.c", () => {
  const source = Deno.readTextFileSync(new URL("../../native/kvm_shim.c", import.meta.url));
  strictEqual(
    shimSourceHash(source),
    SHIM_SOURCE_HASH,
    "native/kvm_shim.c changed: run `deno task build` to update src/ffi/shim_hash.ts",
  );
});

Deno.test("shim source: SHIM_SOURCE is native/kvm_shim.c byte for byte, as build.ts writes it", async () => {
  const { SHIM_SOURCE } = await import("../../src/ffi/shim_source.ts");
  const { shimSourceModule } = await import("../../native/build.ts");
  const source = Deno.readTextFileSync(new URL("../../native/kvm_shim.c", import.meta.url));
  const stale = "native/kvm_shim.c changed: run `deno task build` to update src/ffi/shim_source.ts";
  strictEqual(SHIM_SOURCE, source, stale);
  strictEqual(shimSourceHash(SHIM_SOURCE), SHIM_SOURCE_HASH, stale);
  strictEqual(
    Deno.readTextFileSync(new URL("../../src/ffi/shim_source.ts", import.meta.url)),
    shimSourceModule(source),
    stale,
  );
});
