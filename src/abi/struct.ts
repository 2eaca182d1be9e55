/**
 * One declarative codec per kernel struct.
 *
 * A layout names each field's offset and type once; {@linkcode defineStruct}
 * turns it into a class whose instances read and write the fields through a
 * `DataView` over their own bytes (or over native memory such as the vCPU run
 * area), with no copy. The same layout feeds the ABI probe test, which compiles
 * a C program against `<linux/kvm.h>` and checks every size and offset, so a
 * struct added here is verified without touching the test.
 *
 * Setting a scalar field checks the value against the field's type (an
 * integer in its range; bigints for the 64-bit types too) and refuses
 * anything else with one error, a `KvmError` `EINVAL` naming the struct and
 * the field, instead of the `DataView`'s silent wrap-around or a
 * `RangeError` from `BigInt()`. `assign()` checks array fields the same way
 * (the typed arrays themselves, written element by element, wrap as typed
 * arrays do).
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";

/** Scalar field types, little-endian as on x86-64. */
export type Scalar = "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64";

const SCALAR_SIZE: Record<Scalar, number> = {
  u8: 1,
  u16: 2,
  u32: 4,
  u64: 8,
  i8: 1,
  i16: 2,
  i32: 4,
  i64: 8,
};

/** A field: its byte offset, its type and, for arrays, its element count. */
export interface FieldDef {
  /** Byte offset from the start of the struct. */
  readonly offset: number;
  /** A scalar type, or the layout of a nested struct. */
  readonly type: Scalar | AnyStructDef;
  /** Element count for a fixed-size array member. */
  readonly count?: number;
  /** The C member designator when it is not the snake_case of the field's name. */
  readonly c?: string;
}

/** Field definitions by TypeScript name. */
export type Fields = Readonly<Record<string, FieldDef>>;

/** What any struct layout offers, without its field types. */
export interface AnyStructDef {
  /** The C type, e.g. `struct kvm_regs`. */
  readonly cName: string;
  /** `sizeof` in bytes. */
  readonly size: number;
  /** The fields by TypeScript name. */
  readonly fields: Fields;
}

/** The typed array that views an array field of scalar type `T`. */
export type ArrayFor<T extends Scalar> = T extends "u64" ? BigUint64Array
  : T extends "i64" ? BigInt64Array
  : T extends "u32" ? Uint32Array
  : T extends "i32" ? Int32Array
  : T extends "u16" ? Uint16Array
  : T extends "i16" ? Int16Array
  : T extends "i8" ? Int8Array
  : Uint8Array;

/** The JavaScript value of a field. */
export type FieldValue<F extends FieldDef> = F["type"] extends StructDef<infer N> ? Struct<N>
  : F["count"] extends number ? ArrayFor<F["type"] & Scalar>
  : F["type"] extends "u64" | "i64" ? bigint
  : number;

/** Fields that are views (arrays, nested structs): readable, not assignable. */
export type ReadonlyKeys<F extends Fields> = {
  [K in keyof F]: F[K]["count"] extends number ? K : F[K]["type"] extends Scalar ? never : K;
}[keyof F];

/** A plain-object snapshot of a struct, as `toJSON()` returns it. */
export type Plain<F extends Fields> = {
  [K in keyof F]: F[K]["type"] extends StructDef<infer N> ? Plain<N>
    : F[K]["count"] extends number ? (F[K]["type"] extends "u64" | "i64" ? bigint[] : number[])
    : F[K]["type"] extends "u64" | "i64" ? bigint
    : number;
};

/** Values accepted by `assign()`: any subset of the fields, nested ones too. */
export type Assignable<F extends Fields> = {
  [K in keyof F]?: F[K]["type"] extends StructDef<infer N> ? Assignable<N>
    : F[K]["count"] extends number
      ? ArrayLike<F[K]["type"] extends "u64" | "i64" ? bigint | number : number>
    : F[K]["type"] extends "u64" | "i64" ? bigint | number
    : number;
};

