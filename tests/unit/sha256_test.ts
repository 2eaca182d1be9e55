// The short-input SHA-256 of the host probe's key (src/boot/sha256.ts) against node:crypto and
// FIPS 180-4's examples, at every padding boundary (55, 56, 63, 64 bytes) and past one block.

import { strictEqual } from "node:assert/strict";
import { createHash } from "node:crypto";
import { sha256HexSmall } from "../../src/boot/sha256.ts";

Deno.test("sha256HexSmall: FIPS 180-4's examples", () => {
  const text = (s: string) => sha256HexSmall(new TextEncoder().encode(s));
  strictEqual(text("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  strictEqual(text(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  strictEqual(
    text("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
  );
});

Deno.test("sha256HexSmall: the same digest as node:crypto for every length up to 3 blocks, and larger", () => {
  const data = new Uint8Array(70_000).map((_, i) => (i * 131 + (i >> 8)) & 0xff);
  for (const n of [...Array(200).keys(), 1000, 4095, 4096, 4097, 70_000]) {
    const bytes = data.subarray(0, n);
    strictEqual(sha256HexSmall(bytes), createHash("sha256").update(bytes).digest("hex"), `${n}`);
  }
});
