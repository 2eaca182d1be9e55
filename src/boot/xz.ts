/**
 * An `.xz` decompressor (LZMA2 with the x86 BCJ filter, CRC32/CRC64 checks):
 * what Linux kernels built with `CONFIG_KERNEL_XZ` (Debian's among them)
 * compress their payload with. Decompressing on the host lets a VMM skip the
 * kernel's own decompressor, which runs slowly inside the guest.
 *
 * The whole stream is decoded into one buffer sized from the stream's index,
 * which also serves as the LZMA dictionary, so matches need no ring buffer.
 *
 * @module
 */

/** A malformed, truncated, corrupt or unsupported `.xz` stream. */
export class XzError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(`xz: ${message}`);
    this.name = "XzError";
  }
}

const HEADER_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const FOOTER_MAGIC = [0x59, 0x5a];
const FILTER_X86 = 0x04;
const FILTER_LZMA2 = 0x21;
const CHECK_NONE = 0;
const CHECK_CRC32 = 1;
const CHECK_CRC64 = 4;
/** The largest output decoded (one typed array): 2 GiB. */
export const MAX_OUTPUT = 2 ** 31;
const CHECK_SIZES = [0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64];

const CRC32_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (IEEE 802.3, as in `.xz` and gzip). */
export function crc32(data: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC32_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// CRC-64 (ECMA-182 reflected, polynomial 0xC96C5795D7870F42) as two 32-bit halves.
const CRC64_LO = new Uint32Array(256);
const CRC64_HI = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  let lo = i;
  let hi = 0;
  for (let k = 0; k < 8; k++) {
    const lsb = lo & 1;
    lo = ((lo >>> 1) | ((hi & 1) << 31)) >>> 0;
    hi = hi >>> 1;
    if (lsb) {
      lo = (lo ^ 0xd7870f42) >>> 0;
      hi = (hi ^ 0xc96c5795) >>> 0;
    }
  }
  CRC64_LO[i] = lo;
  CRC64_HI[i] = hi;
}

function crc64(data: Uint8Array): [lo: number, hi: number] {
  let lo = 0xffffffff;
  let hi = 0xffffffff;
  for (let i = 0; i < data.length; i++) {
    const t = (lo ^ data[i]) & 0xff;
    lo = (CRC64_LO[t] ^ ((lo >>> 8) | (hi << 24))) >>> 0;
    hi = (CRC64_HI[t] ^ (hi >>> 8)) >>> 0;
  }
  return [~lo >>> 0, ~hi >>> 0];
}

/** A cursor over the input that reads `.xz`'s variable-length integers. */
class Reader {
  pos: number;
  constructor(readonly data: Uint8Array, pos = 0, readonly end = data.length) {
    this.pos = pos;
  }
  byte(): number {
    if (this.pos >= this.end) throw new XzError("unexpected end of input");
    return this.data[this.pos++];
  }
  vli(): number {
    let value = 0;
    for (let i = 0; i < 9; i++) {
      const b = this.byte();
      value += (b & 0x7f) * 2 ** (7 * i);
      if (!(b & 0x80)) {
        if (b === 0 && i > 0) throw new XzError("a variable-length integer is not minimal");
        if (!Number.isSafeInteger(value)) throw new XzError("a size is too large");
        return value;
      }
    }
    throw new XzError("a variable-length integer is longer than 9 bytes");
  }
  u32(at: number): number {
    const d = this.data;
    return (d[at] | (d[at + 1] << 8) | (d[at + 2] << 16) | (d[at + 3] << 24)) >>> 0;
  }
}

function same(data: Uint8Array, at: number, bytes: readonly number[]): boolean {
  return bytes.every((b, i) => data[at + i] === b);
}

interface IndexRecord {
  unpaddedSize: number;
  uncompressedSize: number;
}

