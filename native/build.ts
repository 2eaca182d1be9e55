/**
 * `deno task build`: compiles native/kvm_shim.c into native/build/libkvm_shim.so
 * with the same flags the on-demand loader uses, and keeps
 * src/ffi/shim_hash.ts (the cache key a JSR import uses offline) in step with
 * the source.
 *
 * @module
 */

import { CC_FLAGS, compile, SHIM_SOURCE_HASH, shimSourceHash } from "../src/ffi/library.ts";

const source = new URL("./kvm_shim.c", import.meta.url).pathname;
const output = new URL("./build/libkvm_shim.so", import.meta.url).pathname;
Deno.mkdirSync(new URL("./build/", import.meta.url), { recursive: true });
compile(source, output);
console.log(`built ${output} (cc ${CC_FLAGS.join(" ")})`);

const hash = shimSourceHash(Deno.readTextFileSync(source));
if (hash !== SHIM_SOURCE_HASH) {
  const file = new URL("../src/ffi/shim_hash.ts", import.meta.url);
  const text = Deno.readTextFileSync(file);
  Deno.writeTextFileSync(file, text.replace(`"${SHIM_SOURCE_HASH}"`, `"${hash}"`));
  console.log(`updated ${file.pathname}: SHIM_SOURCE_HASH = "${hash}"`);
}
