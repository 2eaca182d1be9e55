/**
 * `deno task build`: compiles native/kvm_shim.c into native/build/libkvm_shim.so
 * with the same flags the on-demand loader uses.
 *
 * @module
 */

import { CC_FLAGS, compile } from "../src/ffi/library.ts";

const source = new URL("./kvm_shim.c", import.meta.url).pathname;
const output = new URL("./build/libkvm_shim.so", import.meta.url).pathname;
Deno.mkdirSync(new URL("./build/", import.meta.url), { recursive: true });
compile(source, output);
console.log(`built ${output} (cc ${CC_FLAGS.join(" ")})`);
