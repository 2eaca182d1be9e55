/**
 * Checks of the numbers a public method hands to the kernel: each throws a
 * {@linkcode KvmError} with `EINVAL` naming the parameter when the value is
 * not an integer (NaN, ±Infinity, a fraction), is negative, or does not fit
 * the kernel's field, instead of a `RangeError` from `BigInt()` or a value
 * that wraps silently. They allocate nothing when the value is good.
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";

const U64_MAX = 0xffff_ffff_ffff_ffffn;
const TWO_64 = 2 ** 64;

function show(value: unknown): string {
  return typeof value === "bigint" ? `${value}n` : String(value);
}

function fail(op: string, name: string, value: unknown, what: string): never {
  throw new KvmError(op, Errno.EINVAL, `${name} ${show(value)} is not ${what}`);
}

/** An unsigned integer of at most `max` (below 2^32); returns it. */
function unsigned(op: string, name: string, value: number, max: number, what: string): number {
  // `(v >>> 0) === v` holds exactly for the integers 0..2^32-1 (not NaN, not -1, not 0.5).
  if (typeof value !== "number" || (value >>> 0) !== value || value > max) {
    fail(op, name, value, what);
  }
  return value;
}

/** `value` as an 8-bit unsigned integer (0..255), or a KvmError(EINVAL) naming `name`. */
export function u8(op: string, name: string, value: number): number {
  return unsigned(op, name, value, 0xff, "an integer 0..0xff");
}

/** `value` as a 16-bit unsigned integer (0..0xffff), or a KvmError(EINVAL) naming `name`. */
export function u16(op: string, name: string, value: number): number {
  return unsigned(op, name, value, 0xffff, "an integer 0..0xffff");
}

/** `value` as a 32-bit unsigned integer (0..0xffffffff), or a KvmError(EINVAL) naming `name`. */
export function u32(op: string, name: string, value: number): number {
  return unsigned(op, name, value, 0xffff_ffff, "an integer 0..0xffffffff");
}

/**
 * A 32-bit register value given either unsigned or as the signed result of a
 * JS bitwise expression (`x | 0x80000000` is negative): an integer in
 * -2^31..2^32-1, returned unsigned; anything else is a KvmError(EINVAL).
 */
export function bits32(op: string, name: string, value: number): number {
  if (typeof value !== "number" || (value | 0) !== value && (value >>> 0) !== value) {
    fail(op, name, value, "a 32-bit integer (-0x80000000..0xffffffff)");
  }
  return value >>> 0;
}

/**
 * `value` (a number or a bigint) as a 64-bit unsigned integer, returned as a
 * bigint, or a KvmError(EINVAL) naming `name`.
 */
export function u64(op: string, name: string, value: number | bigint): bigint {
  if (typeof value === "bigint") {
    if (value < 0n || value > U64_MAX) fail(op, name, value, "an integer 0..2^64-1");
    return value;
  }
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value >= TWO_64) {
    fail(op, name, value, "an integer 0..2^64-1");
  }
  return BigInt(value);
}

/**
 * `value` (a number or a bigint) as an unsigned integer of at most `max`,
 * returned as a bigint, or a KvmError(EINVAL) naming `name` (e.g. a port,
 * which the API takes as `number | bigint` with addresses).
 */
export function upTo(op: string, name: string, value: number | bigint, max: bigint): bigint {
  const what = `an integer 0..0x${max.toString(16)}`;
  if (typeof value === "number" && !Number.isInteger(value)) fail(op, name, value, what);
  if (typeof value !== "number" && typeof value !== "bigint") fail(op, name, value, what);
  const v = BigInt(value);
  if (v < 0n || v > max) fail(op, name, value, what);
  return v;
}

/** `value` as an integer `0 <= value < limit`, or a KvmError(EINVAL) naming `name`. */
export function index(op: string, name: string, value: number, limit: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value >= limit) {
    fail(op, name, value, `an integer 0..${limit - 1}`);
  }
  return value;
}