/** Reads the stream footer and index at the end of `data[start, end)`. */
function readIndex(data: Uint8Array, start: number, end: number): IndexRecord[] {
  if (end - start < 24) throw new XzError("the stream is too short for a footer");
  const r = new Reader(data, 0, end);
  const footer = end - 12;
  if (!same(data, footer + 10, FOOTER_MAGIC)) throw new XzError("no stream footer magic");
  if (crc32(data.subarray(footer + 4, footer + 10)) !== r.u32(footer)) {
    throw new XzError("the stream footer's CRC32 does not match");
  }
  const indexSize = (r.u32(footer + 4) + 1) * 4;
  const indexStart = footer - indexSize;
  if (indexStart < start + 12) throw new XzError("the index size points outside the stream");
  if (crc32(data.subarray(indexStart, footer - 4)) !== r.u32(footer - 4)) {
    throw new XzError("the index's CRC32 does not match");
  }
  const ir = new Reader(data, indexStart, footer - 4);
  if (ir.byte() !== 0) throw new XzError("no index indicator");
  const count = ir.vli();
  const records: IndexRecord[] = [];
  for (let i = 0; i < count; i++) {
    records.push({ unpaddedSize: ir.vli(), uncompressedSize: ir.vli() });
  }
  return records;
}

/**
 * LZMA2 decoding state that survives chunk boundaries: probabilities,
 * state machine, repeat distances and literal coder properties.
 */
class Lzma2Decoder {
  // Probability model layout (offsets into one Uint16Array).
  static readonly IS_MATCH = 0; // 12 states × 16 pos states
  static readonly IS_REP = 192;
  static readonly IS_REP_G0 = 204;
  static readonly IS_REP_G1 = 216;
  static readonly IS_REP_G2 = 228;
  static readonly IS_REP0_LONG = 240; // 12 × 16
  static readonly POS_SLOT = 432; // 4 × 64
  static readonly SPEC_POS = 688; // 114
  static readonly ALIGN = 802; // 16
  static readonly MATCH_LEN = 818; // 514
  static readonly REP_LEN = 1332; // 514
  static readonly LITERAL = 1846; // 0x300 << (lc + lp), at most 0x300 << 4
  probs = new Uint16Array(Lzma2Decoder.LITERAL + (0x300 << 4));
  state = 0;
  rep0 = 0;
  rep1 = 0;
  rep2 = 0;
  rep3 = 0;
  lc = 0;
  lp = 0;
  pb = 0;
  haveProps = false;

  resetState(): void {
    this.probs.fill(1024);
    this.state = 0;
    this.rep0 =
      this.rep1 =
      this.rep2 =
      this.rep3 =
        0;
  }

  setProps(props: number): void {
    if (props >= 9 * 5 * 5) throw new XzError("invalid LZMA properties");
    this.lc = props % 9;
    props = (props / 9) | 0;
    this.lp = props % 5;
    this.pb = (props / 5) | 0;
    if (this.lc + this.lp > 4) throw new XzError("LZMA2 needs lc + lp <= 4");
    this.haveProps = true;
  }

