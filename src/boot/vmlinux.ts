/**
 * The uncompressed kernel inside a bzImage, taken out on the host: a VMM can
 * then load it at its physical addresses and enter it directly, skipping the
 * kernel's own decompressor (seconds of guest time on a nested or emulated
 * host). Extraction is cached per user, keyed by the bzImage's contents.
 *
 * Only xz payloads (Debian, Ubuntu and most distributions' default) are
 * decompressed here, by the system's liblzma where it loads (`xz_native.ts`)
 * and by the TypeScript decoder (`xz.ts`) otherwise; other formats are
 * refused with a clear error, and such kernels still boot the classic way.
 *
 * @module
 */

import {
  ensureCacheDir,
  fileStamp,
  md5Hex,
  readStamp,
  sha256Hex,
  sha256HexAsync,
  untrustedReason,
  userCacheDir,
  writeExclusive,
  writeExclusiveAsync,
  writeStamp,
} from "../cache_dir.ts";
import { MappedFile } from "../kvm/mapped_file.ts";
import { Errno } from "../errors.ts";
import { BootImageError } from "./boot_image_error.ts";
import { parseBzImage, type VmlinuxFile } from "./bzimage.ts";
import { elfProgramHeaders, isElf, parseElfKernel, PT_LOAD } from "./elf.ts";
import { decompressXz, MAX_OUTPUT, XzError } from "./xz.ts";
import {
  type Liblzma,
  liblzma,
  LiblzmaError,
  liblzmaProblem,
  LZMA_MEMLIMIT_ERROR,
} from "./xz_native.ts";

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

/** Which `.xz` decoder unpacked a kernel. */
export type XzDecoderName = "liblzma" | "typescript";

/** Options of {@linkcode extractVmlinux} (and of the cache functions). */
export interface ExtractOptions {
  /**
   * `"auto"` (the default): the system's liblzma where it loads
   * (`liblzma` in `xz_native.ts`), else the TypeScript decoder; both give
   * the same bytes. `"liblzma"` refuses where it is missing;
   * `"typescript"` never loads a native library.
   */
  decoder?: "auto" | XzDecoderName;
  /**
   * The most bytes the kernel may unpack to (default and at most
   * {@linkcode MAX_OUTPUT}): a bzImage that declares more is refused before
   * anything is decoded or allocated. A VMM passes the guest's RAM size,
   * which the kernel could not exceed anyway.
   */
  maxOutput?: number;
}

/** A kernel taken out of its bzImage, and how (see {@linkcode extractVmlinuxDetailed}). */
export interface ExtractedVmlinux {
  /** The ELF kernel, as the bzImage carries it (not compacted). */
  vmlinux: Uint8Array<ArrayBuffer>;
  /** The decoder that unpacked it. */
  decoder: XzDecoderName;
  /** Why liblzma was not used, when `decoder` is `"typescript"`. */
  fallbackReason?: string;
  /** Milliseconds spent decoding. */
  decodeMs: number;
}

/** The xz stream of a bzImage and the size its build appended, checked. */
function xzPayload(image: Uint8Array, maxOutput: number): { stream: Uint8Array; size: number } {
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
  if (size > maxOutput) {
    throw new BootImageError(
      "file-too-large",
      Errno.EFBIG,
      `the kernel unpacks to ${size} bytes, more than the ${maxOutput} allowed`,
    );
  }
  return { stream: payload.subarray(0, payload.length - 4), size };
}

function checkedMaxOutput(options: ExtractOptions): number {
  const max = options.maxOutput ?? MAX_OUTPUT;
  if (!Number.isSafeInteger(max) || max < 0 || max > MAX_OUTPUT) {
    throw new RangeError(`maxOutput ${max} is not an integer 0..${MAX_OUTPUT}`);
  }
  return max;
}

/** liblzma when the options allow and it loads; otherwise why not. */
function chooseDecoder(options: ExtractOptions): { lib?: Liblzma; reason?: string } {
  const wanted = options.decoder ?? "auto";
  if (wanted === "typescript") return { reason: "the TypeScript decoder was asked for" };
  const lib = liblzma();
  if (lib) return { lib };
  if (wanted === "liblzma") {
    throw new BootImageError(
      "unsupported-payload",
      Errno.ENOSYS,
      `liblzma was asked for: ${liblzmaProblem()}`,
    );
  }
  return { reason: liblzmaProblem() };
}

/** A decoder's refusal as the loader's error; anything else passes. */
function payloadError(e: unknown): unknown {
  return e instanceof XzError
    ? new BootImageError("bad-payload", Errno.EBADMSG, `the kernel's payload: ${e.message}`)
    : e;
}

