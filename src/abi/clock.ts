/**
 * Codec of the VM's kvmclock state (`<linux/kvm.h>`).
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** `kvm_clock_data.flags`: the clock is the same on every vCPU (master clock in use). */
export const KVM_CLOCK_TSC_STABLE = 2;
/** `kvm_clock_data.flags`: `realtime` is valid. */
export const KVM_CLOCK_REALTIME = 4;
/** `kvm_clock_data.flags`: `host_tsc` is valid. */
export const KVM_CLOCK_HOST_TSC = 8;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmClockDataFields = {
  /** kvmclock nanoseconds. */
  clock: { offset: 0, type: "u64" },
  flags: { offset: 8, type: "u32" },
  pad0: { offset: 12, type: "u32" },
  realtime: { offset: 16, type: "u64" },
  hostTsc: { offset: 24, type: "u64" },
  pad: { offset: 32, type: "u32", count: 4 },
} as const;
/** `struct kvm_clock_data`: the argument of `KVM_GET_CLOCK`/`KVM_SET_CLOCK`. */
export const KvmClockData: StructDef<typeof kvmClockDataFields> = defineStruct(
  "struct kvm_clock_data",
  48,
  kvmClockDataFields,
);