  /**
   * Decodes one LZMA chunk of `input[inStart, inEnd)` into `out` from
   * `outPos` to `outEnd`; `dictStart` is where the dictionary was last reset.
   */
  decodeChunk(
    input: Uint8Array,
    inStart: number,
    inEnd: number,
    out: Uint8Array,
    outPos: number,
    outEnd: number,
    dictStart: number,
  ): void {
    if (inEnd - inStart < 5 || input[inStart] !== 0) throw new XzError("corrupt LZMA chunk");
    const rc = new RangeDecoder(input, this.probs, inStart + 1);
    let state = this.state;
    let rep0 = this.rep0, rep1 = this.rep1, rep2 = this.rep2, rep3 = this.rep3;
    const lc = this.lc;
    const lpMask = (1 << this.lp) - 1;
    const pbMask = (1 << this.pb) - 1;

    while (outPos < outEnd) {
      if (rc.pos > inEnd) throw new XzError("an LZMA chunk reads past its end");
      const posState = outPos & pbMask;
      if (rc.bit(Lzma2Decoder.IS_MATCH + (state << 4) + posState) === 0) {
        const prev = outPos > dictStart ? out[outPos - 1] : 0;
        const base = Lzma2Decoder.LITERAL +
          0x300 * (((outPos & lpMask) << lc) + (prev >>> (8 - lc)));
        let sym = 1;
        if (state >= 7) {
          if (outPos - rep0 - 1 < dictStart) throw new XzError("a match reaches before the data");
          let match = out[outPos - rep0 - 1];
          do {
            const matchBit = (match >>> 7) & 1;
            match <<= 1;
            const b = rc.bit(base + ((1 + matchBit) << 8) + sym);
            sym = (sym << 1) | b;
            if (matchBit !== b) break;
          } while (sym < 0x100);
        }
        while (sym < 0x100) sym = (sym << 1) | rc.bit(base + sym);
        out[outPos++] = sym & 0xff;
        state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
        continue;
      }
      let len: number;
      if (rc.bit(Lzma2Decoder.IS_REP + state) === 0) {
        rep3 = rep2;
        rep2 = rep1;
        rep1 = rep0;
        len = rc.length(Lzma2Decoder.MATCH_LEN, posState);
        state = state < 7 ? 7 : 10;
        const slot = rc.tree(Lzma2Decoder.POS_SLOT + ((len < 4 ? len : 3) << 6), 6);
        if (slot < 4) {
          rep0 = slot;
        } else {
          const direct = (slot >>> 1) - 1;
          const dist = (2 | (slot & 1)) * 2 ** direct;
          rep0 = slot < 14
            ? dist + rc.reverseTree(Lzma2Decoder.SPEC_POS + dist - slot - 1, direct)
            : dist + rc.direct(direct - 4) * 16 + rc.reverseTree(Lzma2Decoder.ALIGN, 4);
        }
      } else {
        if (rc.bit(Lzma2Decoder.IS_REP_G0 + state) === 0) {
          if (rc.bit(Lzma2Decoder.IS_REP0_LONG + (state << 4) + posState) === 0) {
            // A one-byte repeat of distance rep0.
            if (outPos - rep0 - 1 < dictStart) throw new XzError("a match reaches before the data");
            state = state < 7 ? 9 : 11;
            out[outPos] = out[outPos - rep0 - 1];
            outPos++;
            continue;
          }
        } else {
          let dist: number;
          if (rc.bit(Lzma2Decoder.IS_REP_G1 + state) === 0) {
            dist = rep1;
          } else {
            if (rc.bit(Lzma2Decoder.IS_REP_G2 + state) === 0) {
              dist = rep2;
            } else {
              dist = rep3;
              rep3 = rep2;
            }
            rep2 = rep1;
          }
          rep1 = rep0;
          rep0 = dist;
        }
        len = rc.length(Lzma2Decoder.REP_LEN, posState);
        state = state < 7 ? 8 : 11;
      }
      len += 2;
      const from = outPos - rep0 - 1;
      if (from < dictStart) throw new XzError("a match reaches before the data");
      if (outPos + len > outEnd) throw new XzError("a match runs past its chunk");
      if (rep0 + 1 >= len) {
        out.copyWithin(outPos, from, from + len);
      } else {
        // Overlapping copy (a run): byte by byte, each byte may be one just written.
        for (let i = 0; i < len; i++) out[outPos + i] = out[from + i];
      }
      outPos += len;
    }
    if (rc.pos !== inEnd || rc.code !== 0) {
      throw new XzError("an LZMA chunk does not end where its header says");
    }
    this.state = state;
    this.rep0 = rep0;
    this.rep1 = rep1;
    this.rep2 = rep2;
    this.rep3 = rep3;
  }
}

/** The LZMA range decoder: adaptive binary decisions and direct bits over one chunk. */
class RangeDecoder {
  range = 0xffffffff;
  code: number;
  pos: number;

  constructor(readonly input: Uint8Array, readonly probs: Uint16Array, pos: number) {
    this.code = ((input[pos] << 24) | (input[pos + 1] << 16) | (input[pos + 2] << 8) |
      input[pos + 3]) >>> 0;
    this.pos = pos + 4;
  }

  /** One binary decision with the adaptive probability `probs[i]`. */
  bit(i: number): number {
    const probs = this.probs;
    const p = probs[i];
    const bound = (this.range >>> 11) * p;
    let b: number;
    if (this.code < bound) {
      this.range = bound;
      probs[i] = p + ((2048 - p) >>> 5);
      b = 0;
    } else {
      this.range -= bound;
      this.code -= bound;
      probs[i] = p - (p >>> 5);
      b = 1;
    }
    if (this.range < 0x1000000) {
      this.range = (this.range * 256) >>> 0;
      this.code = ((this.code * 256) + this.input[this.pos++]) >>> 0;
    }
    return b;
  }

  /** `bits` bits with fixed probability one half, most significant first. */
  direct(bits: number): number {
    let value = 0;
    for (let i = 0; i < bits; i++) {
      this.range >>>= 1;
      let b = 0;
      if (this.code >= this.range) {
        this.code -= this.range;
        b = 1;
      }
      value = value * 2 + b;
      if (this.range < 0x1000000) {
        this.range = (this.range * 256) >>> 0;
        this.code = ((this.code * 256) + this.input[this.pos++]) >>> 0;
      }
    }
    return value;
  }