/** Whether liblzma's refusal leaves the TypeScript decoder a chance (a large dictionary). */
function typescriptMayDo(e: unknown, options: ExtractOptions): boolean {
  return (options.decoder ?? "auto") === "auto" && e instanceof LiblzmaError &&
    e.ret === LZMA_MEMLIMIT_ERROR;
}

function decodeTypescript(stream: Uint8Array, size: number): Uint8Array<ArrayBuffer> {
  // The index must declare exactly the size the image states: no larger buffer.
  return decompressXz(stream, { maxOutput: size });
}

/** The decoded kernel is what the image declared and a loadable ELF kernel. */
function checkVmlinux(vmlinux: Uint8Array<ArrayBuffer>, size: number): Uint8Array<ArrayBuffer> {
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

/** Decodes on this thread: liblzma when given, else (or when it refuses a large dictionary) TypeScript. */
function decodeHere(
  stream: Uint8Array,
  size: number,
  options: ExtractOptions,
  lib: Liblzma | undefined,
  reason: string | undefined,
): ExtractedVmlinux {
  const start = performance.now();
  let vmlinux: Uint8Array<ArrayBuffer>;
  try {
    try {
      vmlinux = lib ? lib.decode(stream, { maxOutput: size }) : decodeTypescript(stream, size);
    } catch (e) {
      if (!lib || !typescriptMayDo(e, options)) throw e;
      reason = (e as Error).message;
      lib = undefined;
      vmlinux = decodeTypescript(stream, size);
    }
  } catch (e) {
    throw payloadError(e);
  }
  const decodeMs = performance.now() - start;
  return {
    vmlinux: checkVmlinux(vmlinux, size),
    decoder: lib ? "liblzma" : "typescript",
    ...(lib ? {} : { fallbackReason: reason }),
    decodeMs,
  };
}

/**
 * {@linkcode extractVmlinux}, saying which decoder ran and for how long.
 * Throws what it throws.
 */
export function extractVmlinuxDetailed(
  image: Uint8Array,
  options: ExtractOptions = {},
): ExtractedVmlinux {
  const { stream, size } = xzPayload(image, checkedMaxOutput(options));
  const { lib, reason } = chooseDecoder(options);
  return decodeHere(stream, size, options, lib, reason);
}

/**
 * {@linkcode extractVmlinuxDetailed} with liblzma's work on a thread of
 * Deno's blocking pool: this thread is free meanwhile (to build the VM).
 * The TypeScript fallback runs on this thread. `image` must not change until
 * the promise settles.
 */
export async function extractVmlinuxAsync(
  image: Uint8Array,
  options: ExtractOptions = {},
): Promise<ExtractedVmlinux> {
  const { stream, size } = xzPayload(image, checkedMaxOutput(options));
  const { lib, reason } = chooseDecoder(options);
  if (!lib) return decodeHere(stream, size, options, undefined, reason);
  const start = performance.now();
  let vmlinux: Uint8Array<ArrayBuffer>;
  try {
    vmlinux = await lib.decodeAsync(stream, { maxOutput: size });
  } catch (e) {
    if (!typescriptMayDo(e, options)) throw payloadError(e);
    return decodeHere(stream, size, options, undefined, (e as Error).message);
  }
  return {
    vmlinux: checkVmlinux(vmlinux, size),
    decoder: "liblzma",
    decodeMs: performance.now() - start,
  };
}

/**
 * Decompresses the kernel of an xz-compressed bzImage into its ELF
 * `vmlinux`, with the system's liblzma where it loads and the TypeScript
 * decoder otherwise (see {@linkcode ExtractOptions}). Throws a
 * `BootImageError`: `unsupported-payload` for other compressions,
 * `file-too-large` for a kernel declaring more than `maxOutput` bytes,
 * `bad-payload` for a corrupt stream or a result that is not a loadable ELF
 * kernel.
 */
export function extractVmlinux(
  image: Uint8Array,
  options: ExtractOptions = {},
): Uint8Array<ArrayBuffer> {
  return extractVmlinuxDetailed(image, options).vmlinux;
}

const EHDR_SIZE = 64;
const PHDR_SIZE = 56;

/**
 * One past the last nonzero byte of `data[start, end)`, or `start` when all
 * are zero. Whole 32-bit words are compared where aligned: a distribution
 * kernel ends in about 24 MB of zeros, and a byte loop over them costs
 * seconds in the sandbox's emulator.
 */
function endOfData(data: Uint8Array, start: number, end: number): number {
  let i = end;
  const base = data.byteOffset;
  const firstWord = Math.ceil((base + start) / 4);
  const endWord = Math.floor((base + end) / 4);
  if (endWord > firstWord) {
    // The unaligned tail, byte by byte.
    for (; i > (endWord * 4 - base); i--) if (data[i - 1] !== 0) return i;
    const words = new Uint32Array(data.buffer, firstWord * 4, endWord - firstWord);
    let w = words.length;
    while (w > 0 && words[w - 1] === 0) w--;
    i = firstWord * 4 - base + w * 4;
    if (w > 0) {
      while (data[i - 1] === 0) i--; // inside the last nonzero word
      return i;
    }
  }
  while (i > start && data[i - 1] === 0) i--;
  return i;
}

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
  parseElfKernel(image); // checked the header, the table and the loadable segments
  const bad = (detail: string) => new BootImageError("bad-elf", Errno.ENOEXEC, detail);
  const headers = elfProgramHeaders(image, bad).map(
    (h): ProgramHeader => ({
      raw: image.slice(h.at, h.at + PHDR_SIZE),
      type: h.type,
      offset: h.offset,
      fileSize: h.fileSize,
      keep: 0,
      newOffset: 0,
    }),
  );
  const phnum = headers.length;
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
  for (const h of loads) h.keep = endOfData(image, h.offset, h.offset + h.fileSize) - h.offset;
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

/** Options of {@linkcode cachedVmlinux} and {@linkcode cachedVmlinuxAsync}. */
export interface VmlinuxCacheOptions extends ExtractOptions {
  /** Where to keep extracted kernels (default: `kernels/` in the per-user deno-kvm cache). */
  directory?: string;
  /**
   * Hold a cached kernel in a {@linkcode MappedFile} (needs the native shim):
   * anonymous memory outside the JavaScript heap, filled by read(2), so that
   * nothing done to the file later (a truncation) can fault it with SIGBUS.
   * The view stays valid until the result is closed.
   */
  map?: boolean;
  /**
   * {@linkcode lookupVmlinuxAsync} only: on a hit, leave the kernel in its
   * file. The result's `file` is read straight into guest RAM by the machine
   * (`LinuxMachineOptions.vmlinuxFile`: no mapping, no copy of its own) and
   * checked there against its MD5 and size before it runs; `vmlinux` holds
   * only the file's head (its ELF headers). A damaged entry then fails the
   * machine's creation with `BootImageError` `"damaged-cache-entry"`, and
   * `VmlinuxLookup.extractAgain` replaces it. No mapping of the file exists,
   * so a file that shrinks is a short read, never a SIGBUS. Measured against
   * `map` when that was a file mapping (issue 17): 30 ms faster natively,
   * 1-2 s slower under the sandbox's emulator, where the kernel's copy into
   * guest RAM is slow; the boot CLI uses `map`.
   */
  direct?: boolean;
  /**
   * {@linkcode lookupVmlinuxAsync} only: the status of the file `image` was
   * read from, when its content is known to be that file's
   * (`readImageFileWithInfo` gives it only then). The bzImage's SHA-256,
   * the cache key, is then remembered beside the cache under the file's
   * device, inode, size and times, and a later lookup of the unchanged file
   * takes the key from there instead of hashing it again (see
   * `fileStamp`: a file changed within the last 2 s is always hashed).
   */
  imageInfo?: Deno.FileInfo;
  /**
   * Told as each step ends (the cache lookup, the decoding and by which
   * decoder, the compaction, the cache write), with what it took: what
   * `boot_linux --trace` prints.
   */
  onPhase?: (what: string) => void;
}

/** What {@linkcode cachedVmlinux} returns. */
export interface CachedVmlinux {
  /** The ELF kernel, compacted (see {@linkcode compactElf}). */
  vmlinux: Uint8Array;
  /** `"cache"` when read back, `"extracted"` when decompressed by this call. */
  source: "cache" | "extracted";
  /**
   * The cache file (absent when no cache directory could be used; for a
   * kernel extracted on a miss in an empty cache, set once `save()` has
   * hashed the bzImage for its key).
   */
  path?: string;
  /**
   * Why the cache was not used, when it was not: a directory that is not the
   * current user's or is writable by group or others, or one that could not
   * be created or written.
   */
  cacheProblem?: string;
  /** The decoder that unpacked the kernel (when `source` is `"extracted"`). */
  decoder?: XzDecoderName;
  /** Why liblzma was not used, when the TypeScript decoder was. */
  fallbackReason?: string;
  /** The entry still in its file (a hit with `direct`); closed by `close`. */
  file?: VmlinuxFile;
  /**
   * Releases the mapping of a mapped kernel (its `vmlinux` view is empty
   * after) or the file of a `direct` one; a no-op otherwise.
   */
  close(): void;
  /** Same as `close`, for `using`. */
  [Symbol.dispose](): void;
}

/** What {@linkcode cachedVmlinuxAsync} returns: the kernel now, its cache entry when asked. */
export interface PendingCachedVmlinux extends CachedVmlinux {
  /**
   * Writes the new cache entry (hashed, written and flushed to disk on
   * Deno's blocking threads, then renamed into place) and settles when it is
   * in place; at once when there is nothing to write. The first call starts
   * it, later calls return the same promise. Resolves to why the entry could
   * not be written, or undefined; never rejects. The caller chooses when:
   * after its guest has booted, say, since on a host with few CPUs the work
   * would slow the guest down. `vmlinux` must not change until it settles.
   */
  save(): Promise<string | undefined>;
}

function result(
  vmlinux: Uint8Array,
  source: "cache" | "extracted",
  fields: Partial<Omit<CachedVmlinux, "close" | typeof Symbol.dispose | "vmlinux" | "source">>,
  file?: MappedFile,
  entry?: VmlinuxFile & { close(): void },
): CachedVmlinux {
  const close = () => {
    file?.close();
    entry?.close();
  };
  const defined = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined));
  return {
    vmlinux,
    source,
    ...defined,
    ...(entry ? { file: entry } : {}),
    close,
    [Symbol.dispose]: close,
  };
}

