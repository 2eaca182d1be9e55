/**
 * A dirty-page bitmap for one memory slot and a fast scan of it: the bitmap
 * lives in a `WebAssembly.Memory`, so `Vm.getDirtyLog` writes straight into
 * it, and a small hand-assembled WebAssembly function (SIMD where the runtime
 * has it) lists the set bits' page numbers into a list in the same memory.
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";

const PAGE_SIZE = 4096;
/** The scan reads the bitmap in blocks of four 16-byte vectors. */
const BLOCK = 64;
const WASM_PAGE = 65536;
/** The largest slot: 2^28 pages, whose list is 1 GiB. */
const MAX_SLOT = 2 ** 40;

/** Options of {@linkcode DirtyBitmap}. */
export interface DirtyBitmapOptions {
  /**
   * `false` runs the scan in JavaScript even where WebAssembly SIMD is
   * available (the default uses it where it is).
   */
  simd?: boolean;
}

/** Unsigned LEB128, as WebAssembly encodes sizes, counts and indices. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

/** Signed LEB128, as `i32.const` takes its operand (64 is 0xc0 0x00: a lone 0x40 is -64). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    const done = (n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0);
    out.push(done ? byte : byte | 0x80);
    if (done) return out;
  }
}

/** A section: its id, then its contents' length. */
function section(id: number, contents: number[]): number[] {
  return [id, ...uleb(contents.length), ...contents];
}

/** A name: its UTF-8 length, then its bytes (ASCII here). */
function name(s: string): number[] {
  return [...uleb(s.length), ...Array.from(s, (c) => c.charCodeAt(0))];
}

// Instruction bytes used below (WebAssembly core spec, section 5.4; SIMD
// instructions are 0xfd followed by a LEB128 sub-opcode).
const I32 = 0x7f, I64 = 0x7e, VOID = 0x40;
const BLOCK_ = 0x02, LOOP = 0x03, IF = 0x04, END = 0x0b, BR = 0x0c, BR_IF = 0x0d;
const GET = 0x20, SET = 0x21, TEE = 0x22;
const I64_LOAD = 0x29, I32_STORE = 0x36, I32_CONST = 0x41, I64_CONST = 0x42;
const I32_EQZ = 0x45, I32_GE_U = 0x4f, I64_EQZ = 0x50;
const I32_ADD = 0x6a, I32_SUB = 0x6b, I32_SHL = 0x74, I32_SHR_U = 0x76;
const I64_CTZ = 0x7a, I64_SUB = 0x7d, I64_AND = 0x83, I32_WRAP_I64 = 0xa7;
const SIMD = 0xfd, V128_LOAD = 0x00, V128_OR = 0x50, V128_ANY_TRUE = 0x53;

// The scan's locals: the two parameters, then the declared ones.
const END_ARG = 0, OUT_ARG = 1, P = 2, O = 3, BASE = 4, BITS = 5;

/** `v128.load` of the 16 bytes at `p + offset` (memarg: alignment 2^4, offset). */
function v128At(offset: number): number[] {
  return [GET, P, SIMD, ...uleb(V128_LOAD), 4, ...uleb(offset)];
}

/** Appends page `base + ctz(bits)` to the list, then clears that bit of `bits`. */
// deno-fmt-ignore
const LIST_LOWEST_BIT = [
  // *o = base + ctz(bits)  (i32.store: alignment 2^2, offset 0)
  GET, O, GET, BASE, GET, BITS, I64_CTZ, I32_WRAP_I64, I32_ADD, I32_STORE, 2, 0,
  // o += 4
  GET, O, I32_CONST, 4, I32_ADD, SET, O,
  // bits &= bits - 1
  GET, BITS, GET, BITS, I64_CONST, 1, I64_SUB, I64_AND, SET, BITS,
];

/**
 * The 64-bit word at `p + offset`: each set bit listed. Written out once per
 * word of the block rather than looped over (V8 puts an interrupt check on
 * every loop's back edge), and the first bit outside the loop, as a dirty
 * word often has one bit.
 */
function wordAt(offset: number): number[] {
  // deno-fmt-ignore
  return [
    GET, P, I64_LOAD, 3, ...uleb(offset), TEE, BITS, I64_EQZ, I32_EQZ,
    IF, VOID,
      // base = 8 (p + offset): the page of the word's bit 0
      GET, P, I32_CONST, 3, I32_SHL, I32_CONST, ...sleb(offset * 8), I32_ADD, SET, BASE,
      ...LIST_LOWEST_BIT,
      GET, BITS, I64_EQZ, I32_EQZ,
      IF, VOID,
        LOOP, VOID,
          ...LIST_LOWEST_BIT,
          GET, BITS, I64_EQZ, I32_EQZ, BR_IF, 0,
        END,
      END,
    END,
  ];
}