  tree(base: number, bits: number): number {
    let m = 1;
    for (let i = 0; i < bits; i++) m = (m << 1) | this.bit(base + m);
    return m - (1 << bits);
  }

  reverseTree(base: number, bits: number): number {
    let m = 1;
    let sym = 0;
    for (let i = 0; i < bits; i++) {
      const b = this.bit(base + m);
      m = (m << 1) | b;
      sym |= b << i;
    }
    return sym;
  }

  /** A match length minus 2, from the length coder at `base`. */
  length(base: number, posState: number): number {
    if (this.bit(base) === 0) return this.tree(base + 2 + (posState << 3), 3);
    if (this.bit(base + 1) === 0) return 8 + this.tree(base + 2 + 128 + (posState << 3), 3);
    return 16 + this.tree(base + 2 + 256, 8);
  }
}

/** Decodes LZMA2 data from `input[pos...]` into `out[outStart, outEnd)`; returns the input end. */
function decodeLzma2(
  input: Uint8Array,
  pos: number,
  inEnd: number,
  out: Uint8Array,
  outStart: number,
  outEnd: number,
): { inPos: number; outPos: number } {
  const lzma = new Lzma2Decoder();
  let outPos = outStart;
  let dictStart = outStart;
  let needDictReset = true;
  let needProps = true;
  const r = new Reader(input, pos, inEnd);
  for (;;) {
    const control = r.byte();
    if (control === 0) break;
    if (control === 1 || control === 2) {
      if (control === 1) {
        dictStart = outPos;
        needDictReset = false;
        needProps = true; // the next LZMA chunk must bring its properties again
      } else if (needDictReset) throw new XzError("LZMA2 data does not start with a reset");
      const size = ((r.byte() << 8) | r.byte()) + 1;
      if (r.pos + size > inEnd) throw new XzError("unexpected end of input");
      if (outPos + size > outEnd) throw new XzError("more data than the index declares");
      out.set(input.subarray(r.pos, r.pos + size), outPos);
      r.pos += size;
      outPos += size;
      continue;
    }
    if (control < 0x80) throw new XzError(`invalid LZMA2 control byte ${control}`);
    const reset = (control >>> 5) & 3;
    const unpacked = ((control & 0x1f) << 16) + ((r.byte() << 8) | r.byte()) + 1;
    const packed = ((r.byte() << 8) | r.byte()) + 1;
    if (reset === 3) {
      dictStart = outPos;
      needDictReset = false;
    } else if (needDictReset) throw new XzError("LZMA2 data does not start with a reset");
    if (reset >= 2) {
      lzma.setProps(r.byte());
      needProps = false;
    } else if (needProps) throw new XzError("an LZMA2 chunk lacks properties");
    if (reset >= 1) lzma.resetState();
    if (r.pos + packed > inEnd) throw new XzError("unexpected end of input");
    if (outPos + unpacked > outEnd) throw new XzError("more data than the index declares");
    lzma.decodeChunk(input, r.pos, r.pos + packed, out, outPos, outPos + unpacked, dictStart);
    r.pos += packed;
    outPos += unpacked;
  }
  return { inPos: r.pos, outPos };
}

/** Undoes the x86 BCJ filter in place (relative CALL/JMP targets back to relative). */
function unfilterX86(buf: Uint8Array, startOffset: number): void {
  const allowed = [true, true, true, false, true, false, false, false];
  const bitNumber = [0, 1, 2, 2, 3, 3, 3, 3];
  const isMsByte = (b: number) => b === 0 || b === 0xff;
  let prevMask = 0;
  let prevPos = -5;
  const limit = buf.length - 5;
  let i = 0;
  while (i <= limit) {
    const op = buf[i];
    if (op !== 0xe8 && op !== 0xe9) {
      i++;
      continue;
    }
    const offset = i - prevPos;
    prevPos = i;
    if (offset > 5) {
      prevMask = 0;
    } else {
      for (let k = 0; k < offset; k++) prevMask = ((prevMask & 0x77) << 1) & 0xff;
    }
    let b = buf[i + 4];
    if (isMsByte(b) && allowed[(prevMask >>> 1) & 7] && (prevMask >>> 1) < 0x10) {
      let src = ((b << 24) | (buf[i + 3] << 16) | (buf[i + 2] << 8) | buf[i + 1]) >>> 0;
      let dest: number;
      for (;;) {
        dest = (src - (startOffset + i + 5)) >>> 0;
        if (prevMask === 0) break;
        const n = bitNumber[prevMask >>> 1];
        b = (dest >>> (24 - n * 8)) & 0xff;
        if (!isMsByte(b)) break;
        src = (dest ^ (2 ** (32 - n * 8) - 1)) >>> 0;
      }
      buf[i + 4] = ((dest >>> 24) & 1) ? 0xff : 0;
      buf[i + 3] = (dest >>> 16) & 0xff;
      buf[i + 2] = (dest >>> 8) & 0xff;
      buf[i + 1] = dest & 0xff;
      i += 5;
      prevMask = 0;
    } else {
      i++;
      prevMask |= 1;
      if (isMsByte(b)) prevMask |= 0x10;
    }
  }
}