/** How much of an entry is read before the guest RAM exists: its ELF and program headers. */
const ENTRY_HEAD_BYTES = 64 * 1024;

/** Reads exactly `into.length` bytes at `offset` of `file` (a short read is an error). */
function readFully(file: Deno.FsFile, offset: number, into: Uint8Array, path: string): void {
  file.seekSync(offset, Deno.SeekMode.Start);
  for (let done = 0; done < into.length;) {
    const n = file.readSync(into.subarray(done));
    if (n === null || n === 0) {
      throw new BootImageError(
        "damaged-cache-entry",
        Errno.EIO,
        `the cached kernel ${path} ended at ${offset + done} bytes, before ${
          offset + into.length
        } (changed while it was read)`,
      );
    }
    done += n;
  }
}

/**
 * A cache entry as a {@linkcode VmlinuxFile}: its size checked against its
 * check file (`md5 <hex> <size>`) and the RAM bound, its ELF headers parsed
 * now, its segments read by the machine straight into guest RAM and the
 * whole file's MD5 checked there (`check`) before the guest runs. Read with
 * `read(2)`, not mapped: a file that shrinks meanwhile is a short read (an
 * error), not a SIGBUS.
 */
function openEntry(
  path: string,
  stored: string,
  maxBytes: number,
): VmlinuxFile & { close(): void } {
  const expected = /^md5 [0-9a-f]{32} (\d+)\n$/.exec(stored);
  if (!expected) throw new Error(`${checkPath(path)}: not a check line`);
  const file = Deno.openSync(path, { read: true });
  try {
    const size = file.statSync().size;
    if (size !== Number(expected[1])) throw new Error(`${path}: its size differs from its check`);
    if (size > maxBytes) throw new Error(`${path}: ${size} bytes, more than ${maxBytes}`);
    const head = new Uint8Array(Math.min(size, ENTRY_HEAD_BYTES));
    readFully(file, 0, head, path);
    parseElfKernel(head, { fileSize: size });
    const range = (start: number, end: number) => {
      if (end <= head.length) return head.subarray(start, end);
      const bytes = new Uint8Array(end - start);
      readFully(file, start, bytes, path);
      return bytes;
    };
    return {
      head,
      size,
      read: (offset, into) => readFully(file, offset, into, path),
      check(loaded) {
        // The file's bytes in order: each segment where it now lies, what lies between them
        // (the headers, any padding) read from the file.
        const parts: Uint8Array[] = [];
        let at = 0;
        for (const piece of [...loaded].sort((a, b) => a.fileOffset - b.fileOffset)) {
          const end = piece.fileOffset + piece.bytes.length;
          if (end <= at) continue;
          if (piece.fileOffset > at) parts.push(range(at, piece.fileOffset));
          parts.push(piece.bytes.subarray(Math.max(0, at - piece.fileOffset)));
          at = end;
        }
        if (at < size) parts.push(range(at, size));
        if (`md5 ${md5Hex(parts)} ${size}\n` !== stored) {
          throw new BootImageError(
            "damaged-cache-entry",
            Errno.EBADMSG,
            `the cached kernel ${path} is damaged: its MD5 differs from the one written with it`,
          );
        }
      },
      close: () => file.close(),
    };
  } catch (e) {
    file.close();
    throw e;
  }
}

