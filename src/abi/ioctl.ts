/**
 * Encoding of ioctl request numbers, as `<asm-generic/ioctl.h>` does it.
 *
 * @module
 */

import type { AnyStructDef } from "./struct.ts";

/** The ioctl "type" byte of every KVM request (`KVMIO`). */
export const KVMIO = 0xae;

const NONE = 0;
const WRITE = 1;
const READ = 2;

/** `_IOC(dir, type, nr, size)`: direction, size, type and number packed in 32 bits. */
export function ioc(dir: number, type: number, nr: number, size: number): number {
  if (size >= 1 << 14) throw new RangeError(`ioctl argument size ${size} does not fit 14 bits`);
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}

type Size = number | AnyStructDef;
const sizeOf = (s: Size) => typeof s === "number" ? s : s.size;

/** `_IO(KVMIO, nr)`: no argument, or an integer passed by value. */
export const io = (nr: number): number => ioc(NONE, KVMIO, nr, 0);
/** `_IOR(KVMIO, nr, T)`: the kernel writes a T. */
export const ior = (nr: number, t: Size): number => ioc(READ, KVMIO, nr, sizeOf(t));
/** `_IOW(KVMIO, nr, T)`: the kernel reads a T. */
export const iow = (nr: number, t: Size): number => ioc(WRITE, KVMIO, nr, sizeOf(t));
/** `_IOWR(KVMIO, nr, T)`: the kernel reads and writes a T. */
export const iowr = (nr: number, t: Size): number => ioc(READ | WRITE, KVMIO, nr, sizeOf(t));
