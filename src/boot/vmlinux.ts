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

import {
  ensureCacheDir,
  readVerified,
  sha256Hex,
  untrustedReason,
  userCacheDir,
  writeExclusive,
} from "../cache_dir.ts";
import { MappedFile } from "../kvm/mapped_file.ts";
import { Errno } from "../errors.ts";
import { BootImageError } from "./boot_image_error.ts";
import { parseBzImage } from "./bzimage.ts";
import { isElf, parseElfKernel, PT_LOAD } from "./elf.ts";
import { decompressXz, MAX_OUTPUT, XzError } from "./xz.ts";

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
  if (payload.length < 32) {
    throw new BootImageError(
      "bad-payload",
      Errno.EBADMSG,
      `the payload is only ${payload.length} bytes`,
    );
  }
  // The build appends the decompressed size (le32) after the stream.
  const size = new DataView(payload.buffer, payload.byteOffset + payload.length - 4)
    .getUint32(0, true);
  let vmlinux: Uint8Array<ArrayBuffer>;
  try {
    // The index must declare exactly the size the image states: no larger buffer.
    vmlinux = decompressXz(payload.subarray(0, payload.length - 4), {
      maxOutput: Math.min(size, MAX_OUTPUT),
    });
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
  const bytes = data.byteOffset % 4 === 0 ? data : data.slice();
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    a = Math.imul(a ^ w, 0x01000193);
    b = Math.imul(b ^ w, 0x5bd1e995) ^ (b >>> 15);
  }
  for (let i = words.length * 4; i < bytes.length; i++) a = Math.imul(a ^ bytes[i], 0x01000193);
  const hex = (x: number) => (x >>> 0).toString(16).padStart(8, "0");
  return `${data.length.toString(16)}-${hex(a)}${hex(b)}`;
}

const EHDR_SIZE = 64;
const PHDR_SIZE = 56;

/** A program header as {@linkcode compactElf} rewrites it. */
interface ProgramHeader {
  raw: Uint8Array;
  type: number;
  offset: number;
  fileSize: number;
  /** Bytes of the file kept (a segment's trailing zeros are dropped). */
  keep: number;
  newOffset: number;
  /** For a non-loadable segment: the loadable one whose bytes hold it. */
  holder?: ProgramHeader;
}

/**
 * The same ELF kernel with the zeros that end each loadable segment left out
 * of the file (`p_filesz` shortened, `p_memsz` kept: the loader zeroes the
 * rest) and without section headers: about half the size of a distribution
 * `vmlinux`, whose `.bss` is stored as zeros. Other segments (the notes QEMU's
 * PVH boot reads) keep their bytes. Segments are packed at 16-byte offsets,
 * so only loaders that copy segments (this one, QEMU's) take it; `mmap`-based
 * ELF loaders would not. With `inPlace`, the result is a view of
 * `image`'s own buffer, rewritten (no second copy of a 60 MB kernel).
 */