/** Temporary files of entries being written: `.vmlinux-<uuid>.tmp`. */
const TEMP_PREFIX = ".vmlinux-";
const TEMP_SUFFIX = ".tmp";
/**
 * A temporary file older than this was left by a process that died while
 * writing (a writer renames its files within seconds); it is removed.
 */
const STALE_TEMP_MS = 3600_000;

/** The cache directory to use, or why none can be. */
function cacheDirectory(options: VmlinuxCacheOptions): { dir?: string; cacheProblem?: string } {
  const base = userCacheDir();
  const dir = options.directory ?? (base ? `${base}/kernels` : undefined);
  if (!dir) return {};
  let cacheProblem: string | undefined;
  try {
    cacheProblem = ensureCacheDir(dir);
  } catch (e) {
    cacheProblem = `cannot create ${dir}: ${e instanceof Error ? e.message : String(e)}`;
  }
  return cacheProblem ? { cacheProblem } : { dir };
}

/** A cache entry's file: keyed by the bzImage's SHA-256, so no other image can share it. */
const entryPath = (dir: string, imageSha256: string) => `${dir}/vmlinux-${imageSha256}.elf`;

/**
 * The file beside an entry that holds its check: `md5 <32 hex digits> <size>`.
 *
 * Why MD5 and not SHA-256: the check is for damage (a flipped bit, a
 * truncated or partly written file), not for an adversary, who is kept out by
 * the owner and mode checks (one who can write the entry can write its check
 * too, whatever the hash); any 128-bit digest tells damage apart. A later
 * boot checks the entry before the guest runs, and in the sandbox's emulator
 * MD5 takes 0.23 s for a 35 MB kernel where SHA-256 takes 1.1 s (and 5.9 s
 * under load); zlib's CRC-32 (0.16 s) would load `node:zlib`, another 0.4-0.6 s
 * of start-up there, where `node:crypto` is loaded anyway (`bench/RESULTS.md`,
 * issue 17). The key stays the bzImage's SHA-256: that one decides which
 * kernel is booted.
 */
