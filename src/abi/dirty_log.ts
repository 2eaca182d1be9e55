/**
 * Codecs of the dirty-page log (`<linux/kvm.h>`).
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` argument: GET no longer clears; CLEAR re-protects. */
export const KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1;
/** `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` argument: new slots start with every page dirty. */
export const KVM_DIRTY_LOG_INITIALLY_SET = 2;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmDirtyLogFields = {
  slot: { offset: 0, type: "u32" },
  padding1: { offset: 4, type: "u32" },
  /** Host address of the bitmap the kernel fills (one bit per page). */
  dirtyBitmap: { offset: 8, type: "u64" },
} as const;
/** `struct kvm_dirty_log`: the argument of `KVM_GET_DIRTY_LOG`. */
export const KvmDirtyLog: StructDef<typeof kvmDirtyLogFields> = defineStruct(
  "struct kvm_dirty_log",
  16,
  kvmDirtyLogFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmClearDirtyLogFields = {
  slot: { offset: 0, type: "u32" },
  numPages: { offset: 4, type: "u32" },
  firstPage: { offset: 8, type: "u64" },
  /** Host address of the bitmap of pages to clear; bit 0 is `firstPage`. */
  dirtyBitmap: { offset: 16, type: "u64" },
} as const;
/** `struct kvm_clear_dirty_log`: the argument of `KVM_CLEAR_DIRTY_LOG`. */
export const KvmClearDirtyLog: StructDef<typeof kvmClearDirtyLogFields> = defineStruct(
  "struct kvm_clear_dirty_log",
  24,
  kvmClearDirtyLogFields,
);
