/**
 * The uncompressed kernel inside a bzImage, taken out on the host: a VMM can
 * then load it at its physical addresses and enter it directly, skipping the
 * kernel's own decompressor (seconds of guest time on a nested or emulated
 * host). Extraction is cached per user, keyed by the bzImage's contents.
 *
 * Only xz payloads (Debian, Ubuntu and most distributions' default) are
 * decompressed here; other formats are refused with a clear error, and such
 * kernels still boot the classic way.
 *
 * @module
 */

import { userCacheDir } from "../cache_dir.ts";
import { Errno } from "../errors.ts";
import { BootImageError } from "./boot_image_error.ts";
import { parseBzImage } from "./bzimage.ts";
import { isElf, parseElfKernel } from "./elf.ts";
import { decompressXz, XzError } from "./xz.ts";

/** Boot protocol version that added `payload_offset` and `payload_length`. */
export const PROTOCOL_PAYLOAD = 0x0208;

const PAYLOAD_FORMATS: [string, number[]][] = [
  ["xz", [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ["gzip", [0x1f, 0x8b]],
  ["zstd", [0x28, 0xb5, 0x2f, 0xfd]],
  ["lz4", [0x02, 0x21, 0x4c, 0x18]],
  ["bzip2", [0x42, 0x5a, 0x68]],
  ["lzo", [0x89, 0x4c, 0x5a, 0x4f]],
  ["lzma", [0x5d, 0x00, 0x00]],
];

/** The compressed payload of a bzImage and its format (`"xz"`, `"gzip"`, … or `"unknown"`). */
export function bzImagePayload(image: Uint8Array): { format: string; payload: Uint8Array } {
  const kernel = parseBzImage(image);
  if (kernel.protocol < PROTOCOL_PAYLOAD) {
    throw new BootImageError(
      "unsupported-payload",
      Errno.EOPNOTSUPP,
      "boot protocol before 2.08 does not locate the compressed kernel (payload_offset)",
    );
  }
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const offset = view.getUint32(0x248, true);
  const length = view.getUint32(0x24c, true);
  if (offset + length > kernel.kernel.length) {
    throw new BootImageError(
      "truncated",
      Errno.ENOEXEC,
      `the payload (${length} bytes at ${offset}) runs past the end of the kernel`,
    );
  }
  const payload = kernel.kernel.subarray(offset, offset + length);
  const found = PAYLOAD_FORMATS.find(([, magic]) => magic.every((b, i) => payload[i] === b));
  return { format: found ? found[0] : "unknown", payload };
}

/**
 * Decompresses the kernel of an xz-compressed bzImage into its ELF
 * `vmlinux`. Throws a `BootImageError`: `unsupported-payload` for other
 * compressions, `bad-payload` for a corrupt stream or a result that is not a
 * loadable ELF kernel.
 */
export function extractVmlinux(image: Uint8Array): Uint8Array<ArrayBuffer> {
  const { format, payload } = bzImagePayload(image);
  if (format !== "xz") {
    throw new BootImageError(
      "unsupported-payload",
      Errno.EOPNOTSUPP,
      `the kernel is ${format}-compressed; only xz is decompressed on the host ` +
        "(boot the bzImage itself: the kernel decompresses itself in the guest)",
    );
  }
  // The build appends the decompressed size (le32) after the stream.
  const size = new DataView(payload.buffer, payload.byteOffset + payload.length - 4)
    .getUint32(0, true);
  let vmlinux: Uint8Array<ArrayBuffer>;
  try {
    vmlinux = decompressXz(payload.subarray(0, payload.length - 4));
  } catch (e) {
    if (!(e instanceof XzError)) throw e;
    throw new BootImageError("bad-payload", Errno.EBADMSG, `the kernel's payload: ${e.message}`);
  }
  if (vmlinux.length !== size || !isElf(vmlinux)) {
    throw new BootImageError(
      "bad-payload",
      Errno.EBADMSG,
      `the kernel's payload decompressed to ${vmlinux.length} bytes (the image says ${size}) ` +
        (isElf(vmlinux) ? "" : "that are not an ELF file"),
    );
  }
  parseElfKernel(vmlinux);
  return vmlinux;
}

/** Two 32-bit multiplicative hashes over the words of `data`, with its length: a cache key. */
export function fingerprint(data: Uint8Array): string {
  const words = new Uint32Array(data.buffer, data.byteOffset, data.length >>> 2);
  const aligned = data.byteOffset % 4 === 0;
  const word = aligned
    ? (i: number) => words[i]
    : (i: number) =>
      (data[4 * i] | (data[4 * i + 1] << 8) | (data[4 * i + 2] << 16) | (data[4 * i + 3] << 24)) >>>
      0;
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  const n = data.length >>> 2;
  for (let i = 0; i < n; i++) {
    const w = word(i);
    a = Math.imul(a ^ w, 0x01000193);
    b = Math.imul(b ^ w, 0x5bd1e995) ^ (b >>> 15);
  }
  for (let i = n * 4; i < data.length; i++) a = Math.imul(a ^ data[i], 0x01000193);
  const hex = (x: number) => (x >>> 0).toString(16).padStart(8, "0");
  return `${data.length.toString(16)}-${hex(a)}${hex(b)}`;
}

/** Options of {@linkcode cachedVmlinux}. */
export interface VmlinuxCacheOptions {
  /** Where to keep extracted kernels (default: `kernels/` in the per-user deno-kvm cache). */
  directory?: string;
}

/** What {@linkcode cachedVmlinux} returns. */
export interface CachedVmlinux {
  /** The ELF kernel. */
  vmlinux: Uint8Array;
  /** `"cache"` when read back, `"extracted"` when decompressed by this call. */
  source: "cache" | "extracted";
  /** The cache file (absent when no cache directory could be used). */
  path?: string;
}

/**
 * {@linkcode extractVmlinux}, remembered: the first call for a bzImage
 * decompresses it and writes the result into the cache (atomically); later
 * calls read it back. A cache that cannot be written is not an error (the
 * kernel is still returned); a cached file that is not a loadable ELF of the
 * expected size is replaced.
 *
 * @example
 * ```ts ignore
 * import { cachedVmlinux } from "./vmlinux.ts";
 * const { vmlinux, source } = cachedVmlinux(Deno.readFileSync("/boot/vmlinuz"));
 * console.log(source, vmlinux.length);
 * ```
 */
export function cachedVmlinux(
  image: Uint8Array,
  options: VmlinuxCacheOptions = {},
): CachedVmlinux {
  const base = userCacheDir();
  const dir = options.directory ?? (base ? `${base}/kernels` : undefined);
  const path = dir ? `${dir}/vmlinux-${fingerprint(image)}.elf` : undefined;
  if (path) {
    try {
      const cached = Deno.readFileSync(path);
      parseElfKernel(cached);
      return { vmlinux: cached, source: "cache", path };
    } catch {
      // Absent, unreadable or damaged: extract again.
    }
  }
  const vmlinux = extractVmlinux(image);
  if (!path || !dir) return { vmlinux, source: "extracted" };
  try {
    Deno.mkdirSync(dir, { recursive: true });
    const tmp = `${path}.${Deno.pid}.tmp`;
    Deno.writeFileSync(tmp, vmlinux);
    Deno.renameSync(tmp, path);
    return { vmlinux, source: "extracted", path };
  } catch {
    return { vmlinux, source: "extracted" };
  }
}