const checkPath = (path: string) => `${path}.md5`;

/**
 * The file beside an entry that says its MD5 was checked, and the entry's
 * status then (`fileStamp`): while the status is the same, a lookup maps the
 * entry without hashing it (seconds in the sandbox's emulator, where the
 * hash and `node:crypto`'s load were the largest part of a later boot).
 */
const stampPath = (path: string) => `${path}.stamp`;

/** The file that remembers the key of the bzImage file with status `info` (see `imageInfo`). */
const imageStampPath = (dir: string, info: Deno.FileInfo) =>
  `${dir}/image-${info.dev}-${info.ino}.stamp`;

/** The key remembered for the bzImage file with status `info`, while that file is unchanged. */
function imageKeyFromStamp(dir: string, info: Deno.FileInfo | undefined): string | undefined {
  const stamp = info && fileStamp(info);
  if (stamp === undefined) return undefined;
  const [line, key] = (readStamp(imageStampPath(dir, info!)) ?? "").split("\n");
  return line === stamp && /^[0-9a-f]{64}$/.test(key) ? key : undefined;
}

/** Remembers `key` for the bzImage file with status `info`, if that file has settled. */
function rememberImageKey(dir: string, info: Deno.FileInfo | undefined, key: string): void {
  const stamp = info && fileStamp(info);
  if (stamp !== undefined) writeStamp(imageStampPath(dir, info!), `${stamp}\n${key}\n`);
}

/** The text of an entry's check file. */
function entryCheck(vmlinux: Uint8Array): string {
  return `md5 ${md5Hex(vmlinux)} ${vmlinux.length}\n`;
}

/** Whether `bytes` are the entry whose check file holds `stored`. */
function entryIntact(bytes: Uint8Array, stored: string): boolean {
  return stored === entryCheck(bytes);
}

/** The cache directory and entry for `image`, and the entry if it is there, ours and intact. */
function lookup(
  image: Uint8Array,
  options: VmlinuxCacheOptions,
): { dir?: string; path?: string; cacheProblem?: string; hit?: CachedVmlinux } {
  const { dir, cacheProblem } = cacheDirectory(options);
  if (!dir) return { cacheProblem };
  const path = entryPath(dir, sha256Hex(image));
  if (!untrustedReason(path, "file") && !untrustedReason(checkPath(path), "file")) {
    let file: MappedFile | undefined;
    try {
      file = options.map
        ? MappedFile.open(path, { maxBytes: checkedMaxOutput(options) })
        : undefined;
      const cached = file?.bytes ?? Deno.readFileSync(path);
      if (entryIntact(cached, Deno.readTextFileSync(checkPath(path)))) {
        parseElfKernel(cached);
        return { dir, path, hit: result(cached, "cache", { path }, file) };
      }
      file?.close();
    } catch {
      // Unreadable or damaged: extract again.
      file?.close();
    }
  }
  return { dir, path };
}

