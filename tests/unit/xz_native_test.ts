// The system's liblzma (through Deno.dlopen) against the TypeScript decoder:
// the same bytes for every stream and for the distribution kernel, the same
// refusals, the TypeScript decoder as the fallback where liblzma is missing
// (forced in child processes), and for a stream whose dictionary liblzma
// refuses.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { hostKernelPath } from "../../src/boot/initramfs.ts";
import {
  bzImagePayload,
  extractVmlinux,
  extractVmlinuxAsync,
  extractVmlinuxDetailed,
} from "../../src/boot/vmlinux.ts";
import { crc32, decompressXz, XzError, xzStreamInfo } from "../../src/boot/xz.ts";
import {
  liblzma,
  LiblzmaError,
  liblzmaProblem,
  LZMA_MEMLIMIT_ERROR,
} from "../../src/boot/xz_native.ts";
import { tinyBzImage, tinyElf, tinyXz } from "../fuzz/samples.ts";
import { refused } from "./boot_refusal.ts";

const lib = liblzma();
const noLib = lib === undefined;
if (noLib) console.log(`xz_native: skipping the liblzma tests: ${liblzmaProblem()}`);

const data = (name: string) => Deno.readFileSync(new URL(`data/${name}.xz`, import.meta.url));
const VECTORS = ["textCrc64", "x86Crc32", "uncompressedFirst", "randomNone"];

function sameBytes(a: Uint8Array, b: Uint8Array, what: string): void {
  strictEqual(a.length, b.length, `${what}: lengths`);
  const differs = a.findIndex((byte, i) => byte !== b[i]);
  strictEqual(differs, -1, `${what}: first difference at ${differs}`);
}

Deno.test({
  name: "xz_native: liblzma decodes every stream to the TypeScript decoder's bytes",
  ignore: noLib,
  async fn() {
    for (const name of VECTORS) {
      const stream = data(name);
      const expected = decompressXz(stream);
      sameBytes(lib!.decode(stream), expected, name);
      sameBytes(await lib!.decodeAsync(stream), expected, `${name}, on another thread`);
    }
    sameBytes(lib!.decode(tinyXz()), tinyElf(), "the tiny kernel");
    // Stream padding (zeros in fours) after the stream is part of the format.
    const padded = new Uint8Array(tinyXz().length + 8);
    padded.set(tinyXz());
    sameBytes(lib!.decode(padded), tinyElf(), "with stream padding");
  },
});

Deno.test({
  name: "xz_native: corrupt, truncated, oversized and foreign input give an XzError",
  ignore: noLib,
  async fn() {
    const good = data("x86Crc32");
    const declared = xzStreamInfo(good).uncompressedSize;
    for (const at of [40, 500, 1200, good.length - 80]) {
      const bad = good.slice();
      bad[at] ^= 0x10;
      throws(() => lib!.decode(bad), XzError, `a flipped bit at ${at}`);
    }
    throws(() => lib!.decode(good.subarray(0, good.length - 10)), XzError);
    throws(() => lib!.decode(new TextEncoder().encode("not xz at all")), /magic/);
    // The index's claim is checked before any output exists.
    throws(() => lib!.decode(good, { maxOutput: declared - 1 }), /more than the \d+ allowed/);
    // Something after the stream that is not padding.
    const trailing = new Uint8Array(good.length + 4);
    trailing.set(good);
    trailing.set([1, 2, 3, 4], good.length);
    throws(() => lib!.decode(trailing), XzError);
    // The data stays corrupt on the other thread too.
    const bad = good.slice();
    bad[500] ^= 0x10;
    await lib!.decodeAsync(bad).then(
      () => ok(false, "a corrupt stream decoded"),
      (e) => ok(e instanceof XzError, `${e}`),
    );
  },
});

/** The tiny bzImage with the LZMA2 dictionary size of its block header set to `code` (40: 4 GiB). */
function withDictionary(image: Uint8Array<ArrayBuffer>, code: number): Uint8Array<ArrayBuffer> {
  const { payload } = bzImagePayload(image);
  const at = payload.byteOffset;
  // Block header at 12: size, flags, x86 (04 00), LZMA2 (21 01 <dictionary>), padding, CRC32.
  deepStrictEqual([...image.subarray(at + 14, at + 18)], [0x04, 0x00, 0x21, 0x01]);
  image[at + 18] = code;
  new DataView(image.buffer).setUint32(at + 20, crc32(image.subarray(at + 12, at + 20)), true);
  return image;
}