/**
 * The body of `scan(end, out) -> count` (locals: `p` the block, `o` the list's
 * next entry, `base`, `bits`). The bitmap starts at address 0 and `end` is a
 * multiple of 64; bit `b` of the 64-bit word at byte address `q`
 * (little-endian, as the kernel writes it) is page `8 q + b`. Each 64-byte
 * block is tested first as the OR of its four vectors (`v128.any_true`): a
 * clean block costs four loads and a branch.
 */
function scanBody(): number[] {
  // deno-fmt-ignore
  const code = [
    // o = out
    GET, OUT_ARG, SET, O,
    BLOCK_, VOID,                         // $done
      LOOP, VOID,                         // $blocks: p from 0 to end, by 64
        GET, P, GET, END_ARG, I32_GE_U, BR_IF, 1,
        ...v128At(0), ...v128At(16), SIMD, ...uleb(V128_OR),
        ...v128At(32), SIMD, ...uleb(V128_OR), ...v128At(48), SIMD, ...uleb(V128_OR),
        SIMD, ...uleb(V128_ANY_TRUE),
        IF, VOID,                         // some bit set in the block: its 8 words
          ...[0, 8, 16, 24, 32, 40, 48, 56].flatMap(wordAt),
        END,
        // p += 64
        GET, P, I32_CONST, ...sleb(BLOCK), I32_ADD, SET, P,
        BR, 0,
      END,
    END,
    // the count: (o - out) / 4
    GET, O, GET, OUT_ARG, I32_SUB, I32_CONST, 2, I32_SHR_U,
    END,
  ];
  // Local declarations: 3 x i32 (p, o, base), 1 x i64 (bits).
  const body = [2, 3, I32, 1, I64, ...code];
  return [...uleb(body.length), ...body];
}

/** The module's bytes: the scan function over an imported memory. */
function scanModule(): Uint8Array<ArrayBuffer> {
  return new Uint8Array([
    // Magic "\0asm" and version 1.
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    // Type section (1): one function type, (i32 end, i32 out) -> (i32 count).
    ...section(1, [1, 0x60, 2, I32, I32, 1, I32]),
    // Import section (2): one import, "m"."memory", a memory (kind 2) with at
    // least one page and no maximum (limits flag 0).
    ...section(2, [1, ...name("m"), ...name("memory"), 0x02, 0x00, 1]),
    // Function section (3): one function, of type 0.
    ...section(3, [1, 0]),
    // Export section (7): function 0 (kind 0) as "scan".
    ...section(7, [1, ...name("scan"), 0x00, 0]),
    // Code section (10): one body.
    ...section(10, [1, ...scanBody()]),
  ]);
}

/** Whether this runtime validates WebAssembly SIMD (the module with `v128` loads). */
function hasSimd(): boolean {
  try {
    return typeof WebAssembly === "object" && WebAssembly.validate(scanModule());
  } catch {
    return false;
  }
}

let compiled: WebAssembly.Module | null | undefined;

/** The SIMD module, compiled once per process; null without WebAssembly SIMD. */
function simdModule(): WebAssembly.Module | null {
  if (compiled === undefined) compiled = hasSimd() ? new WebAssembly.Module(scanModule()) : null;
  return compiled;
}

/**
 * The dirty-page bitmap of one memory slot, and a scan that lists its dirty
 * pages without allocating: pass {@linkcode DirtyBitmap.bytes} to
 * `Vm.getDirtyLog`, then {@linkcode DirtyBitmap.scan} writes the page numbers
 * into {@linkcode DirtyBitmap.pages} and returns how many there are.
 *
 * The bitmap and the list share one `WebAssembly.Memory`, and the scan is a
 * small WebAssembly function (built in this file) that skips clean 64-byte
 * blocks with SIMD and finds set bits with `i64.ctz`. Where the runtime lacks
 * WebAssembly SIMD the same scan runs in JavaScript ({@linkcode DirtyBitmap.simd}
 * says which). Call `scan` often (a migration loop does): like any JavaScript
 * or WebAssembly function, it is fastest once the engine has optimised it.
 *
 * The list holds one 4-byte entry per page of the slot (0.1% of the slot's
 * size), so every page can be listed at once.
 *
 * @example
 * ```ts
 * import { DirtyBitmap, Kvm } from "@deno-kvm/kvm";
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * const ram = vm.allocateMemory(0x100000);
 * vm.setUserMemoryRegion({
 *   slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram, logDirtyPages: true,
 * });
 * const dirty = new DirtyBitmap(ram.size);
 * // ... run the guest ...
 * vm.getDirtyLog(0, dirty.bytes);
 * const count = dirty.scan();
 * for (let i = 0; i < count; i++) console.log(`page ${dirty.pages[i]} changed`);
 * ```
 */
