// The .xz decoder against streams made by xz-utils (LZMA2 with and without
// the x86 BCJ filter, CRC64/CRC32/no check, an uncompressible chunk), the
// distribution kernel's own payload, and corrupt or truncated input.

import { ok, strictEqual, throws } from "node:assert/strict";
import { crc32, decompressXz, XzError } from "../../src/boot/xz.ts";
import { hostKernelPath } from "../../examples/initramfs.ts";

const data = (name: string) => Deno.readFileSync(new URL(`data/${name}.xz`, import.meta.url));

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// Made with `xz --format=xz` and the options named; sizes and SHA-256 of the original.
const VECTORS = [
  {
    name: "textCrc64",
    options: "--check=crc64",
    size: 14820,
    sha256: "77129de3ff40a203c0a55b517b3a74272019fcfcfd692e728e2df0ca46dd0d59",
  },
  {
    name: "x86Crc32",
    options: "--check=crc32 --x86 --lzma2=preset=9",
    size: 17820,
    sha256: "928458bbdcda77f5ea3e110e22b4dbe96dd896bba5ed4ad1ac58b0f183098512",
  },
  {
    name: "uncompressedFirst",
    options: "--check=crc32 (random bytes first: an uncompressed chunk, then LZMA chunks)",
    size: 70800,
    sha256: "4a93f96ba8135bca550d795dbb4f0749cba770e5d4d3a169813ae4581c257560",
  },
  {
    name: "randomNone",
    options: "--check=none (random bytes first)",
    size: 1700,
    sha256: "332a02f66f38bcb4df774b272cda4f87c63a74c84f905753dfe0ddedcac033bf",
  },
];

for (const v of VECTORS) {
  Deno.test(`xz: decodes a stream made with ${v.options}`, async () => {
    const out = decompressXz(data(v.name));
    strictEqual(out.length, v.size);
    strictEqual(await sha256(out), v.sha256);
  });
}

Deno.test("xz: crc32 matches the standard check value", () => {
  strictEqual(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
});

function xzError(message: RegExp) {
  return (e: unknown) => {
    ok(e instanceof XzError, `an XzError, got ${e}`);
    ok(message.test(e.message), `${JSON.stringify(e.message)} matches ${message}`);
    return true;
  };
}

Deno.test("xz: corrupt, truncated and foreign input are refused", () => {
  throws(() => decompressXz(new TextEncoder().encode("not xz at all")), xzError(/magic/));
  const good = data("x86Crc32");
  // A flipped bit in the compressed data: the decoder or the CRC32 must notice.
  for (const at of [40, 500, 1200, good.length - 80]) {
    const bad = good.slice();
    bad[at] ^= 0x10;
    throws(() => decompressXz(bad), XzError, `a flipped bit at ${at}`);
  }
  throws(() => decompressXz(good.subarray(0, good.length - 10)), XzError);
  throws(() => decompressXz(good.subarray(0, 100)), XzError);
  const headerFlag = good.slice();
  headerFlag[7] = 0x0a; // SHA-256 check, with a now-wrong header CRC
  throws(() => decompressXz(headerFlag), xzError(/CRC32/));
});

const kernelPath = hostKernelPath();
Deno.test({
  name: "xz: the distribution kernel's payload decodes to an ELF (CRC32 checked)",
  ignore: kernelPath === undefined,
  fn() {
    const image = Deno.readFileSync(kernelPath!);
    const view = new DataView(image.buffer);
    const setupSize = ((image[0x1f1] || 4) + 1) * 512;
    const offset = view.getUint32(0x248, true);
    const length = view.getUint32(0x24c, true);
    const payload = image.subarray(setupSize + offset, setupSize + offset + length);
    if (payload[0] !== 0xfd) return; // not an xz kernel: nothing to check here
    // Linux appends the decompressed size (le32) after the stream.
    const size = new DataView(payload.buffer, payload.byteOffset + length - 4).getUint32(0, true);
    const out = decompressXz(payload.subarray(0, length - 4));
    strictEqual(out.length, size);
    strictEqual(String.fromCharCode(...out.subarray(1, 4)), "ELF");
  },
});

Deno.test("xz: 2100 random corruptions give an XzError or the right bytes, never anything else", () => {
  let seed = 12345;
  const random = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
  for (const name of ["x86Crc32", "textCrc64", "randomNone"]) {
    const good = data(name);
    const expected = decompressXz(good);
    for (let i = 0; i < 700; i++) {
      const bad = good.slice();
      const flips = 1 + Math.floor(random() * 4);
      for (let f = 0; f < flips; f++) {
        bad[Math.floor(random() * bad.length)] = Math.floor(random() * 256);
      }
      const cut = random() < 0.2 ? bad.subarray(0, Math.floor(random() * bad.length)) : bad;
      try {
        const out = decompressXz(cut);
        // Without a check (randomNone) a corrupt stream can decode; with one it must match.
        if (name !== "randomNone") {
          ok(out.length === expected.length && out.every((b, k) => b === expected[k]));
        }
      } catch (e) {
        ok(e instanceof XzError, `${name} mutation ${i}: ${e}`);
      }
    }
  }
});
