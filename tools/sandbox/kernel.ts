/**
 * Boots the guest faster: a bzImage decompresses itself inside the guest, which under TCG takes
 * about 3 s of every run (an xz-compressed Debian kernel). QEMU can also boot the uncompressed
 * ELF `vmlinux` through its PVH entry point (kernels built with CONFIG_PVH), so it is extracted
 * once on the host and cached. Anything unexpected falls back to booting the bzImage.
 *
 * @module
 */

import { join } from "node:path";
import { cacheDir, fingerprint, hashKey, pruneCache } from "./cache.ts";
import { elfIsBootablePvh } from "./elf.ts";

/** Decompressors (host commands reading stdin) by the payload's leading magic bytes. */
const DECOMPRESSORS: { magic: number[]; cmd: string; args: string[] }[] = [
  // The payload ends with a 4-byte size after the stream, which --single-stream ignores.
  { magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], cmd: "xz", args: ["-dc", "--single-stream"] },
  { magic: [0x28, 0xb5, 0x2f, 0xfd], cmd: "zstd", args: ["-dc"] },
  { magic: [0x1f, 0x8b], cmd: "gzip", args: ["-dc"] },
];

/**
 * Returns the compressed kernel inside a bzImage (boot protocol >= 2.08: `payload_offset` and
 * `payload_length` in the setup header), or null when `image` is not such a bzImage.
 */
export function bzImagePayload(image: Uint8Array): Uint8Array | null {
  if (image.length < 0x250) return null;
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (view.getUint32(0x202, true) !== 0x53726448 /* "HdrS" */) return null;
  if (view.getUint16(0x206, true) < 0x208) return null;
  const setupSects = image[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + view.getUint32(0x248, true);
  const end = start + view.getUint32(0x24c, true);
  return end <= image.length ? image.subarray(start, end) : null;
}

async function decompress(payload: Uint8Array): Promise<Uint8Array | null> {
  const d = DECOMPRESSORS.find((d) => d.magic.every((b, i) => payload[i] === b));
  if (!d) return null;
  try {
    const child = new Deno.Command(d.cmd, {
      args: d.args,
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const writing = (async () => {
      const w = child.stdin.getWriter();
      await w.write(payload).catch(() => {});
      await w.close().catch(() => {});
    })();
    // The exit code is ignored on purpose: trailing bytes after the stream make some tools
    // complain although the output is whole. The ELF check below decides.
    const out = await child.output();
    await writing;
    return out.stdout;
  } catch {
    return null; // tool not installed
  }
}

/** Bump when the extraction changes, to invalidate caches. */
const FORMAT_VERSION = 1;

/**
 * Returns what to pass to QEMU's `-kernel`: a PVH-bootable vmlinux extracted from the bzImage
 * `image` and cached, when possible; else `image` itself.
 */
export async function bootableKernel(image: string): Promise<string> {
  const dir = cacheDir();
  const path = join(
    dir,
    `vmlinux-${await hashKey([`vmlinux-format:${FORMAT_VERSION}`, await fingerprint(image)])}`,
  );
  const unusable = `${path}.unusable`;
  for (const p of [path, unusable]) {
    try {
      await Deno.stat(p);
      return p === path ? path : image;
    } catch {
      // not cached
    }
  }
  const payload = bzImagePayload(await Deno.readFile(image));
  const vmlinux = payload ? await decompress(payload) : null;
  if (!vmlinux) return image; // unknown format or missing tool: cheap to find out again
  await Deno.mkdir(dir, { recursive: true });
  if (!elfIsBootablePvh(vmlinux)) {
    // Remember the verdict, so later runs skip the costly decompression.
    await Deno.writeFile(unusable, new Uint8Array());
    return image;
  }
  const tmp = `${path}.${Deno.pid}.tmp`;
  await Deno.writeFile(tmp, vmlinux);
  await Deno.rename(tmp, path);
  await pruneCache(dir, "vmlinux-", path);
  return path;
}
