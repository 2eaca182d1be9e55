/**
 * Codec of `struct kvm_lapic_state` (`<asm/kvm.h>`) and the local APIC's
 * register offsets (Intel SDM vol. 3, "Local APIC Register Address Map").
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Bytes of the LAPIC register page that KVM saves (`KVM_APIC_REG_SIZE`). */
export const KVM_APIC_REG_SIZE = 0x400;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmLapicStateFields = {
  /** The register page: each 32-bit register at its MMIO offset (16-byte stride). */
  regs: { offset: 0, type: "u8", count: 0x400 },
} as const;
/** `struct kvm_lapic_state`: the in-kernel local APIC's registers (`KVM_GET_LAPIC`). */
export const KvmLapicState: StructDef<typeof kvmLapicStateFields> = defineStruct(
  "struct kvm_lapic_state",
  0x400,
  kvmLapicStateFields,
);

/** Offsets of the local APIC registers in the register page. */
export const ApicReg = {
  /** APIC ID (bits 24-31 in xAPIC mode). */
  ID: 0x20,
  /** Version and max LVT entry. */
  VERSION: 0x30,
  /** Task priority. */
  TPR: 0x80,
  /** Arbitration priority. */
  APR: 0x90,
  /** Processor priority. */
  PPR: 0xa0,
  /** End of interrupt. */
  EOI: 0xb0,
  /** Logical destination. */
  LDR: 0xd0,
  /** Destination format. */
  DFR: 0xe0,
  /** Spurious interrupt vector (bit 8: APIC software enable). */
  SPIV: 0xf0,
  /** In-service register, 8 words. */
  ISR: 0x100,
  /** Trigger mode register, 8 words. */
  TMR: 0x180,
  /** Interrupt request register, 8 words. */
  IRR: 0x200,
  /** Error status. */
  ESR: 0x280,
  /** LVT corrected machine check interrupt. */
  LVT_CMCI: 0x2f0,
  /** Interrupt command, low word. */
  ICR_LOW: 0x300,
  /** Interrupt command, high word (destination). */
  ICR_HIGH: 0x310,
  /** LVT timer. */
  LVT_TIMER: 0x320,
  /** LVT thermal sensor. */
  LVT_THERMAL: 0x330,
  /** LVT performance counter. */
  LVT_PERF: 0x340,
  /** LVT LINT0. */
  LVT_LINT0: 0x350,
  /** LVT LINT1. */
  LVT_LINT1: 0x360,
  /** LVT error. */
  LVT_ERROR: 0x370,
  /** Timer initial count. */
  TIMER_INITIAL_COUNT: 0x380,
  /** Timer current count. */
  TIMER_CURRENT_COUNT: 0x390,
  /** Timer divide configuration. */
  TIMER_DIVIDE: 0x3e0,
} as const;

/** The LVT entries by name, for `Lapic.lvt()`. */
export type LvtName = "timer" | "thermal" | "perf" | "lint0" | "lint1" | "error" | "cmci";

/** Offset of each LVT entry. */
export const LVT_OFFSETS: Readonly<Record<LvtName, number>> = {
  timer: ApicReg.LVT_TIMER,
  thermal: ApicReg.LVT_THERMAL,
  perf: ApicReg.LVT_PERF,
  lint0: ApicReg.LVT_LINT0,
  lint1: ApicReg.LVT_LINT1,
  error: ApicReg.LVT_ERROR,
  cmci: ApicReg.LVT_CMCI,
};

/** The default physical address of the xAPIC MMIO page. */
export const APIC_DEFAULT_BASE = 0xfee00000;
/** IA32_APIC_BASE bit 8: this CPU is the bootstrap processor. */
export const APIC_BASE_BSP = 1n << 8n;
/** IA32_APIC_BASE bit 10: x2APIC mode. */
export const APIC_BASE_X2APIC = 1n << 10n;
/** IA32_APIC_BASE bit 11: the APIC is enabled. */
export const APIC_BASE_ENABLE = 1n << 11n;
