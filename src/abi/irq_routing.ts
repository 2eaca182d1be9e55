/**
 * Codecs of the GSI routing table for `KVM_SET_GSI_ROUTING` (`<linux/kvm.h>`).
 * The table is variable length: a {@linkcode KvmIrqRouting} header followed by
 * `nr` {@linkcode KvmIrqRoutingEntry} entries.
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Route type: a pin of an in-kernel irqchip. */
export const KVM_IRQ_ROUTING_IRQCHIP = 1;
/** Route type: a message-signalled interrupt. */
export const KVM_IRQ_ROUTING_MSI = 2;
/** Route flag: `u.msi.devid` is valid. */
export const KVM_MSI_VALID_DEVID = 1;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmIrqRoutingFields = {
  nr: { offset: 0, type: "u32" },
  flags: { offset: 4, type: "u32" },
} as const;
/** `struct kvm_irq_routing`: the header (entry count) of a routing table. */
export const KvmIrqRouting: StructDef<typeof kvmIrqRoutingFields> = defineStruct(
  "struct kvm_irq_routing",
  8,
  kvmIrqRoutingFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmIrqRoutingEntryFields = {
  gsi: { offset: 0, type: "u32" },
  type: { offset: 4, type: "u32" },
  flags: { offset: 8, type: "u32" },
  pad: { offset: 12, type: "u32" },
  irqchip: { offset: 16, type: "u32", c: "u.irqchip.irqchip" },
  pin: { offset: 20, type: "u32", c: "u.irqchip.pin" },
  msiAddressLo: { offset: 16, type: "u32", c: "u.msi.address_lo" },
  msiAddressHi: { offset: 20, type: "u32", c: "u.msi.address_hi" },
  msiData: { offset: 24, type: "u32", c: "u.msi.data" },
  msiDevid: { offset: 28, type: "u32", c: "u.msi.devid" },
  u: { offset: 16, type: "u32", count: 8, c: "u.pad" },
} as const;
/** `struct kvm_irq_routing_entry`: one GSI's route; the union is flattened by kind. */
export const KvmIrqRoutingEntry: StructDef<typeof kvmIrqRoutingEntryFields> = defineStruct(
  "struct kvm_irq_routing_entry",
  48,
  kvmIrqRoutingEntryFields,
);