/**
 * {@linkcode lookup} with the bzImage's SHA-256 computed on one of Deno's
 * blocking threads (the entry's MD5 on this one: 90 ms natively).
 */
async function lookupAsync(
  image: Uint8Array,
  options: VmlinuxCacheOptions,
): Promise<
  {
    dir?: string;
    path?: string;
    cacheProblem?: string;
    hit?: CachedVmlinux;
    steps?: string;
    /** The hit was not hashed: its stamp says it is unchanged since it was checked. */
    unchanged?: boolean;
  }
> {
  const { dir, cacheProblem } = cacheDirectory(options);
  if (!dir) return { cacheProblem };
  let at = performance.now();
  const steps: string[] = [];
  const step = (what: string) => {
    const now = performance.now();
    steps.push(`${what} ${Math.round(now - at)} ms`);
    at = now;
  };
  const stampedKey = imageKeyFromStamp(dir, options.imageInfo);
  if (!stampedKey && !holdsEntries(dir)) {
    // Nothing cached at all (a first boot on this host or with a new cache): a miss without
    // hashing the bzImage now; the key is computed when the entry is saved (a VMM saves
    // after its guest has booted, seconds of emulated CPU time earlier for the guest).
    step("empty cache");
    return { dir, steps: steps.join(", ") };
  }
  const key = stampedKey ?? await sha256HexAsync(image);
  step(stampedKey ? "key remembered" : "key");
  if (!stampedKey) rememberImageKey(dir, options.imageInfo, key);
  const path = entryPath(dir, key);
  if (!untrustedReason(path, "file") && !untrustedReason(checkPath(path), "file")) {
    if (options.direct) {
      try {
        const stored = await Deno.readTextFile(checkPath(path));
        const file = openEntry(path, stored, checkedMaxOutput(options));
        step("opened");
        const hit = result(file.head, "cache", { path }, undefined, file);
        return { dir, path, hit, steps: steps.join(", ") };
      } catch {
        // Unreadable, or its header or size already wrong: extract again.
        return { dir, path, steps: steps.join(", ") };
      }
    }
    let file: MappedFile | undefined;
    try {
      file = options.map
        ? MappedFile.open(path, { maxBytes: checkedMaxOutput(options) })
        : undefined;
      const cached = file?.bytes ?? await Deno.readFile(path);
      step(options.map ? "map" : "read");
      // Checked by an earlier lookup and not changed since: its MD5 is not computed again.
      const stamp = file && fileStamp(file.info);
      const unchanged = stamp !== undefined && readStamp(stampPath(path)) === `${stamp}\n`;
      const intact = unchanged || entryIntact(cached, await Deno.readTextFile(checkPath(path)));
      step(unchanged ? "unchanged since checked" : "MD5");
      if (intact) {
        parseElfKernel(cached);
        if (stamp !== undefined && !unchanged) writeStamp(stampPath(path), `${stamp}\n`);
        return {
          dir,
          path,
          hit: result(cached, "cache", { path }, file),
          steps: steps.join(", "),
          unchanged,
        };
      }
      file?.close();
    } catch {
      // Unreadable or damaged: extract again.
      file?.close();
    }
  }
  return { dir, path, steps: steps.join(", ") };
}

/** Whether `dir` holds any kernel entry (`vmlinux-<key>.elf`), whoever wrote it. */
function holdsEntries(dir: string): boolean {
  try {
    for (const entry of Deno.readDirSync(dir)) {
      if (entry.name.startsWith("vmlinux-") && entry.name.endsWith(".elf")) return true;
    }
    return false;
  } catch {
    return true; // unreadable: let the lookup proper find out
  }
}

/** Removes temporary files that a writer which died left behind (see {@linkcode STALE_TEMP_MS}). */
function sweepStaleTemporaries(dir: string): void {
  try {
    const now = Date.now();
    for (const entry of Deno.readDirSync(dir)) {
      if (!entry.isFile || !entry.name.startsWith(TEMP_PREFIX)) continue;
      if (!entry.name.endsWith(TEMP_SUFFIX)) continue;
      const path = `${dir}/${entry.name}`;
      const mtime = Deno.lstatSync(path).mtime?.getTime() ?? now;
      if (now - mtime > STALE_TEMP_MS) Deno.removeSync(path);
    }
  } catch {
    // Best effort: a concurrent writer may have renamed or removed it first.
  }
}

function removeQuietly(paths: string[]): void {
  for (const path of paths) {
    try {
      Deno.removeSync(path);
    } catch {
      // Renamed already, or never written.
    }
  }
}