Deno.test({
  name: "xz_native: a dictionary past liblzma's memory limit is decoded by the TypeScript decoder",
  ignore: noLib,
  fn() {
    const image = withDictionary(tinyBzImage(), 40);
    const stream = bzImagePayload(image).payload;
    throws(
      () => lib!.decode(stream.subarray(0, stream.length - 4)),
      (e: unknown) => e instanceof LiblzmaError && e.ret === LZMA_MEMLIMIT_ERROR,
    );
    const extracted = extractVmlinuxDetailed(image);
    strictEqual(extracted.decoder, "typescript");
    ok(/MEMLIMIT/.test(extracted.fallbackReason ?? ""), extracted.fallbackReason);
    sameBytes(extracted.vmlinux, tinyElf(), "the TypeScript decoder's result");
    throws(
      () => extractVmlinux(image, { decoder: "liblzma" }),
      refused("bad-payload", "EBADMSG", /MEMLIMIT/),
    );
  },
});

Deno.test({
  name: "xz_native: both decoders extract a bzImage to the same bytes; maxOutput is checked first",
  ignore: noLib,
  async fn() {
    const image = tinyBzImage();
    const native = extractVmlinuxDetailed(image, { decoder: "liblzma" });
    const typescript = extractVmlinuxDetailed(image, { decoder: "typescript" });
    strictEqual(native.decoder, "liblzma");
    strictEqual(typescript.decoder, "typescript");
    sameBytes(native.vmlinux, typescript.vmlinux, "tiny bzImage");
    const threaded = await extractVmlinuxAsync(image);
    strictEqual(threaded.decoder, "liblzma");
    sameBytes(threaded.vmlinux, typescript.vmlinux, "tiny bzImage, on another thread");
    throws(
      () => extractVmlinux(image, { maxOutput: tinyElf().length - 1 }),
      refused("file-too-large", "EFBIG", /unpacks to \d+ bytes, more than/),
    );
  },
});

const kernelPath = hostKernelPath();
const kernel = kernelPath ? Deno.readFileSync(kernelPath) : undefined;
const xzKernel = kernel !== undefined && bzImagePayload(kernel).format === "xz";

Deno.test({
  name: "xz_native: liblzma and TypeScript extract the distribution kernel to identical bytes",
  ignore: noLib || !xzKernel,
  async fn() {
    const native = await extractVmlinuxAsync(kernel!);
    strictEqual(native.decoder, "liblzma");
    const typescript = extractVmlinuxDetailed(kernel!, { decoder: "typescript" });
    sameBytes(native.vmlinux, typescript.vmlinux, kernelPath!);
  },
});

/** Runs the extraction of the tiny bzImage in a child process with `env`; its report. */
async function extractInChild(env: Record<string, string>, decoder = "auto") {
  const script = `
    import { extractVmlinuxDetailed } from ${
    JSON.stringify(import.meta.resolve("../../src/boot/vmlinux.ts"))
  };
    import { tinyBzImage } from ${JSON.stringify(import.meta.resolve("../fuzz/samples.ts"))};
    try {
      const x = extractVmlinuxDetailed(tinyBzImage(), { decoder: ${JSON.stringify(decoder)} });
      console.log(JSON.stringify({ decoder: x.decoder, reason: x.fallbackReason, bytes: [...x.vmlinux] }));
    } catch (e) {
      console.log(JSON.stringify({ error: e.name, code: e.code, message: e.message }));
    }`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", script],
    env,
    stdout: "piped",
    stderr: "inherit",
  }).output();
  strictEqual(out.code, 0);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

Deno.test("xz_native: where liblzma cannot be loaded, the TypeScript decoder extracts the same bytes", async () => {
  const forced = await extractInChild({ DENO_KVM_LIBLZMA: "none" });
  strictEqual(forced.decoder, "typescript");
  ok(/DENO_KVM_LIBLZMA=none/.test(forced.reason), forced.reason);
  deepStrictEqual(forced.bytes, [...tinyElf()]);
  const missing = await extractInChild({ DENO_KVM_LIBLZMA: "/nonexistent/liblzma.so.5" });
  strictEqual(missing.decoder, "typescript");
  ok(/\/nonexistent\/liblzma\.so\.5/.test(missing.reason), missing.reason);
  deepStrictEqual(missing.bytes, [...tinyElf()]);
  // Asked for by name, a missing liblzma is an error, not a silent fallback.
  const refusedChild = await extractInChild({ DENO_KVM_LIBLZMA: "none" }, "liblzma");
  strictEqual(refusedChild.error, "BootImageError");
  strictEqual(refusedChild.code, "ENOSYS");
});