/** Options of {@linkcode decompressXz}. */
export interface DecompressXzOptions {
  /**
   * The most bytes the stream may decompress to (default and at most
   * {@linkcode MAX_OUTPUT}): a stream whose index declares more is refused
   * before anything is allocated. The output buffer is sized from the index
   * (its pages are touched only as data decodes).
   */
  maxOutput?: number;
}

/** What the header, footer and index of one `.xz` stream declare (see {@linkcode xzStreamInfo}). */
export interface XzStreamInfo {
  /** The check type (0 none, 1 CRC32, 4 CRC64, 10 SHA-256). */
  check: number;
  /** Where the stream ends: the input's length less any trailing stream padding. */
  streamEnd: number;
  /** The number of blocks the index lists. */
  blocks: number;
  /** The bytes the whole stream decompresses to, by its index. */
  uncompressedSize: number;
}

function checkMaxOutput(maxOutput: number | undefined, who: string): number {
  const max = maxOutput ?? MAX_OUTPUT;
  if (!Number.isSafeInteger(max) || max < 0 || max > MAX_OUTPUT) {
    throw new RangeError(`${who}: maxOutput ${max} is not an integer 0..${MAX_OUTPUT}`);
  }
  return max;
}

/**
 * Checks the stream header, footer and index (magic, flags, their CRC32s)
 * and returns the index's records, the stream's end and the declared size,
 * refused past `maxOutput` before any output exists.
 */
function readStream(
  data: Uint8Array,
  maxOutput: number,
): { check: number; end: number; records: IndexRecord[]; total: number } {
  if (data.length < 12 || !same(data, 0, HEADER_MAGIC)) {
    throw new XzError("no stream header magic");
  }
  if (data[6] !== 0 || (data[7] & 0xf0) !== 0) throw new XzError("unsupported stream flags");
  const r = new Reader(data);
  if (crc32(data.subarray(6, 8)) !== r.u32(8)) {
    throw new XzError("the stream header's CRC32 does not match");
  }
  let end = data.length;
  while (
    end >= 4 && data[end - 1] === 0 && data[end - 2] === 0 && data[end - 3] === 0 &&
    data[end - 4] === 0
  ) end -= 4;
  const records = readIndex(data, 0, end);
  if (data[end - 4] !== data[6] || data[end - 3] !== data[7]) {
    throw new XzError("the stream header and footer disagree");
  }
  const total = records.reduce((n, rec) => n + rec.uncompressedSize, 0);
  if (total > maxOutput) {
    throw new XzError(`the index declares ${total} bytes, more than the ${maxOutput} allowed`);
  }
  return { check: data[7] & 0x0f, end, records, total };
}

/**
 * Reads what one `.xz` stream (optionally followed by stream padding)
 * declares, without decoding it: the header, footer and index are checked
 * (magic, flags, CRC32s), so a size taken from here is the stream's own
 * claim, which decoders then hold it to. Throws an {@linkcode XzError}, also
 * when the index declares more than `maxOutput` bytes (default
 * {@linkcode MAX_OUTPUT}).
 */
export function xzStreamInfo(data: Uint8Array, options: DecompressXzOptions = {}): XzStreamInfo {
  const { check, end, records, total } = readStream(
    data,
    checkMaxOutput(options.maxOutput, "xzStreamInfo"),
  );
  return { check, streamEnd: end, blocks: records.length, uncompressedSize: total };
}

