/**
 * The dirty ring (`KVM_CAP_DIRTY_LOG_RING`, `KVM_CAP_DIRTY_LOG_RING_ACQ_REL`):
 * per-vCPU rings of `struct kvm_dirty_gfn` that the kernel fills with the
 * pages a vCPU wrote, mapped from the vCPU fd at page
 * `KVM_DIRTY_LOG_PAGE_OFFSET`. Documentation/virt/kvm/api.rst, section
 * "KVM_CAP_DIRTY_LOG_RING/KVM_CAP_DIRTY_LOG_RING_ACQ_REL".
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Page offset (in pages) of the dirty ring inside a vCPU fd's mmap space (x86). */
export const KVM_DIRTY_LOG_PAGE_OFFSET = 64;
/** `kvm_dirty_gfn.flags`: the entry holds a dirty page not yet harvested. */
export const KVM_DIRTY_GFN_F_DIRTY = 1;
/** `kvm_dirty_gfn.flags`: userspace harvested the entry; `KVM_RESET_DIRTY_RINGS` recycles it. */
export const KVM_DIRTY_GFN_F_RESET = 2;
/** The defined bits of `kvm_dirty_gfn.flags`. */
export const KVM_DIRTY_GFN_F_MASK = 3;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmDirtyGfnFields = {
  /** `KVM_DIRTY_GFN_F_*`: 0 (empty), DIRTY (to harvest), RESET (harvested). */
  flags: { offset: 0, type: "u32" },
  /** Address space in bits 16-31 (1 is SMM on x86), slot id in bits 0-15. */
  slot: { offset: 4, type: "u32" },
  /** The page's offset inside the slot, in pages. */
  offset: { offset: 8, type: "u64" },
} as const;
/** `struct kvm_dirty_gfn`: one entry of a dirty ring. */
export const KvmDirtyGfn: StructDef<typeof kvmDirtyGfnFields> = defineStruct(
  "struct kvm_dirty_gfn",
  16,
  kvmDirtyGfnFields,
);