export function compactElf(
  image: Uint8Array,
  options: { inPlace?: boolean } = {},
): Uint8Array {
  parseElfKernel(image);
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const phoff = Number(view.getBigUint64(32, true));
  const phnum = view.getUint16(56, true);
  const phentsize = view.getUint16(54, true);
  const headers = Array.from({ length: phnum }, (_, i): ProgramHeader => {
    const at = phoff + i * phentsize;
    return {
      raw: image.slice(at, at + PHDR_SIZE),
      type: view.getUint32(at, true),
      offset: Number(view.getBigUint64(at + 8, true)),
      fileSize: Number(view.getBigUint64(at + 32, true)),
      keep: 0,
      newOffset: 0,
    };
  });
  // parseElfKernel checked the loadable segments; the others' sizes are
  // checked here, before they size anything (a 1 GiB PT_NOTE in a 100 KB file).
  headers.forEach((h, i) => {
    if (h.type !== PT_LOAD && h.offset + h.fileSize > image.length) {
      throw new BootImageError(
        "bad-elf",
        Errno.ENOEXEC,
        `not a loadable x86-64 ELF kernel: segment ${i} (type ${h.type}, ${h.fileSize} bytes ` +
          `at file offset ${h.offset}) runs past the end of the ${image.length}-byte file`,
      );
    }
  });
  const loads = headers.filter((h) => h.type === PT_LOAD);
  for (const h of loads) {
    let keep = h.fileSize;
    while (keep > 0 && image[h.offset + keep - 1] === 0) keep--;
    h.keep = keep;
  }
  // Other segments are read through the loadable segment that holds their bytes.
  const outside = headers.filter((o) => {
    if (o.type === PT_LOAD || o.fileSize === 0) return false;
    const holder = o.holder = loads.find((l) =>
      o.offset >= l.offset && o.offset + o.fileSize <= l.offset + l.fileSize
    );
    if (holder) holder.keep = Math.max(holder.keep, o.offset + o.fileSize - holder.offset);
    else o.keep = o.fileSize;
    return !holder;
  });
  // Laid out in file order, each range moves down, never over one not yet moved.
  const moved = [...loads, ...outside].sort((a, b) => a.offset - b.offset);
  let size = EHDR_SIZE + phnum * PHDR_SIZE;
  for (const h of moved) {
    size = Math.ceil(size / 16) * 16;
    h.newOffset = size;
    size += h.keep;
  }
  const inPlace = options.inPlace === true &&
    moved.every((h, i) =>
      h.newOffset <= h.offset &&
      (i + 1 === moved.length || h.newOffset + h.keep <= moved[i + 1].offset) &&
      (i > 0 || EHDR_SIZE + phnum * PHDR_SIZE <= h.offset)
    );
  const out = inPlace ? image : new Uint8Array(size);
  if (!inPlace) out.set(image.subarray(0, EHDR_SIZE));
  let end = EHDR_SIZE + phnum * PHDR_SIZE;
  for (const h of moved) {
    if (inPlace) {
      out.fill(0, end, h.newOffset); // the alignment gap, as in a fresh copy
      out.copyWithin(h.newOffset, h.offset, h.offset + h.keep);
    } else {
      out.set(image.subarray(h.offset, h.offset + h.keep), h.newOffset);
    }
    end = h.newOffset + h.keep;
  }
  const outView = new DataView(out.buffer, out.byteOffset, out.byteLength);
  outView.setBigUint64(32, BigInt(EHDR_SIZE), true); // e_phoff
  outView.setBigUint64(40, 0n, true); // e_shoff: no section headers
  outView.setUint16(54, PHDR_SIZE, true);
  outView.setUint16(58, 0, true); // e_shentsize
  outView.setUint16(60, 0, true); // e_shnum
  outView.setUint16(62, 0, true); // e_shstrndx
  headers.forEach((h, i) => {
    const at = EHDR_SIZE + i * PHDR_SIZE;
    out.set(h.raw, at);
    if (h.type === PT_LOAD) {
      outView.setBigUint64(at + 8, BigInt(h.newOffset), true);
      outView.setBigUint64(at + 32, BigInt(h.keep), true);
    } else if (h.fileSize > 0) {
      const { holder } = h;
      const newOffset = holder ? holder.newOffset + (h.offset - holder.offset) : h.newOffset;
      outView.setBigUint64(at + 8, BigInt(newOffset), true);
    }
  });
  const result = out.subarray(0, size);
  parseElfKernel(result);
  return result;
}

/** Options of {@linkcode cachedVmlinux}. */
export interface VmlinuxCacheOptions {
  /** Where to keep extracted kernels (default: `kernels/` in the per-user deno-kvm cache). */
  directory?: string;
  /**
   * Map a cached kernel into memory instead of reading it (needs the native
   * shim): no copy and no allocation of its size. The view stays valid until
   * the result is closed.
   */
  map?: boolean;
}