/** Methods every struct instance has besides its fields. */
export interface StructBase<F extends Fields> {
  /** The struct's bytes (a view, not a copy, of its memory). */
  readonly bytes: Uint8Array;
  /** A `DataView` over {@linkcode bytes}. */
  readonly view: DataView;
  /** Sets the given fields, leaving the others alone; returns `this`. */
  assign(values: Assignable<F>): this;
  /** Zeroes every byte; returns `this`. */
  clear(): this;
  /** A plain-object copy of every field. */
  toJSON(): Plain<F>;
}

/** An instance of a struct codec: typed field accessors plus {@linkcode StructBase}. */
export type Struct<F extends Fields> =
  & { -readonly [K in Exclude<keyof F, ReadonlyKeys<F>>]: FieldValue<F[K]> }
  & { readonly [K in ReadonlyKeys<F>]: FieldValue<F[K]> }
  & StructBase<F>;

/** A struct layout and its codec class. */
export interface StructDef<F extends Fields> extends AnyStructDef {
  /** The fields by TypeScript name. */
  readonly fields: F;
  /**
   * Creates a codec over `bytes` (which must hold at least `size` bytes from
   * its start), or over fresh zeroed memory.
   */
  new (bytes?: Uint8Array): Struct<F>;
}

/** snake_case of a camelCase name: the default C member name. */
export function cMember(name: string, field: FieldDef): string {
  return field.c ?? name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** Size in bytes of one field. */
export function fieldSize(field: FieldDef): number {
  const one = typeof field.type === "string" ? SCALAR_SIZE[field.type] : field.type.size;
  return one * (field.count ?? 1);
}

/**
 * Declares a struct codec.
 *
 * @example
 * ```ts
 * import { defineStruct } from "./struct.ts";
 * const Pair = defineStruct("struct pair", 16, {
 *   low: { offset: 0, type: "u64" },
 *   high: { offset: 8, type: "u64" },
 * });
 * const pair = new Pair();
 * pair.low = 1n;
 * ```
 */
export function defineStruct<const F extends Fields>(
  cName: string,
  size: number,
  fields: F,
): StructDef<F> {
  for (const [name, field] of Object.entries(fields)) {
    if (field.offset + fieldSize(field) > size) {
      throw new RangeError(`${cName}.${name} ends past the struct's ${size} bytes`);
    }
  }
  const arrays = Object.entries(fields).filter(([, f]) => f.count !== undefined);
  const nested = Object.entries(fields).filter(([, f]) => typeof f.type !== "string");

  class Codec {
    static readonly cName = cName;
    static readonly size = size;
    static readonly fields = fields;
    readonly bytes: Uint8Array;
    readonly view: DataView;

    constructor(bytes?: Uint8Array) {
      if (bytes && bytes.byteLength < size) {
        throw new RangeError(`${cName} needs ${size} bytes, got ${bytes.byteLength}`);
      }
      // Eight-byte alignment keeps the typed-array members below valid.
      this.bytes = bytes ?? new Uint8Array(new BigUint64Array(Math.ceil(size / 8)).buffer, 0, size);
      this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, size);
      const self = this as unknown as Record<string, unknown>;
      for (const [name, f] of arrays) {
        if (typeof f.type !== "string") throw new TypeError("arrays of structs are not supported");
        self[`#${name}`] = typedArray(f.type, this.bytes, f.offset, f.count!);
      }
      for (const [name, f] of nested) {
        const def = f.type as StructDef<Fields>;
        self[`#${name}`] = new def(this.bytes.subarray(f.offset, f.offset + def.size));
      }
    }

    assign(values: Record<string, unknown>): this {
      const self = this as unknown as Record<string, unknown>;
      for (const [name, value] of Object.entries(values)) {
        const f = fields[name];
        if (!f) throw new TypeError(`${cName} has no field ${name}`);
        if (value === undefined) continue;
        if (typeof f.type !== "string") {
          (self[name] as Codec).assign(value as Record<string, unknown>);
        } else if (f.count !== undefined) {
          // Checked whole before any element is stored: a refusal leaves the array as it was.
          const list = value as ArrayLike<unknown>;
          if (list === null || typeof list !== "object" || !(list.length <= f.count)) {
            throw new KvmError(
              `encode ${cName}`,
              Errno.EINVAL,
              `field ${name} takes at most ${f.count} elements, got ${
                list === null || typeof list !== "object" ? typeof list : list.length
              }`,
            );
          }
          for (let i = 0; i < list.length; i++) {
            if (!fitsScalar(f.type, list[i])) refuse(cName, `${name}[${i}]`, f.type, list[i]);
          }
          const array = self[name] as { [i: number]: unknown; set(v: ArrayLike<unknown>): void };
          if (f.type === "u64" || f.type === "i64") {
            for (let i = 0; i < list.length; i++) {
              const x = list[i];
              array[i] = typeof x === "bigint" ? x : BigInt(x as number);
            }
          } else {
            array.set(list);
          }
        } else {
          self[name] = value;
        }
      }
      return this;
    }

    clear(): this {
      this.bytes.fill(0);
      return this;
    }

    toJSON(): Record<string, unknown> {
      const self = this as unknown as Record<string, unknown>;
      const out: Record<string, unknown> = {};
      for (const [name, f] of Object.entries(fields)) {
        const value = self[name];
        if (typeof f.type !== "string") out[name] = (value as Codec).toJSON();
        else if (f.count !== undefined) out[name] = Array.from(value as ArrayLike<unknown>);
        else out[name] = value;
      }
      return out;
    }
  }

  for (const [name, f] of Object.entries(fields)) {
    const off = f.offset;
    if (f.count !== undefined || typeof f.type !== "string") {
      const key = `#${name}`;
      Object.defineProperty(Codec.prototype, name, {
        get(this: Record<string, unknown>) {
          return this[key];
        },
        enumerable: true,
      });
      continue;
    }
    Object.defineProperty(Codec.prototype, name, {
      ...accessor(f.type, off, cName, name),
      enumerable: true,
    });
  }
  Object.defineProperty(Codec, "name", { value: cName });
  return Codec as unknown as StructDef<F>;
}

