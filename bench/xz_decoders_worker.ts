/**
 * The Worker of `bench/xz_decoders.ts`: decodes the stream it is sent with
 * the TypeScript decoder and answers with the time it took.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { decompressXz } from "../src/boot/xz.ts";

self.onmessage = (e: MessageEvent<{ stream: Uint8Array }>) => {
  const start = performance.now();
  const out = decompressXz(e.data.stream);
  self.postMessage({ ms: performance.now() - start, length: out.length });
};