/**
 * Writes a cache entry so that readers, and other writers of the same entry
 * at the same time, only ever see a whole one: both files are written to
 * exclusively created temporary files and flushed to disk
 * (`writeExclusive`), then renamed into place, the kernel first. Two
 * processes extracting the same bzImage write the same bytes (the decoders
 * agree byte for byte and the compaction is deterministic), so whichever
 * rename lands last, the kernel and its hash match; an entry whose hash does
 * not match is extracted again by the next reader. The directory itself is
 * not flushed: after a crash an entry may be missing, never partial.
 */
function writeEntry(dir: string, path: string, vmlinux: Uint8Array): void {
  sweepStaleTemporaries(dir);
  const temporary: string[] = [];
  try {
    temporary.push(writeExclusive(dir, vmlinux, TEMP_PREFIX, TEMP_SUFFIX));
    const check = new TextEncoder().encode(entryCheck(vmlinux));
    temporary.push(writeExclusive(dir, check, TEMP_PREFIX, TEMP_SUFFIX));
    Deno.renameSync(temporary[0], path);
    Deno.renameSync(temporary[1], checkPath(path));
  } catch (e) {
    removeQuietly(temporary);
    throw e;
  }
  removeQuietly([`${path}.sha256`]); // the check of entries written before the MD5
}

/** {@linkcode writeEntry} with the writing and flushing on Deno's blocking threads. */
async function writeEntryAsync(dir: string, path: string, vmlinux: Uint8Array): Promise<void> {
  sweepStaleTemporaries(dir);
  const check = new TextEncoder().encode(entryCheck(vmlinux));
  const temporary: string[] = [];
  try {
    temporary.push(await writeExclusiveAsync(dir, vmlinux, TEMP_PREFIX, TEMP_SUFFIX));
    temporary.push(await writeExclusiveAsync(dir, check, TEMP_PREFIX, TEMP_SUFFIX));
    await Deno.rename(temporary[0], path);
    await Deno.rename(temporary[1], checkPath(path));
  } catch (e) {
    removeQuietly(temporary);
    throw e;
  }
  removeQuietly([`${path}.sha256`]); // the check of entries written before the MD5
}

const nothingToSave = () => Promise.resolve(undefined);

const ms = (since: number) => `${Math.round(performance.now() - since)} ms`;

function describeExtraction(x: ExtractedVmlinux): string {
  return `decompressed by ${
    x.decoder === "liblzma" ? `liblzma ${liblzma()?.version}` : "TypeScript"
  }` +
    ` in ${Math.round(x.decodeMs)} ms` +
    (x.fallbackReason ? ` (no liblzma: ${x.fallbackReason})` : "");
}

/**
 * {@linkcode extractVmlinux}, compacted ({@linkcode compactElf}) and
 * remembered: the first call for a bzImage decompresses it and writes the
 * result into the cache, with its MD5 and size beside it
 * (`vmlinux-<key>.elf.md5`); later calls read it back. The key is the
 * bzImage's SHA-256.
 *
 * The cache is trusted only when it is the current user's: a directory or
 * entry owned by someone else or writable by group or others is not read (nor
 * written, for a directory; `cacheProblem` says why), and an entry whose
 * content does not match its stored MD5 and size (a flipped byte, a
 * truncated file) is extracted again and replaced (an entry of an older
 * version, checked by a `.sha256` file, is too). Entries are written to exclusively
 * created files under random names, flushed to disk and renamed into place,
 * so processes extracting the same kernel at once each leave a whole entry.
 * A cache that cannot be written is not an error: the kernel is still
 * returned.
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
  const phase = options.onPhase ?? (() => {});
  let start = performance.now();
  const { dir, path, cacheProblem, hit } = lookup(image, options);
  phase(
    `kernel cache ${hit ? "hit, MD5 checked" : "miss"} (${ms(start)} after the lookup began)`,
  );
  if (hit) return hit;
  const extracted = extractVmlinuxDetailed(image, options);
  phase(describeExtraction(extracted));
  start = performance.now();
  // In place: no 60 MB of garbage for the collector to return while a VM runs.
  const vmlinux = compactElf(extracted.vmlinux, { inPlace: true });
  phase(`kernel compacted to ${vmlinux.length} bytes (${ms(start)})`);
  const how = { decoder: extracted.decoder, fallbackReason: extracted.fallbackReason };
  if (!path || !dir) return result(vmlinux, "extracted", { ...how, cacheProblem });
  start = performance.now();
  try {
    writeEntry(dir, path, vmlinux);
  } catch (e) {
    const problem = `cannot write ${path}: ${e instanceof Error ? e.message : String(e)}`;
    return result(vmlinux, "extracted", { ...how, cacheProblem: problem });
  }
  phase(`kernel cache written (${ms(start)})`);
  return result(vmlinux, "extracted", { ...how, path });
}

/**
 * What {@linkcode lookupVmlinuxAsync} found: the cached kernel, or on a miss
 * the way to extract it.
 */
