/**
 * Codecs of coalesced MMIO/PIO: the zones registered on a VM and the ring the
 * kernel fills with the guest's writes to them (`<linux/kvm.h>`).
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Page of a vCPU's mapping that holds the coalesced ring on x86 (`KVM_COALESCED_MMIO_PAGE_OFFSET`). */
export const KVM_COALESCED_MMIO_PAGE_OFFSET = 2;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmCoalescedMmioZoneFields = {
  addr: { offset: 0, type: "u64" },
  size: { offset: 8, type: "u32" },
  /** 1 for a port-I/O zone (`KVM_CAP_COALESCED_PIO`), 0 for MMIO. */
  pio: { offset: 12, type: "u32" },
} as const;
/** `struct kvm_coalesced_mmio_zone`: a guest range whose writes are queued, not exited. */
export const KvmCoalescedMmioZone: StructDef<typeof kvmCoalescedMmioZoneFields> = defineStruct(
  "struct kvm_coalesced_mmio_zone",
  16,
  kvmCoalescedMmioZoneFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmCoalescedMmioFields = {
  physAddr: { offset: 0, type: "u64" },
  len: { offset: 8, type: "u32" },
  pio: { offset: 12, type: "u32" },
  data: { offset: 16, type: "u8", count: 8 },
} as const;
/** `struct kvm_coalesced_mmio`: one queued write in the ring. */
export const KvmCoalescedMmio: StructDef<typeof kvmCoalescedMmioFields> = defineStruct(
  "struct kvm_coalesced_mmio",
  24,
  kvmCoalescedMmioFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmCoalescedMmioRingFields = {
  /** Next entry userspace reads. */
  first: { offset: 0, type: "u32" },
  /** Next entry the kernel writes. */
  last: { offset: 4, type: "u32" },
} as const;
/** `struct kvm_coalesced_mmio_ring`: the ring's header; entries follow it. */
export const KvmCoalescedMmioRing: StructDef<typeof kvmCoalescedMmioRingFields> = defineStruct(
  "struct kvm_coalesced_mmio_ring",
  8,
  kvmCoalescedMmioRingFields,
);

/** Entries in the one-page ring (`KVM_COALESCED_MMIO_MAX` for 4 KiB pages). */
export const COALESCED_RING_ENTRIES: number = Math.floor((4096 - 8) / 24);