/**
 * Decompresses one `.xz` stream (optionally followed by zero stream padding)
 * with LZMA2 and x86 BCJ filters and a CRC32, CRC64 or no check. Throws an
 * {@linkcode XzError} for anything else or any corruption.
 *
 * @example
 * ```ts
 * import { decompressXz } from "@deno-kvm/kvm/vmm";
 * // Anything but an .xz stream is refused with a message that says why.
 * try {
 *   decompressXz(new Uint8Array([1, 2, 3]));
 * } catch (e) {
 *   console.log((e as Error).message); // xz: no stream header magic
 * }
 * ```
 */
export function decompressXz(
  data: Uint8Array,
  options: DecompressXzOptions = {},
): Uint8Array<ArrayBuffer> {
  const maxOutput = checkMaxOutput(options.maxOutput, "decompressXz");
  const { check, end, records, total } = readStream(data, maxOutput);
  if (check !== CHECK_NONE && check !== CHECK_CRC32 && check !== CHECK_CRC64) {
    throw new XzError(`check type ${check} is not supported (only none, CRC32, CRC64)`);
  }
  const r = new Reader(data);
  const out = new Uint8Array(total);
  r.pos = 12;
  let outPos = 0;
  for (const rec of records) {
    const blockStart = r.pos;
    const headerSize = (r.byte() + 1) * 4;
    if (headerSize === 4) throw new XzError("fewer blocks than the index lists");
    if (blockStart + headerSize > end) throw new XzError("unexpected end of input");
    if (
      crc32(data.subarray(blockStart, blockStart + headerSize - 4)) !==
        r.u32(blockStart + headerSize - 4)
    ) throw new XzError("a block header's CRC32 does not match");
    const flags = r.byte();
    if (flags & 0x3c) throw new XzError("unsupported block flags");
    const filterCount = (flags & 3) + 1;
    if (flags & 0x40) r.vli(); // compressed size: the index says it too
    if (flags & 0x80) {
      if (r.vli() !== rec.uncompressedSize) throw new XzError("block and index sizes disagree");
    }
    const filters: { id: number; props: Uint8Array }[] = [];
    for (let i = 0; i < filterCount; i++) {
      const id = r.vli();
      const size = r.vli();
      filters.push({ id, props: data.subarray(r.pos, r.pos + size) });
      r.pos += size;
    }
    if (r.pos > blockStart + headerSize - 4) throw new XzError("a block header is malformed");
    r.pos = blockStart + headerSize;
    const last = filters[filters.length - 1];
    if (last.id !== FILTER_LZMA2 || last.props.length !== 1 || last.props[0] > 40) {
      throw new XzError("the last filter must be LZMA2");
    }
    const bcj = filters.slice(0, -1);
    if (bcj.some((f) => f.id !== FILTER_X86 || (f.props.length !== 0 && f.props.length !== 4))) {
      throw new XzError(
        `unsupported filter chain ${filters.map((f) => `0x${f.id.toString(16)}`).join(", ")}`,
      );
    }
    const outStart = outPos;
    const done = decodeLzma2(data, r.pos, end, out, outPos, outPos + rec.uncompressedSize);
    if (done.outPos !== outStart + rec.uncompressedSize) {
      throw new XzError("a block is shorter than the index says");
    }
    outPos = done.outPos;
    const unpadded = done.inPos - blockStart + CHECK_SIZES[check];
    if (unpadded !== rec.unpaddedSize) throw new XzError("block and index sizes disagree");
    r.pos = done.inPos;
    while (r.pos % 4 !== 0) {
      if (r.byte() !== 0) throw new XzError("nonzero block padding");
    }
    const block = out.subarray(outStart, outPos);
    for (const f of bcj.reverse()) {
      unfilterX86(block, f.props.length === 4 ? r.u32(f.props.byteOffset - data.byteOffset) : 0);
    }
    if (check === CHECK_CRC32) {
      if (crc32(block) !== r.u32(r.pos)) throw new XzError("CRC32 mismatch: the data is corrupt");
    } else if (check === CHECK_CRC64) {
      const [lo, hi] = crc64(block);
      if (lo !== r.u32(r.pos) || hi !== r.u32(r.pos + 4)) {
        throw new XzError("CRC64 mismatch: the data is corrupt");
      }
    }
    r.pos += CHECK_SIZES[check];
  }
  if (data[r.pos] !== 0) throw new XzError("more blocks than the index lists");
  return out;
}
