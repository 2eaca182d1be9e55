// Fuzz targets added for issue 12 after the first set (targets.ts): the
// Multiboot loader (a guest-supplied image: header, a.out-kludge fields, ELF32
// program headers, modules) and the struct codecs' encoders (any value into
// any field of every kernel struct: stored exactly, or a KvmError naming the
// field; never wrapped, never an untyped exception, never a byte outside the
// field changed).

import * as abi from "../../src/abi/mod.ts";
import { type AnyStructDef, fieldSize, fitsScalar, type Scalar } from "../../src/abi/struct.ts";
import {
  MULTIBOOT_HEADER_MAGIC,
  MultibootError,
  planMultibootBoot,
  writeMultibootBoot,
} from "../../src/boot/multiboot.ts";
import { KvmError } from "../../src/errors.ts";
import { mutate, type Prng } from "./prng.ts";
import { FuzzInvariantError, type FuzzTarget } from "./targets.ts";

function expect(condition: boolean, message: string): void {
  if (!condition) throw new FuzzInvariantError(message);
}

const MiB = 1024 * 1024;

/** A Multiboot header with the a.out-kludge fields at `offset` of a `length`-byte image. */
function aoutKludge(length: number, loadAt: number): Uint8Array<ArrayBuffer> {
  const image = new Uint8Array(length);
  const v = new DataView(image.buffer);
  const flags = (1 << 16) | 0b11; // a.out kludge, page-aligned modules, memory info
  [MULTIBOOT_HEADER_MAGIC, flags, -(MULTIBOOT_HEADER_MAGIC + flags) >>> 0, loadAt, loadAt, 0, 0]
    .forEach((x, i) => v.setUint32(4 * i, x, true));
  v.setUint32(28, loadAt + 32, true); // entry: just past the header
  image.set([0xf4], 32); // hlt
  return image;
}

/** An ELF32 (EM_386) executable: two PT_LOAD segments and a PT_NOTE, header at 0x100. */
function elf32(): Uint8Array<ArrayBuffer> {
  const image = new Uint8Array(0x400);
  const v = new DataView(image.buffer);
  image.set([0x7f, 0x45, 0x4c, 0x46, 1, 1, 1], 0);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 3, true); // EM_386
  v.setUint32(24, 0x100000, true); // e_entry
  v.setUint32(28, 52, true); // e_phoff
  v.setUint16(42, 32, true); // e_phentsize
  v.setUint16(44, 3, true); // e_phnum
  const ph = (
    i: number,
    type: number,
    offset: number,
    paddr: number,
    filesz: number,
    memsz: number,
  ) =>
    [type, offset, paddr, paddr, filesz, memsz].forEach((x, k) =>
      v.setUint32(52 + 32 * i + 4 * k, x, true)
    );
  ph(0, 1, 0x200, 0x100000, 0x100, 0x3000); // text + bss
  ph(1, 1, 0x300, 0x200000, 0x100, 0x100); // data
  ph(2, 4, 0x380, 0, 0x20, 0x20); // PT_NOTE
  const flags = 0b10; // memory info
  [MULTIBOOT_HEADER_MAGIC, flags, -(MULTIBOOT_HEADER_MAGIC + flags) >>> 0].forEach((x, i) =>
    v.setUint32(0x100 + 4 * i, x, true)
  );
  return image;
}

const SAMPLES = [aoutKludge(0x200, 0x100000), aoutKludge(0x1000, 0x8000), elf32()];
// The header's fields (at 0 for the a.out samples, 0x100 for the ELF) and the ELF's program headers.
const HOT = [
  ...Array.from({ length: 8 }, (_, i) => 4 * i),
  ...Array.from({ length: 3 }, (_, i) => 0x100 + 4 * i),
  24,
  28,
  42,
  44,
  ...Array.from({ length: 24 }, (_, i) => 52 + 4 * i),
];
const MEMORY = [0, 4096, 2 * MiB, 2 * MiB + 4096, 4 * MiB, 64 * MiB, 3072 * MiB + 2 * MiB];

/** Every struct codec of the ABI entry. */
const STRUCTS = (Object.values(abi) as unknown[]).filter((x): x is AnyStructDef =>
  typeof x === "function" && "cName" in x && "fields" in x && "size" in x
);

/** A value of any kind a caller might hand a field. */
function anyValue(rng: Prng): unknown {
  return rng.pick<() => unknown>([
    () => rng.interesting32(),
    () => -rng.interesting32(),
    () => rng.interesting32() | 0,
    () => rng.u32() / 7,
    () => rng.interesting64(),
    () => -rng.interesting64(),
    () => Number(rng.interesting64()),
    () => rng.pick([NaN, Infinity, -Infinity, -0, 2 ** 53, 2 ** 64, -(2 ** 63), 0.5]),
    () => rng.pick(["1", null, undefined, true, {}, [1]]),
  ])();
}

/** What a field holding `v` reads back (the value normalized to the field's type). */
function readBack(type: Scalar, v: number | bigint): number | bigint {
  switch (type) {
    case "u64":
      return BigInt(v);
    case "i64":
      return BigInt(v);
    case "u32":
      return Number(v) >>> 0;
    case "i32":
      return Number(v) | 0;
    default:
      return v === 0 ? 0 : v; // -0 reads back as 0
  }
}