/** What {@linkcode cachedVmlinux} returns. */
export interface CachedVmlinux {
  /** The ELF kernel, compacted (see {@linkcode compactElf}). */
  vmlinux: Uint8Array;
  /** `"cache"` when read back, `"extracted"` when decompressed by this call. */
  source: "cache" | "extracted";
  /** The cache file (absent when no cache directory could be used). */
  path?: string;
  /**
   * Why the cache was not used, when it was not: a directory that is not the
   * current user's or is writable by group or others, or one that could not
   * be created or written.
   */
  cacheProblem?: string;
  /** Releases the mapping of a mapped kernel (its `vmlinux` view is empty after); a no-op otherwise. */
  close(): void;
  /** Same as `close`, for `using`. */
  [Symbol.dispose](): void;
}

function result(
  vmlinux: Uint8Array,
  source: "cache" | "extracted",
  path?: string,
  file?: MappedFile,
  cacheProblem?: string,
): CachedVmlinux {
  const close = () => file?.close();
  return {
    vmlinux,
    source,
    path,
    ...(cacheProblem ? { cacheProblem } : {}),
    close,
    [Symbol.dispose]: close,
  };
}

/**
 * {@linkcode extractVmlinux}, compacted ({@linkcode compactElf}) and
 * remembered: the first call for a bzImage decompresses it and writes the
 * result into the cache, with its SHA-256 beside it
 * (`vmlinux-<key>.elf.sha256`); later calls read it back. The key is a
 * 64-bit hash of the bzImage and its length.
 *
 * The cache is trusted only when it is the current user's: a directory or
 * entry owned by someone else or writable by group or others is not read (nor
 * written, for a directory; `cacheProblem` says why), and an entry whose
 * content does not match its stored SHA-256 (a flipped byte, a truncated
 * file) is extracted again and replaced. Entries are written to exclusively
 * created files under random names and renamed into place. A cache that
 * cannot be written is not an error: the kernel is still returned.
 *
 * @example
 * ```ts ignore
 * import { cachedVmlinux } from "@deno-kvm/kvm/vmm";
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
  let cacheProblem: string | undefined;
  if (dir) {
    try {
      cacheProblem = ensureCacheDir(dir);
    } catch (e) {
      cacheProblem = `cannot create ${dir}: ${e instanceof Error ? e.message : String(e)}`;
    }
  }
  const path = dir && !cacheProblem ? `${dir}/vmlinux-${fingerprint(image)}.elf` : undefined;
  if (path && !untrustedReason(path, "file")) {
    let file: MappedFile | undefined;
    try {
      file = options.map ? MappedFile.open(path) : undefined;
      const cached = readVerified(path, file?.bytes);
      if (cached) {
        parseElfKernel(cached);
        return result(cached, "cache", path, file);
      }
      file?.close();
    } catch {
      // Unreadable or damaged: extract again.
      file?.close();
    }
  }
  // In place: no 60 MB of garbage for the collector to return while a VM runs.
  const vmlinux = compactElf(extractVmlinux(image), { inPlace: true });
  if (!path || !dir) return result(vmlinux, "extracted", undefined, undefined, cacheProblem);
  const temporary: string[] = [];
  try {
    temporary.push(writeExclusive(dir, vmlinux, ".vmlinux-", ".tmp"));
    temporary.push(writeExclusive(dir, new TextEncoder().encode(sha256Hex(vmlinux)), ".vmlinux-"));
    Deno.renameSync(temporary[0], path);
    Deno.renameSync(temporary[1], `${path}.sha256`);
    return result(vmlinux, "extracted", path);
  } catch (e) {
    for (const tmp of temporary) {
      try {
        Deno.removeSync(tmp);
      } catch {
        // Renamed already, or never written.
      }
    }
    const problem = `cannot write ${path}: ${e instanceof Error ? e.message : String(e)}`;
    return result(vmlinux, "extracted", undefined, undefined, problem);
  }
}
