/**
 * Codecs of the in-kernel interrupt controller structs: the PIC pair, the
 * IOAPIC, and the IRQ line and MSI requests (`<linux/kvm.h>`, `<asm/kvm.h>`).
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** `chip_id` of the master 8259 PIC (IRQs 0-7). */
export const KVM_IRQCHIP_PIC_MASTER = 0;
/** `chip_id` of the slave 8259 PIC (IRQs 8-15). */
export const KVM_IRQCHIP_PIC_SLAVE = 1;
/** `chip_id` of the IOAPIC (GSIs 0-23). */
export const KVM_IRQCHIP_IOAPIC = 2;
/** Pins of the in-kernel IOAPIC. */
export const KVM_IOAPIC_NUM_PINS = 24;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmPicStateFields = {
  lastIrr: { offset: 0, type: "u8" },
  irr: { offset: 1, type: "u8" },
  imr: { offset: 2, type: "u8" },
  isr: { offset: 3, type: "u8" },
  priorityAdd: { offset: 4, type: "u8" },
  irqBase: { offset: 5, type: "u8" },
  readRegSelect: { offset: 6, type: "u8" },
  poll: { offset: 7, type: "u8" },
  specialMask: { offset: 8, type: "u8" },
  initState: { offset: 9, type: "u8" },
  autoEoi: { offset: 10, type: "u8" },
  rotateOnAutoEoi: { offset: 11, type: "u8" },
  specialFullyNestedMode: { offset: 12, type: "u8" },
  init4: { offset: 13, type: "u8" },
  elcr: { offset: 14, type: "u8" },
  elcrMask: { offset: 15, type: "u8" },
} as const;
/** `struct kvm_pic_state`: one 8259 PIC (registers and initialization state). */
export const KvmPicState: StructDef<typeof kvmPicStateFields> = defineStruct(
  "struct kvm_pic_state",
  16,
  kvmPicStateFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmIoapicStateFields = {
  baseAddress: { offset: 0, type: "u64" },
  ioregsel: { offset: 8, type: "u32" },
  id: { offset: 12, type: "u32" },
  irr: { offset: 16, type: "u32" },
  pad: { offset: 20, type: "u32" },
  /** The 24 redirection entries as raw 64-bit values; see {@linkcode decodeRedirection}. */
  redirtbl: { offset: 24, type: "u64", count: 24 },
} as const;
/** `struct kvm_ioapic_state`: the IOAPIC's registers and redirection table. */
export const KvmIoapicState: StructDef<typeof kvmIoapicStateFields> = defineStruct(
  "struct kvm_ioapic_state",
  216,
  kvmIoapicStateFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmIrqchipFields = {
  chipId: { offset: 0, type: "u32" },
  pad: { offset: 4, type: "u32" },
  /** The chip as a PIC (chip ids 0 and 1): a view of the same bytes as `ioapic`. */
  pic: { offset: 8, type: KvmPicState, c: "chip.pic" },
  /** The chip as the IOAPIC (chip id 2): a view of the same bytes as `pic`. */
  ioapic: { offset: 8, type: KvmIoapicState, c: "chip.ioapic" },
  dummy: { offset: 8, type: "u8", count: 512, c: "chip.dummy" },
} as const;
/**
 * `struct kvm_irqchip`: one chip's state for `KVM_GET_IRQCHIP`/`KVM_SET_IRQCHIP`;
 * `pic` and `ioapic` are typed views of the union, pick by `chipId`.
 */
export const KvmIrqchip: StructDef<typeof kvmIrqchipFields> = defineStruct(
  "struct kvm_irqchip",
  520,
  kvmIrqchipFields,
);

/** A decoded IOAPIC redirection-table entry (Intel 82093AA, IOREDTBL). */
export interface IoapicRedirection {
  /** Interrupt vector (bits 0-7). */
  vector: number;
  /** Delivery mode (bits 8-10): 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT. */
  deliveryMode: number;
  /** Destination mode (bit 11): false physical, true logical. */
  logicalDestination: boolean;
  /** Delivery status (bit 12, read only). */
  deliveryPending: boolean;
  /** Polarity (bit 13): true for active low. */
  activeLow: boolean;
  /** Remote IRR (bit 14, read only): a level interrupt was accepted and not yet EOIed. */
  remoteIrr: boolean;
  /** Trigger mode (bit 15): true for level. */
  levelTriggered: boolean;
  /** Mask (bit 16). */
  masked: boolean;
  /** Destination APIC id or logical set (bits 56-63). */
  destination: number;
}

/** Decodes a raw `redirtbl` entry (`union kvm_ioapic_state.redirtbl[i].fields`). */
export function decodeRedirection(bits: bigint): IoapicRedirection {
  const low = Number(bits & 0xffffffffn);
  return {
    vector: low & 0xff,
    deliveryMode: (low >> 8) & 7,
    logicalDestination: (low & (1 << 11)) !== 0,
    deliveryPending: (low & (1 << 12)) !== 0,
    activeLow: (low & (1 << 13)) !== 0,
    remoteIrr: (low & (1 << 14)) !== 0,
    levelTriggered: (low & (1 << 15)) !== 0,
    masked: (low & (1 << 16)) !== 0,
    destination: Number(bits >> 56n),
  };
}

/** Encodes a redirection entry; omitted fields are 0 (fixed, physical, edge, unmasked). */
export function encodeRedirection(entry: Partial<IoapicRedirection> & { vector: number }): bigint {
  const low = (entry.vector & 0xff) | ((entry.deliveryMode ?? 0) & 7) << 8 |
    (entry.logicalDestination ? 1 << 11 : 0) | (entry.deliveryPending ? 1 << 12 : 0) |
    (entry.activeLow ? 1 << 13 : 0) | (entry.remoteIrr ? 1 << 14 : 0) |
    (entry.levelTriggered ? 1 << 15 : 0) | (entry.masked ? 1 << 16 : 0);
  return BigInt(low >>> 0) | BigInt((entry.destination ?? 0) & 0xff) << 56n;
}

/** Field layout (offsets and types) of the struct codec below. */
export const kvmIrqLevelFields = {
  irq: { offset: 0, type: "u32" },
  /** Out of `KVM_IRQ_LINE_STATUS`: the same bytes as `irq`. */
  status: { offset: 0, type: "i32" },
  level: { offset: 4, type: "u32" },
} as const;
/** `struct kvm_irq_level`: a GSI and the level to drive it to. */
export const KvmIrqLevel: StructDef<typeof kvmIrqLevelFields> = defineStruct(
  "struct kvm_irq_level",
  8,
  kvmIrqLevelFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmMsiFields = {
  addressLo: { offset: 0, type: "u32" },
  addressHi: { offset: 4, type: "u32" },
  data: { offset: 8, type: "u32" },
  flags: { offset: 12, type: "u32" },
  devid: { offset: 16, type: "u32" },
  pad: { offset: 20, type: "u8", count: 12 },
} as const;
/** `struct kvm_msi`: one message-signalled interrupt for `KVM_SIGNAL_MSI`. */
export const KvmMsi: StructDef<typeof kvmMsiFields> = defineStruct(
  "struct kvm_msi",
  32,
  kvmMsiFields,
);