type Accessor = {
  get(this: { view: DataView }): number | bigint;
  set(this: { view: DataView }, v: number | bigint): void;
};

const U64_MAX = 0xffff_ffff_ffff_ffffn;
const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
const TWO_64 = 2 ** 64;
const TWO_63 = 2 ** 63;

/** What each scalar field accepts, for the error message. */
const ACCEPTS: Record<Scalar, string> = {
  u8: "an integer 0..0xff",
  i8: "an integer -0x80..0x7f",
  u16: "an integer 0..0xffff",
  i16: "an integer -0x8000..0x7fff",
  // JavaScript's bitwise operators give signed 32-bit results (`x | 0x80000000`
  // is negative), so 32-bit fields take both readings of the same 32 bits.
  u32: "a 32-bit integer (-0x80000000..0xffffffff)",
  i32: "a 32-bit integer (-0x80000000..0xffffffff)",
  u64: "an integer 0..2^64-1 (a bigint or a number)",
  i64: "an integer -2^63..2^63-1 (a bigint or a number)",
};

/**
 * The one refusal of a value a field cannot hold: a {@linkcode KvmError}
 * (`EINVAL`, operation `encode <struct>`) naming the field. Built only on
 * failure, so a good value costs its setter no allocation.
 */
function refuse(cName: string, field: string, type: Scalar, value: unknown): never {
  const shown = typeof value === "bigint"
    ? `${value}n`
    : typeof value === "string"
    ? JSON.stringify(value)
    : String(value);
  throw new KvmError(
    `encode ${cName}`,
    Errno.EINVAL,
    `field ${field} (${type}) ${shown} is not ${ACCEPTS[type]}`,
  );
}

/**
 * Whether `v` fits a scalar field: an integer (a number, or a bigint for the
 * 64-bit types) in the field's range; never NaN, ±Infinity, a fraction or
 * another type. Allocates nothing.
 */