export interface VmlinuxLookup {
  /** The cached kernel (`source: "cache"`, nothing to save), when the cache held it. */
  hit?: PendingCachedVmlinux;
  /**
   * Decompresses and compacts the kernel (liblzma on a blocking thread) and
   * returns it with its `save()`; the cached kernel again on a hit. Each
   * call extracts anew: call it once.
   */
  extract(): Promise<PendingCachedVmlinux>;
  /**
   * Decompresses and compacts the kernel even on a hit: for a `direct` hit
   * found damaged when it was loaded; its `save()` replaces the entry.
   */
  extractAgain(): Promise<PendingCachedVmlinux>;
}

/**
 * The first half of {@linkcode cachedVmlinuxAsync}: looks the kernel up
 * (the bzImage's SHA-256 on a blocking thread, the entry's MD5 here) and
 * leaves the decision to extract on a miss to the caller. A VMM whose guest
 * decompresses faster than this host can (a hardware-assisted KVM) boots
 * the bzImage itself on a miss and extracts for the cache after the run.
 * `image` must not change until the last promise settles.
 */
export async function lookupVmlinuxAsync(
  image: Uint8Array,
  options: VmlinuxCacheOptions = {},
): Promise<VmlinuxLookup> {
  const phase = options.onPhase ?? (() => {});
  const start = performance.now();
  const { dir, path, cacheProblem, hit, steps, unchanged } = await lookupAsync(image, options);
  const found = !hit
    ? "miss"
    : hit.file
    ? "hit, opened (checked once loaded)"
    : unchanged
    ? "hit, unchanged since its MD5 was checked"
    : "hit, MD5 checked";
  phase(
    `kernel cache ${found} (${ms(start)} after the lookup began${steps ? `: ${steps}` : ""})`,
  );
  const extractAgain = () => extractForCache(image, options, dir, path, cacheProblem);
  if (hit) {
    const found = { ...hit, save: nothingToSave };
    return { hit: found, extract: () => Promise.resolve(found), extractAgain };
  }
  return { extract: extractAgain, extractAgain };
}

/** Extracts and compacts the kernel of a cache miss; `save()` writes it to `path`. */
async function extractForCache(
  image: Uint8Array,
  options: VmlinuxCacheOptions,
  dir: string | undefined,
  path: string | undefined,
  cacheProblem: string | undefined,
): Promise<PendingCachedVmlinux> {
  const phase = options.onPhase ?? (() => {});
  const extracted = await extractVmlinuxAsync(image, options);
  phase(describeExtraction(extracted));
  const start = performance.now();
  const vmlinux = compactElf(extracted.vmlinux, { inPlace: true });
  phase(`kernel compacted to ${vmlinux.length} bytes (${ms(start)})`);
  const how = { decoder: extracted.decoder, fallbackReason: extracted.fallbackReason };
  if (!dir) {
    return {
      ...result(vmlinux, "extracted", { ...how, cacheProblem }),
      save: nothingToSave,
    };
  }
  let saving: Promise<string | undefined> | undefined;
  const save = () =>
    saving ??= (async () => {
      const start = performance.now();
      let key = "";
      try {
        if (!path) {
          // A miss decided without the key (an empty cache): the bzImage is hashed now.
          key = await sha256HexAsync(image);
          path = entryPath(dir, key);
          pending.path = path;
        }
        await writeEntryAsync(dir, path, vmlinux);
      } catch (e) {
        return `cannot write ${path ?? dir}: ${e instanceof Error ? e.message : String(e)}`;
      }
      if (key) rememberImageKey(dir, options.imageInfo, key);
      phase(`kernel cache written (${ms(start)}${key ? ", with the bzImage's SHA-256" : ""})`);
      return undefined;
    })();
  const pending: PendingCachedVmlinux = {
    ...result(vmlinux, "extracted", { ...how, path }),
    save,
  };
  return pending;
}

/**
 * {@linkcode cachedVmlinux} for a VMM that has other work to do meanwhile:
 * the lookup's hashes and liblzma's decoding run on Deno's blocking threads
 * (the TypeScript fallback on this thread), and the new cache entry is
 * written when the caller calls `save()` (see
 * {@linkcode PendingCachedVmlinux.save}): call it, and await it, before the
 * process exits. `image` must not change until the returned promise settles.
 */
export async function cachedVmlinuxAsync(
  image: Uint8Array,
  options: VmlinuxCacheOptions = {},
): Promise<PendingCachedVmlinux> {
  // Never `direct` here: the caller gets the kernel's bytes.
  return await (await lookupVmlinuxAsync(image, { ...options, direct: false })).extract();
}