/** The fuzz targets of this file. */
export const ABI_BOOT_TARGETS: readonly FuzzTarget[] = [
  {
    name: "multiboot",
    allowed: [MultibootError],
    run(rng) {
      const kernel = rng.chance(0.9)
        ? mutate(rng, rng.pick(SAMPLES), HOT)
        : rng.bytes(rng.below(512));
      const memorySize = rng.chance(0.8)
        ? rng.pick(MEMORY)
        : rng.below(2048) * 4096 + rng.below(2) * rng.below(4096);
      const modules = Array.from({ length: rng.below(3) }, () => ({
        data: new Uint8Array(rng.pick([0, 1, 4096, 5000, MiB])),
        cmdline: rng.chance(0.5) ? "x".repeat(rng.below(5000)) : undefined,
      }));
      const plan = planMultibootBoot(kernel, {
        memorySize,
        cmdline: "x".repeat(rng.chance(0.9) ? rng.below(200) : rng.below(100_000)),
        modules,
      });
      const ram = plan.lowMemorySize;
      expect(plan.lowMemorySize + plan.highMemorySize === memorySize, "RAM split");
      const regions: [string, number, number][] = [
        ...plan.image.segments.map((s, i): [string, number, number] => [
          `segment ${i}`,
          s.address,
          s.address + s.memorySize,
        ]),
        ["info", plan.infoAddress, plan.infoAddress + plan.info.length],
        ...plan.modules.map((m, i): [string, number, number] => [`module ${i}`, m.start, m.end]),
      ];
      for (const [name, start, end] of regions) {
        expect(
          Number.isSafeInteger(start) && start >= 0 && end >= start && end <= ram,
          `${name} ${start}..${end} outside the ${ram} bytes of low RAM`,
        );
      }
      // The loader's own placements (info, modules) overlap nothing else.
      for (let i = plan.image.segments.length; i < regions.length; i++) {
        for (let j = 0; j < regions.length; j++) {
          const [a, as, ae] = regions[i];
          const [b, bs, be] = regions[j];
          if (i !== j && as < ae && bs < be) {
            expect(ae <= bs || be <= as, `${a} overlaps ${b}`);
          }
        }
      }
      expect(
        plan.image.segments.some((s) =>
          plan.entry >= s.address && plan.entry < s.address + s.memorySize
        ),
        `entry ${plan.entry} outside the segments`,
      );
      let written = 0;
      writeMultibootBoot(
        (address, bytes) => {
          expect(address >= 0 && address + bytes.length <= ram, `write at ${address} past RAM`);
          written += bytes.length;
        },
        plan,
        modules,
      );
      expect(written <= ram * 2, "wrote more than twice the RAM");
    },
  },
  {
    name: "struct",
    allowed: [],
    run(rng) {
      const def = rng.pick(STRUCTS) as AnyStructDef & (new () => Record<string, unknown>);
      let codec = new def() as Record<string, unknown> & { bytes: Uint8Array };
      let fields = def.fields;
      // Descend into a nested struct now and then.
      for (let depth = 0; depth < 3; depth++) {
        const nested = Object.entries(fields).filter(([, f]) => typeof f.type !== "string");
        if (nested.length === 0 || rng.chance(0.5)) break;
        const [name, f] = rng.pick(nested);
        codec = codec[name] as typeof codec;
        fields = (f.type as AnyStructDef).fields;
      }
      const scalars = Object.entries(fields).filter(([, f]) => typeof f.type === "string");
      if (scalars.length === 0) return;
      codec.bytes.set(rng.bytes(codec.bytes.length));
      const before = codec.bytes.slice();
      const [name, field] = rng.pick(scalars);
      const type = field.type as Scalar;
      const value = anyValue(rng);
      const fits = fitsScalar(type, value);
      const viaAssign = rng.chance(0.5);
      try {
        if (field.count !== undefined) {
          const list = Array.from(
            { length: rng.below(field.count + 2) },
            () => rng.chance(0.8) ? value : anyValue(rng),
          );
          (codec as unknown as { assign(v: unknown): void }).assign({ [name]: list });
          expect(
            list.length <= field.count && list.every((x) => fitsScalar(type, x)),
            `${def.cName}.${name}: stored a list it cannot hold`,
          );
        } else if (viaAssign) {
          (codec as unknown as { assign(v: unknown): void }).assign({ [name]: value });
          expect(fits || value === undefined, `${def.cName}.${name} took ${String(value)}`);
          if (value !== undefined) {
            const got = codec[name];
            expect(got === readBack(type, value as number | bigint), `${name}: ${got} read back`);
          }
        } else {
          codec[name] = value;
          expect(fits, `${def.cName}.${name} took ${String(value)}`);
          const got = codec[name];
          expect(got === readBack(type, value as number | bigint), `${name}: ${got} read back`);
        }
      } catch (e) {
        if (e instanceof FuzzInvariantError) throw e;
        expect(
          e instanceof KvmError && e.code === "EINVAL" && e.message.includes(`field ${name}`),
          `${def.cName}.${name} = ${String(value)}: ${e}`,
        );
        for (let i = 0; i < before.length; i++) {
          expect(codec.bytes[i] === before[i], `${def.cName}.${name}: a refusal changed byte ${i}`);
        }
        return;
      }
      // Stored: only the field's own bytes may have changed.
      const end = field.offset + fieldSize(field);
      for (let i = 0; i < before.length; i++) {
        if (i < field.offset || i >= end) {
          expect(codec.bytes[i] === before[i], `${def.cName}.${name} changed byte ${i}`);
        }
      }
    },
  },
];
