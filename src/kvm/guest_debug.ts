/**
 * Options of `Vcpu.setGuestDebug` and their encoding into
 * `struct kvm_guest_debug` (control flags and a DR7 image).
 *
 * @module
 */

import {
  KVM_GUESTDBG_ENABLE,
  KVM_GUESTDBG_SINGLESTEP,
  KVM_GUESTDBG_USE_HW_BP,
  KVM_GUESTDBG_USE_SW_BP,
  type KvmGuestDebug,
} from "../abi/debug.ts";
import { Errno, KvmError } from "../errors.ts";
import { hex } from "./constants.ts";
import { u64 } from "./validate.ts";

/** A hardware breakpoint (`exec`) or watchpoint (`write`, `readwrite`) in DR0-DR3. */
export interface HardwareBreakpoint {
  /** Guest linear address. Data watchpoints must be aligned to `length`. */
  address: bigint | number;
  /** What triggers it: instruction fetch, data write, or data read or write. */
  kind: "exec" | "write" | "readwrite";
  /** Bytes watched: 1, 2, 4 or 8 (default 1; `exec` needs 1). */
  length?: 1 | 2 | 4 | 8;
}

/** Options of `Vcpu.setGuestDebug`. */
export interface GuestDebugOptions {
  /** Debugging on (default true); `false` turns every option off. */
  enable?: boolean;
  /** Exit with a `"debug"` exit after every guest instruction. */
  singleStep?: boolean;
  /** Intercept `int3` (#BP) as a `"debug"` exit with exception 3. */
  softwareBreakpoints?: boolean;
  /** Up to four breakpoints/watchpoints; they exit with exception 1 and DR6 saying which. */
  hardwareBreakpoints?: readonly HardwareBreakpoint[];
}

const RW_BITS = { exec: 0, write: 1, readwrite: 3 } as const;
const LEN_BITS: Record<number, number> = { 1: 0, 2: 1, 8: 2, 4: 3 };

/** The number of hardware breakpoint registers (DR0-DR3). */
export const MAX_HARDWARE_BREAKPOINTS = 4;

/**
 * Fills `out` with the `struct kvm_guest_debug` for `options`, after checking
 * them (KvmError `EINVAL` with what is wrong).
 */
export function encodeGuestDebug(
  options: GuestDebugOptions,
  out: InstanceType<typeof KvmGuestDebug>,
): void {
  const op = "KVM_SET_GUEST_DEBUG";
  out.clear();
  if (options.enable === false) return;
  const hw = options.hardwareBreakpoints ?? [];
  if (hw.length > MAX_HARDWARE_BREAKPOINTS) {
    throw new KvmError(
      op,
      Errno.EINVAL,
      `${hw.length} hardware breakpoints given, x86 has ${MAX_HARDWARE_BREAKPOINTS} (DR0-DR3)`,
    );
  }
  let control = KVM_GUESTDBG_ENABLE;
  if (options.singleStep) control |= KVM_GUESTDBG_SINGLESTEP;
  if (options.softwareBreakpoints) control |= KVM_GUESTDBG_USE_SW_BP;
  let dr7 = 0n;
  hw.forEach((bp, i) => {
    const length = bp.length ?? 1;
    const rw = RW_BITS[bp.kind];
    if (rw === undefined) {
      throw new KvmError(op, Errno.EINVAL, `breakpoint ${i}: unknown kind ${bp.kind}`);
    }
    if (LEN_BITS[length] === undefined) {
      throw new KvmError(op, Errno.EINVAL, `breakpoint ${i}: length ${length} is not 1, 2, 4 or 8`);
    }
    if (bp.kind === "exec" && length !== 1) {
      throw new KvmError(op, Errno.EINVAL, `breakpoint ${i}: an exec breakpoint has length 1`);
    }
    const address = u64(op, `breakpoint ${i}: address`, bp.address);
    if (address % BigInt(length) !== 0n) {
      throw new KvmError(
        op,
        Errno.EINVAL,
        `breakpoint ${i}: address ${hex(address)} is not aligned to its length ${length}`,
      );
    }
    out.debugreg[i] = address;
    // Gx (global) enable bit, as QEMU's gdbstub sets it, then this register's R/W and LEN.
    dr7 |= 2n << BigInt(2 * i);
    dr7 |= BigInt(rw | (LEN_BITS[length] << 2)) << BigInt(16 + 4 * i);
  });
  if (hw.length) {
    control |= KVM_GUESTDBG_USE_HW_BP;
    out.debugreg[7] = dr7;
  }
  out.control = control;
}
