/**
 * Codec of `KVM_ENABLE_CAP`'s argument (`<linux/kvm.h>`).
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Field layout (offsets and types) of the struct codec below. */
export const kvmEnableCapFields = {
  cap: { offset: 0, type: "u32" },
  flags: { offset: 4, type: "u32" },
  args: { offset: 8, type: "u64", count: 4 },
  pad: { offset: 40, type: "u8", count: 64 },
} as const;
/** `struct kvm_enable_cap`: a capability to turn on, with up to four arguments. */
export const KvmEnableCap: StructDef<typeof kvmEnableCapFields> = defineStruct(
  "struct kvm_enable_cap",
  104,
  kvmEnableCapFields,
);