export class DirtyBitmap {
  /**
   * The bitmap, as `Vm.getDirtyLog` fills it: bit `n % 8` of byte `n >> 3`
   * is page `n` of the slot. `Vm.bitmapBytes(memorySize)` bytes.
   */
  readonly bytes: Uint8Array;
  /**
   * The dirty page numbers (relative to the slot), ascending: the first
   * `scan()` entries are valid. One entry per bit of the bitmap (the slot's
   * pages rounded up to 64), so bits a caller set past the slot are listed, not lost.
   */
  readonly pages: Uint32Array;
  /** Whether the scan runs as WebAssembly SIMD (else in JavaScript). */
  readonly simd: boolean;
  readonly #end: number;
  readonly #out: number;
  readonly #scan: (end: number, out: number) => number;
  readonly #words: Int32Array;

  /**
   * A bitmap for a slot of `memorySize` bytes: a multiple of 4 KiB (as slots
   * are), at most 1 TiB (the list then takes 1 GiB of the 4 GiB a
   * WebAssembly memory can have).
   */
  constructor(memorySize: number, options: DirtyBitmapOptions = {}) {
    if (
      !Number.isSafeInteger(memorySize) || memorySize <= 0 || memorySize % PAGE_SIZE !== 0 ||
      memorySize > MAX_SLOT
    ) {
      throw new KvmError(
        "DirtyBitmap",
        Errno.EINVAL,
        `memorySize ${memorySize} is not a positive multiple of 4096 up to 1 TiB`,
      );
    }
    const pages = memorySize / PAGE_SIZE;
    const bitmapBytes = Math.ceil(pages / 64) * 8;
    // The scan reads whole 64-byte blocks: the bytes past the bitmap stay zero.
    this.#end = Math.ceil(bitmapBytes / BLOCK) * BLOCK;
    this.#out = this.#end;
    // One entry per bit of the bitmap, the padding bits of its last word too: a
    // caller may set those, and the scan must not list past the end.
    const bits = bitmapBytes * 8;
    const size = this.#out + bits * 4;
    // Never grown, so the views below stay attached.
    const memory = new WebAssembly.Memory({ initial: Math.ceil(size / WASM_PAGE) });
    this.bytes = new Uint8Array(memory.buffer, 0, bitmapBytes);
    this.pages = new Uint32Array(memory.buffer, this.#out, bits);
    this.#words = new Int32Array(memory.buffer, 0, this.#end / 4);
    const module = options.simd === false ? null : simdModule();
    this.simd = module !== null;
    if (module !== null) {
      const instance = new WebAssembly.Instance(module, { m: { memory } });
      this.#scan = instance.exports.scan as (end: number, out: number) => number;
    } else {
      this.#scan = () => scanWords(this.#words, this.pages);
    }
  }

  /**
   * Lists the pages whose bit is set into {@linkcode pages}, ascending, and
   * returns their count. Allocates nothing.
   */
  scan(): number {
    return this.#scan(this.#end, this.#out);
  }
}

/**
 * The JavaScript scan, as the WebAssembly one in groups of four 32-bit words
 * (a clean group costs one test), each word's set bits listed by a function
 * of its own (in one loop here V8's code was 1.5x slower). Int32Array: a word
 * with bit 31 set stays a small integer for V8.
 */
function scanWords(words: Int32Array, out: Uint32Array): number {
  let n = 0;
  for (let w = 0; w < words.length; w += 4) {
    const a = words[w], b = words[w + 1], c = words[w + 2], d = words[w + 3];
    if ((a | b | c | d) === 0) continue;
    if (a !== 0) n = listBits(a, w << 5, out, n);
    if (b !== 0) n = listBits(b, (w + 1) << 5, out, n);
    if (c !== 0) n = listBits(c, (w + 2) << 5, out, n);
    if (d !== 0) n = listBits(d, (w + 3) << 5, out, n);
  }
  return n;
}

/** Lists the set bits of `bits` (bit 0 is page `first`) at `out[n]` on; the new count. */
function listBits(bits: number, first: number, out: Uint32Array, n: number): number {
  while (bits !== 0) {
    const low = bits & -bits;
    out[n++] = first + 31 - Math.clz32(low);
    bits ^= low;
  }
  return n;
}
