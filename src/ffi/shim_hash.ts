/**
 * The cache key of `native/kvm_shim.c` as published with this module
 * (`shimSourceHash` of its text). A remote (JSR) import finds its cached
 * build by this key without fetching the source, so later runs work offline.
 * `deno task build` rewrites it when the source changes;
 * `tests/unit/shim_hash_test.ts` fails when it is stale.
 *
 * @module
 */

/** FNV-1a 64-bit hash (hex) of `native/kvm_shim.c`. */
export const SHIM_SOURCE_HASH = "0a3d966507ec3952";
