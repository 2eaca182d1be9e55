/**
 * The system's own `.xz` decoder: liblzma (xz-utils' library, present on
 * every Debian-like host because dpkg links it), bound with `Deno.dlopen`.
 * It decodes a distribution kernel's payload about 3x faster than the
 * TypeScript decoder natively (0.9 s against 2.8 s for Debian's 6.1 kernel)
 * and, being a plain C call, can run on a thread of Deno's blocking pool
 * ({@linkcode Liblzma.decodeAsync}) while the VMM builds the machine.
 *
 * Where liblzma is missing, or FFI is not permitted, {@linkcode liblzma}
 * returns undefined (and {@linkcode liblzmaProblem} says why): callers fall
 * back to the TypeScript decoder (`decompressXz`), which produces the same
 * bytes. `DENO_KVM_LIBLZMA` names the library file to load instead, or, set to
 * `none`, forces the fallback.
 *
 * The library is opened for each decode and closed after it (see `open`):
 * nothing of it stays loaded between calls, so there is nothing to close.
 *
 * The output is sized from the stream's own index (checked first with
 * {@linkcode xzStreamInfo}, refused past `maxOutput` before anything is
 * allocated) and liblzma is held to it: it may write no byte past that
 * buffer, and must fill it exactly.
 *
 * @module
 */

import { type DecompressXzOptions, XzError, xzStreamInfo } from "./xz.ts";

