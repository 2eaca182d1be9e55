/**
 * Codecs of the eventfd bindings: irqfd (an eventfd raises a GSI) and
 * ioeventfd (a guest write signals an eventfd) (`<linux/kvm.h>`).
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** `kvm_irqfd.flags`: remove the binding. */
export const KVM_IRQFD_FLAG_DEASSIGN = 1;
/** `kvm_irqfd.flags`: `resamplefd` is valid (level-triggered irqfd). */
export const KVM_IRQFD_FLAG_RESAMPLE = 2;
/** `kvm_ioeventfd.flags`: signal only when the written value equals `datamatch`. */
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
/** `kvm_ioeventfd.flags`: `addr` is a port, not a guest physical address. */
export const KVM_IOEVENTFD_FLAG_PIO = 2;
/** `kvm_ioeventfd.flags`: remove the binding. */
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmIrqfdFields = {
  fd: { offset: 0, type: "u32" },
  gsi: { offset: 4, type: "u32" },
  flags: { offset: 8, type: "u32" },
  resamplefd: { offset: 12, type: "u32" },
  pad: { offset: 16, type: "u8", count: 16 },
} as const;
/** `struct kvm_irqfd`: binds an eventfd to a GSI for `KVM_IRQFD`. */
export const KvmIrqfd: StructDef<typeof kvmIrqfdFields> = defineStruct(
  "struct kvm_irqfd",
  32,
  kvmIrqfdFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmIoeventfdFields = {
  datamatch: { offset: 0, type: "u64" },
  addr: { offset: 8, type: "u64" },
  len: { offset: 16, type: "u32" },
  fd: { offset: 20, type: "i32" },
  flags: { offset: 24, type: "u32" },
  pad: { offset: 28, type: "u8", count: 36 },
} as const;
/** `struct kvm_ioeventfd`: binds a guest PIO/MMIO write to an eventfd for `KVM_IOEVENTFD`. */
export const KvmIoeventfd: StructDef<typeof kvmIoeventfdFields> = defineStruct(
  "struct kvm_ioeventfd",
  64,
  kvmIoeventfdFields,
);
