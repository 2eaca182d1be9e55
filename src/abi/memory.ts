/**
 * Codecs of the guest-memory structs (`<linux/kvm.h>`).
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Field layout (offsets and types) of the struct codec below. */
export const kvmUserspaceMemoryRegionFields = {
  slot: { offset: 0, type: "u32" },
  flags: { offset: 4, type: "u32" },
  guestPhysAddr: { offset: 8, type: "u64" },
  memorySize: { offset: 16, type: "u64" },
  userspaceAddr: { offset: 24, type: "u64" },
} as const;
/** `struct kvm_userspace_memory_region`: one memory slot. */
export const KvmUserspaceMemoryRegion: StructDef<typeof kvmUserspaceMemoryRegionFields> =
  defineStruct(
    "struct kvm_userspace_memory_region",
    32,
    kvmUserspaceMemoryRegionFields,
  );

/** Slot flag: log dirty pages (`KVM_MEM_LOG_DIRTY_PAGES`). */
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
/** Slot flag: guest writes exit as MMIO (`KVM_MEM_READONLY`). */
export const KVM_MEM_READONLY = 1 << 1;
