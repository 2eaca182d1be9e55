/**
 * `struct kvm_userspace_memory_region2` (Linux 6.8+, `KVM_CAP_USER_MEMORY2`).
 *
 * The `<linux/kvm.h>` this project is built against (Debian 12) predates the
 * struct, so the ABI probe cannot check it: the codec class is kept private
 * (the probe checks every exported codec) and offered through a factory. Its
 * layout is the one in Documentation/virt/kvm/api.rst, section
 * "KVM_SET_USER_MEMORY_REGION2".
 *
 * @module
 */

import { defineStruct, type Struct } from "./struct.ts";

/** `KVM_CAP_USER_MEMORY2`: the kernel has `KVM_SET_USER_MEMORY_REGION2`. */
export const KVM_CAP_USER_MEMORY2 = 231;

/** Field layout (offsets and types) of `struct kvm_userspace_memory_region2`. */
export const kvmUserspaceMemoryRegion2Fields = {
  slot: { offset: 0, type: "u32" },
  flags: { offset: 4, type: "u32" },
  guestPhysAddr: { offset: 8, type: "u64" },
  memorySize: { offset: 16, type: "u64" },
  userspaceAddr: { offset: 24, type: "u64" },
  guestMemfdOffset: { offset: 32, type: "u64" },
  guestMemfd: { offset: 40, type: "u32" },
  pad1: { offset: 44, type: "u32" },
  pad2: { offset: 48, type: "u64", count: 14 },
} as const;

/** `sizeof(struct kvm_userspace_memory_region2)`. */
export const USERSPACE_MEMORY_REGION2_SIZE = 160;

const KvmUserspaceMemoryRegion2 = defineStruct(
  "struct kvm_userspace_memory_region2",
  USERSPACE_MEMORY_REGION2_SIZE,
  kvmUserspaceMemoryRegion2Fields,
);

/** A zeroed `struct kvm_userspace_memory_region2` codec. */
export function userspaceMemoryRegion2(): Struct<typeof kvmUserspaceMemoryRegion2Fields> {
  return new KvmUserspaceMemoryRegion2();
}
