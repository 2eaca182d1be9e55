// DirtyBitmap's scan lists exactly the set bits of the bitmap, in order, in
// both of its forms (the WebAssembly SIMD module and the JavaScript
// fallback), compared with a naive bit-by-bit scan (bitmapPages).

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { bitmapPages, DirtyBitmap, KvmError, Vm } from "../../mod.ts";

const PAGE = 4096;

/** Both forms of the scan for a slot of `memorySize` bytes (the SIMD one where the runtime has it). */
function both(memorySize: number): DirtyBitmap[] {
  return [new DirtyBitmap(memorySize), new DirtyBitmap(memorySize, { simd: false })];
}

function listed(d: DirtyBitmap): number[] {
  return Array.from(d.pages.subarray(0, d.scan()));
}

/** A small deterministic generator (xorshift32), so a failure can be rerun. */
function random(seed: number): () => number {
  let s = seed;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

/**
 * Whether V8 offers WebAssembly SIMD on this CPU: on x86-64 it needs SSE4.1
 * (QEMU's `-cpu max` has it), on arm64 it always does.
 */
function cpuHasWasmSimd(): boolean {
  if (Deno.build.arch === "aarch64") return true;
  try {
    return /\bsse4_1\b/.test(Deno.readTextFileSync("/proc/cpuinfo"));
  } catch {
    return false;
  }
}

Deno.test("the hand-assembled module validates: the default scan is WebAssembly SIMD", () => {
  // A module with a byte wrong would silently fall back to the JavaScript scan.
  if (cpuHasWasmSimd()) ok(new DirtyBitmap(PAGE).simd, "V8 refused the module's bytes");
  strictEqual(new DirtyBitmap(PAGE, { simd: false }).simd, false);
});

Deno.test("the bitmap is Vm.bitmapBytes long and the list has one entry per bit", () => {
  for (const size of [PAGE, 64 * PAGE, 65 * PAGE, 1000 * PAGE, 1 << 30]) {
    const d = new DirtyBitmap(size);
    strictEqual(d.bytes.length, Vm.bitmapBytes(size), `${size}`);
    strictEqual(d.pages.length, Vm.bitmapBytes(size) * 8, `${size}`);
    strictEqual(d.bytes.byteOffset % 8, 0, "the kernel writes 64-bit words");
  }
});

Deno.test("an empty bitmap lists nothing; a full one lists every page", () => {
  for (const size of [PAGE, 64 * PAGE, 100 * PAGE, 4096 * PAGE]) {
    for (const d of both(size)) {
      strictEqual(d.scan(), 0, `empty, ${size}, simd ${d.simd}`);
      // Full: the kernel sets only the slot's pages, never the bits past its end.
      const pages = size / PAGE;
      for (let p = 0; p < pages; p++) d.bytes[p >> 3] |= 1 << (p & 7);
      const all = Array.from({ length: pages }, (_, p) => p);
      deepStrictEqual(listed(d), all, `full, ${size}, simd ${d.simd}`);
      d.bytes.fill(0);
      strictEqual(d.scan(), 0, `cleared again, ${size}, simd ${d.simd}`);
    }
  }
});

Deno.test("bits a caller set past the slot's last page are listed within the list", () => {
  // A 1-page slot has a 64-bit bitmap: 63 bits past the slot that only a caller can set.
  for (const d of both(PAGE)) {
    d.bytes.fill(0xff);
    deepStrictEqual(listed(d), Array.from({ length: 64 }, (_, p) => p), `simd ${d.simd}`);
  }
});

Deno.test("word edges: bits 0, 31, 32 and 63 of a word, and the last word of the bitmap", () => {
  const size = 1000 * PAGE; // 1000 pages: 16 words, the last one partial
  const pages = [0, 31, 32, 63, 64, 95, 127, 128 + 31, 511, 512, 575, 576, 960, 991, 992, 999];
  for (const d of both(size)) {
    for (const p of pages) d.bytes[p >> 3] |= 1 << (p & 7);
    deepStrictEqual(listed(d), pages, `simd ${d.simd}`);
    deepStrictEqual(listed(d), pages, `a second scan of the same bitmap, simd ${d.simd}`);
  }
});

Deno.test("random bitmaps: the scan lists what a bit-by-bit scan finds", () => {
  const next = random(0x14_2026);
  const sizes = [PAGE, 63 * PAGE, 64 * PAGE, 513 * PAGE, 8192 * PAGE, 65536 * PAGE];
  for (const size of sizes) {
    const forms = both(size);
    for (const density of [0.0005, 0.01, 0.3, 0.97]) {
      for (let round = 0; round < 3; round++) {
        const bitmap = new Uint8Array(Vm.bitmapBytes(size));
        const pages = size / PAGE;
        for (let p = 0; p < pages; p++) if (next() < density) bitmap[p >> 3] |= 1 << (p & 7);
        // Sparse rounds get the edge bits too, where bugs in sign or shift hide.
        if (round === 0) {
          for (const p of [31, 63, pages - 1]) if (p < pages) bitmap[p >> 3] |= 1 << (p & 7);
        }
        const expected = bitmapPages(bitmap);
        for (const d of forms) {
          d.bytes.set(bitmap);
          deepStrictEqual(listed(d), expected, `size ${size}, density ${density}, simd ${d.simd}`);
        }
      }
    }
  }
});

Deno.test("a 4 GiB slot (1 Mi pages, a 4 MiB list) is listed whole", () => {
  const size = 4 * 2 ** 30; // a 128 KiB bitmap
  for (const d of both(size)) {
    const words = new Int32Array(d.bytes.buffer, d.bytes.byteOffset, d.bytes.length / 4);
    words.fill(-1);
    const count = d.scan();
    strictEqual(count, size / PAGE, `simd ${d.simd}`);
    strictEqual(d.pages[0], 0);
    strictEqual(d.pages[count - 1], size / PAGE - 1);
    strictEqual(d.pages[123_457], 123_457);
  }
});

Deno.test("sizes that are no slot's are refused with EINVAL", () => {
  for (const size of [0, -PAGE, PAGE + 1, 1.5, NaN, 2 ** 40 + PAGE]) {
    throws(
      () => new DirtyBitmap(size),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /memorySize/.test(e.message),
      `${size}`,
    );
  }
});