export function fitsScalar(type: Scalar, v: unknown): boolean {
  switch (type) {
    case "u8":
      return typeof v === "number" && (v & 0xff) === v;
    case "i8":
      return typeof v === "number" && ((v << 24) >> 24) === v;
    case "u16":
      return typeof v === "number" && (v & 0xffff) === v;
    case "i16":
      return typeof v === "number" && ((v << 16) >> 16) === v;
    case "u32":
    case "i32":
      // `(v | 0) === v` holds for the integers -2^31..2^31-1, `(v >>> 0) === v` for 0..2^32-1.
      return typeof v === "number" && ((v | 0) === v || (v >>> 0) === v);
    case "u64":
      return typeof v === "bigint"
        ? v >= 0n && v <= U64_MAX
        : typeof v === "number" && Number.isInteger(v) && v >= 0 && v < TWO_64;
    case "i64":
      return typeof v === "bigint"
        ? v >= I64_MIN && v <= I64_MAX
        : typeof v === "number" && Number.isInteger(v) && v >= -TWO_63 && v < TWO_63;
  }
}

/**
 * The field's getter and setter. Every setter checks its value with
 * {@linkcode fitsScalar} first: a value the field cannot hold is refused
 * (`KvmError` `EINVAL` naming `cName.name`), never wrapped or truncated by
 * the `DataView` (which would store 300 as 44 and 2^64 as 0).
 */
function accessor(type: Scalar, off: number, cName: string, name: string): Accessor {
  const bad = (v: unknown): never => refuse(cName, name, type, v);
  switch (type) {
    case "u8":
      return {
        get() {
          return this.view.getUint8(off);
        },
        set(v) {
          if (typeof v !== "number" || (v & 0xff) !== v) bad(v);
          this.view.setUint8(off, v as number);
        },
      };
    case "i8":
      return {
        get() {
          return this.view.getInt8(off);
        },
        set(v) {
          if (typeof v !== "number" || ((v << 24) >> 24) !== v) bad(v);
          this.view.setInt8(off, v as number);
        },
      };
    case "u16":
      return {
        get() {
          return this.view.getUint16(off, true);
        },
        set(v) {
          if (typeof v !== "number" || (v & 0xffff) !== v) bad(v);
          this.view.setUint16(off, v as number, true);
        },
      };
    case "i16":
      return {
        get() {
          return this.view.getInt16(off, true);
        },
        set(v) {
          if (typeof v !== "number" || ((v << 16) >> 16) !== v) bad(v);
          this.view.setInt16(off, v as number, true);
        },
      };
    case "u32":
      return {
        get() {
          return this.view.getUint32(off, true);
        },
        set(v) {
          if (typeof v !== "number" || ((v | 0) !== v && (v >>> 0) !== v)) bad(v);
          this.view.setUint32(off, v as number, true);
        },
      };
    case "i32":
      return {
        get() {
          return this.view.getInt32(off, true);
        },
        set(v) {
          if (typeof v !== "number" || ((v | 0) !== v && (v >>> 0) !== v)) bad(v);
          this.view.setInt32(off, v as number, true);
        },
      };
    case "u64":
      return {
        get() {
          return this.view.getBigUint64(off, true);
        },
        set(v) {
          if (!fitsScalar("u64", v)) bad(v);
          this.view.setBigUint64(off, typeof v === "bigint" ? v : BigInt(v), true);
        },
      };
    case "i64":
      return {
        get() {
          return this.view.getBigInt64(off, true);
        },
        set(v) {
          if (!fitsScalar("i64", v)) bad(v);
          this.view.setBigInt64(off, typeof v === "bigint" ? v : BigInt(v), true);
        },
      };
  }
}

function typedArray(type: Scalar, bytes: Uint8Array, offset: number, count: number) {
  const at = bytes.byteOffset + offset;
  switch (type) {
    case "u8":
      return new Uint8Array(bytes.buffer, at, count);
    case "i8":
      return new Int8Array(bytes.buffer, at, count);
    case "u16":
      return new Uint16Array(bytes.buffer, at, count);
    case "i16":
      return new Int16Array(bytes.buffer, at, count);
    case "u32":
      return new Uint32Array(bytes.buffer, at, count);
    case "i32":
      return new Int32Array(bytes.buffer, at, count);
    case "u64":
      return new BigUint64Array(bytes.buffer, at, count);
    case "i64":
      return new BigInt64Array(bytes.buffer, at, count);
  }
}
