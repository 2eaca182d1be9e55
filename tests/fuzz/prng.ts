// A small deterministic PRNG for the fuzzers (mulberry32): the same seed
// gives the same inputs on every machine, so a finding is reproduced by its
// seed, target and iteration alone.

/** A seeded pseudo-random source. */
export class Prng {
  #state: number;

  /** Seeds the generator (any 32-bit integer). */
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** The generator for one iteration of one target: independent of the others. */
  static for(seed: number, target: string, iteration: number): Prng {
    let h = (seed ^ 0x9e3779b9) >>> 0;
    for (const c of `${target}:${iteration}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193);
    return new Prng(h);
  }

  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** An integer in `[0, n)`. */
  below(n: number): number {
    return n <= 0x1_0000_0000 ? this.u32() % n : Math.floor((this.u32() / 2 ** 32) * n);
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.u32() < p * 2 ** 32;
  }

  /** One of `items`. */
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)];
  }

  /** An "interesting" 32-bit value: edges, powers of two, or random. */
  interesting32(): number {
    return this.pick([
      () => 0,
      () => 1,
      () => 0xffffffff,
      () => 0x7fffffff,
      () => 0x80000000,
      () => 2 ** this.below(32),
      () => (2 ** this.below(32)) - 1,
      () => this.u32(),
    ])();
  }

  /** An "interesting" 64-bit value. */
  interesting64(): bigint {
    return this.pick([
      () => 0n,
      () => 0xffffffffffffffffn,
      () => 1n << BigInt(this.below(64)),
      () => BigInt(this.interesting32()),
      () => (BigInt(this.u32()) << 32n) | BigInt(this.u32()),
    ])();
  }

  /** `count` random bytes. */
  bytes(count: number): Uint8Array<ArrayBuffer> {
    const out = new Uint8Array(count);
    for (let i = 0; i < count; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}

/**
 * A mutated copy of `input`: a few of bit flips, byte sets, interesting
 * 16/32/64-bit values at random offsets (or at one of `hotOffsets`, the
 * header fields), truncation, random extension.
 */
export function mutate(
  rng: Prng,
  input: Uint8Array,
  hotOffsets: readonly number[] = [],
): Uint8Array<ArrayBuffer> {
  let out: Uint8Array<ArrayBuffer> = input.slice();
  const rounds = 1 + rng.below(4);
  for (let r = 0; r < rounds && out.length > 0; r++) {
    const view = new DataView(out.buffer);
    const at = hotOffsets.length > 0 && rng.chance(0.5)
      ? rng.pick(hotOffsets)
      : rng.below(out.length);
    switch (rng.below(7)) {
      case 0:
        out[at % out.length] ^= 1 << rng.below(8);
        break;
      case 1:
        out[at % out.length] = rng.u32() & 0xff;
        break;
      case 2:
        if (at + 2 <= out.length) view.setUint16(at, rng.interesting32() & 0xffff, true);
        break;
      case 3:
        if (at + 4 <= out.length) view.setUint32(at, rng.interesting32(), true);
        break;
      case 4:
        if (at + 8 <= out.length) view.setBigUint64(at, rng.interesting64(), true);
        break;
      case 5:
        out = out.slice(0, rng.below(out.length + 1));
        break;
      case 6: {
        const longer = new Uint8Array(out.length + 1 + rng.below(64));
        longer.set(out);
        longer.set(rng.bytes(longer.length - out.length), out.length);
        out = longer;
        break;
      }
    }
  }
  return out;
}