/** The liblzma functions used, as `Deno.dlopen` declares them. */
const SYMBOLS = {
  /**
   * `lzma_ret lzma_stream_buffer_decode(uint64_t *memlimit, uint32_t flags,
   * const lzma_allocator *allocator, const uint8_t *in, size_t *in_pos,
   * size_t in_size, uint8_t *out, size_t *out_pos, size_t out_size)`:
   * one whole `.xz` stream in one call (liblzma 5.0 and later).
   */
  lzma_stream_buffer_decode: {
    parameters: [
      "buffer", // uint64_t *memlimit: in, and out on LZMA_MEMLIMIT_ERROR
      "u32", // uint32_t flags: LZMA_TELL_* and friends
      "pointer", // const lzma_allocator *allocator: NULL, malloc and free
      "buffer", // const uint8_t *in
      "buffer", // size_t *in_pos: in and out
      "usize", // size_t in_size
      "buffer", // uint8_t *out
      "buffer", // size_t *out_pos: in and out
      "usize", // size_t out_size: nothing is written at or past out[out_size]
    ],
    result: "i32", // lzma_ret
  },
  /** The same function, called on a thread of Deno's blocking pool (returns a promise). */
  lzma_stream_buffer_decode_async: {
    name: "lzma_stream_buffer_decode",
    parameters: [
      "buffer",
      "u32",
      "pointer",
      "buffer",
      "buffer",
      "usize",
      "buffer",
      "buffer",
      "usize",
    ],
    result: "i32",
    nonblocking: true,
  },
  /** `const char *lzma_version_string(void)`: e.g. "5.4.1". */
  lzma_version_string: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** Where liblzma is looked for, in order: the loader's search path first. */
export const LIBLZMA_PATHS: readonly string[] = [
  "liblzma.so.5",
  "/usr/lib/x86_64-linux-gnu/liblzma.so.5",
  "/lib/x86_64-linux-gnu/liblzma.so.5",
  "/usr/lib64/liblzma.so.5",
  "/lib64/liblzma.so.5",
  "/usr/lib/liblzma.so.5",
];

/** The variable that names the library to load, or `none` to use none. */
export const LIBLZMA_ENV = "DENO_KVM_LIBLZMA";

// lzma_ret values (lzma/base.h).
const LZMA_OK = 0;
/** `LZMA_MEMLIMIT_ERROR`: the stream needs more decoder memory than allowed. */
export const LZMA_MEMLIMIT_ERROR = 6;
const LZMA_RET_NAMES: Record<number, string> = {
  1: "LZMA_STREAM_END",
  2: "LZMA_NO_CHECK",
  3: "LZMA_UNSUPPORTED_CHECK: the stream's check type cannot be verified",
  4: "LZMA_GET_CHECK",
  5: "LZMA_MEM_ERROR: out of memory",
  6: "LZMA_MEMLIMIT_ERROR: the stream needs more decoder memory than allowed",
  7: "LZMA_FORMAT_ERROR: not an .xz stream",
  8: "LZMA_OPTIONS_ERROR: unsupported options or filter chain",
  9: "LZMA_DATA_ERROR: the data is corrupt",
  10: "LZMA_BUF_ERROR: the stream is truncated, or decodes to more than its index declares",
  11: "LZMA_PROG_ERROR",
};
/** Flag `LZMA_TELL_UNSUPPORTED_CHECK`: refuse a check this liblzma cannot verify. */
const LZMA_TELL_UNSUPPORTED_CHECK = 0x02;

/**
 * The decoder memory allowed (the LZMA2 dictionary, mostly). Kernels are
 * compressed with a 32 MiB dictionary (the kernel's `scripts/xz_wrap.sh`),
 * 33 MiB of decoder memory; a stream that wants more than this is refused
 * with {@linkcode LZMA_MEMLIMIT_ERROR} (the TypeScript decoder, whose
 * dictionary is the output itself, still takes it).
 */
export const LIBLZMA_MEMLIMIT = 256 * 2 ** 20;

/** A failure reported by liblzma; `ret` is its `lzma_ret` code. */
export class LiblzmaError extends XzError {
  /** The `lzma_ret` liblzma returned. */
  readonly ret: number;
  /** Creates the error. */
  constructor(ret: number, message?: string) {
    super(message ?? `liblzma: ${LZMA_RET_NAMES[ret] ?? `lzma_ret ${ret}`}`);
    this.name = "LiblzmaError";
    this.ret = ret;
  }
}

/** liblzma, found (each decode opens and closes it): decodes `.xz` streams (see the module's documentation). */
export interface Liblzma {
  /** The file that was loaded (a name the dynamic loader resolved, or a path). */
  readonly path: string;
  /** liblzma's version, e.g. `"5.4.1"`. */
  readonly version: string;
  /**
   * Decodes one `.xz` stream (plus any stream padding) on this thread.
   * Throws an {@linkcode XzError} (a {@linkcode LiblzmaError} for what
   * liblzma refuses) for a malformed or corrupt stream, one that decodes to
   * other than its index declares, or one declaring more than `maxOutput`.
   */
  decode(data: Uint8Array, options?: DecompressXzOptions): Uint8Array<ArrayBuffer>;
  /**
   * {@linkcode decode} on a thread of Deno's blocking pool: this thread goes
   * on (building a VM, say) meanwhile. `data` must not change until the
   * promise settles.
   */
  decodeAsync(data: Uint8Array, options?: DecompressXzOptions): Promise<Uint8Array<ArrayBuffer>>;
}

let loaded: Liblzma | undefined;
let problem: string | undefined;
let tried = false;

function envChoice(): string | undefined {
  try {
    return Deno.env.get(LIBLZMA_ENV) || undefined;
  } catch {
    return undefined; // no --allow-env: the default search
  }
}

/** Everything a call needs, allocated per call (calls may overlap). */
function prepare(data: Uint8Array, options: DecompressXzOptions) {
  // The stream's own index sizes the output; a claim past maxOutput is refused here.
  const info = xzStreamInfo(data, options);
  return {
    info,
    input: data.subarray(0, info.streamEnd),
    output: new Uint8Array(info.uncompressedSize),
    memlimit: new BigUint64Array([BigInt(LIBLZMA_MEMLIMIT)]),
    inPos: new BigUint64Array(1),
    outPos: new BigUint64Array(1),
  };
}

/** Holds a finished call to what the stream declared. */
function finish(ret: number, call: ReturnType<typeof prepare>): Uint8Array<ArrayBuffer> {
  if (ret !== LZMA_OK) throw new LiblzmaError(ret);
  if (Number(call.inPos[0]) !== call.input.length) {
    throw new XzError("data follows the stream that is not stream padding");
  }
  if (Number(call.outPos[0]) !== call.output.length) {
    throw new XzError(
      `the stream decoded to ${call.outPos[0]} bytes; its index declares ${call.output.length}`,
    );
  }
  return call.output;
}

/** The arguments of one `lzma_stream_buffer_decode` call, in its order. */
function args(call: ReturnType<typeof prepare>) {
  return [
    call.memlimit,
    LZMA_TELL_UNSUPPORTED_CHECK,
    null,
    call.input,
    call.inPos,
    BigInt(call.input.length),
    call.output,
    call.outPos,
    BigInt(call.output.length),
  ] as const;
}

/**
 * Binds liblzma at `path` for the span of one decode. The library is opened
 * per call and closed after it, so that nothing stays loaded that no one owns
 * (Deno's resource sanitizer counts a library left open as a leak of whatever
 * test first decoded): `dlopen` of a library the process already mapped costs
 * microseconds, a kernel's decode about a second. Calls may overlap; each
 * holds its own reference, and the loader keeps the code mapped until the
 * last is closed.
 */
function open(path: string): Liblzma {
  // Loaded once here to check that it loads and to read its version, then closed again.
  const probe = Deno.dlopen(path, SYMBOLS);
  let version: string;
  try {
    const versionPointer = probe.symbols.lzma_version_string();
    version = versionPointer ? Deno.UnsafePointerView.getCString(versionPointer) : "unknown";
  } finally {
    probe.close();
  }
  return {
    path,
    version,
    decode(data, options = {}) {
      const call = prepare(data, options);
      const library = Deno.dlopen(path, SYMBOLS);
      let ret: number;
      try {
        ret = library.symbols.lzma_stream_buffer_decode(...args(call));
      } finally {
        library.close();
      }
      return finish(ret, call);
    },
    async decodeAsync(data, options = {}) {
      const call = prepare(data, options);
      const library = Deno.dlopen(path, SYMBOLS);
      let ret: number;
      try {
        // `call` keeps every buffer reachable until the other thread is done with it,
        // and the library stays open until then.
        ret = await library.symbols.lzma_stream_buffer_decode_async(...args(call));
      } finally {
        library.close();
      }
      return finish(ret, call);
    },
  };
}

/**
 * liblzma, found on first use from `DENO_KVM_LIBLZMA` or
 * {@linkcode LIBLZMA_PATHS} (loaded to check it, then closed; each decode
 * opens and closes it again); undefined where it cannot be loaded (missing,
 * FFI not permitted, `DENO_KVM_LIBLZMA=none`), with the reason in
 * {@linkcode liblzmaProblem}. The answer is remembered for the process.
 */
export function liblzma(): Liblzma | undefined {
  if (tried) return loaded;
  tried = true;
  const choice = envChoice();
  if (choice === "none") {
    problem = `${LIBLZMA_ENV}=none`;
    return undefined;
  }
  const paths: string[] = [];
  let first: string | undefined;
  for (const path of choice ? [choice] : LIBLZMA_PATHS) {
    try {
      loaded = open(path);
      return loaded;
    } catch (e) {
      paths.push(path);
      first ??= e instanceof Error ? e.message : String(e);
      // Without FFI permission no other path will do better.
      if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) break;
    }
  }
  problem = `cannot load liblzma (tried ${paths.join(", ")}; ${first})`;
  return undefined;
}

/** Why {@linkcode liblzma} returned undefined (undefined before it was called or when it loaded). */
export function liblzmaProblem(): string | undefined {
  return problem;
}
