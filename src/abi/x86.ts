/**
 * Codecs of the x86 register-state structs (`<asm/kvm.h>`).
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Field layout (offsets and types) of the struct codec below. */
export const kvmRegsFields = {
  rax: { offset: 0, type: "u64" },
  rbx: { offset: 8, type: "u64" },
  rcx: { offset: 16, type: "u64" },
  rdx: { offset: 24, type: "u64" },
  rsi: { offset: 32, type: "u64" },
  rdi: { offset: 40, type: "u64" },
  rsp: { offset: 48, type: "u64" },
  rbp: { offset: 56, type: "u64" },
  r8: { offset: 64, type: "u64" },
  r9: { offset: 72, type: "u64" },
  r10: { offset: 80, type: "u64" },
  r11: { offset: 88, type: "u64" },
  r12: { offset: 96, type: "u64" },
  r13: { offset: 104, type: "u64" },
  r14: { offset: 112, type: "u64" },
  r15: { offset: 120, type: "u64" },
  rip: { offset: 128, type: "u64" },
  rflags: { offset: 136, type: "u64" },
} as const;
/** `struct kvm_regs`: the general-purpose registers, RIP and RFLAGS. */
export const KvmRegs: StructDef<typeof kvmRegsFields> = defineStruct(
  "struct kvm_regs",
  144,
  kvmRegsFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmSegmentFields = {
  base: { offset: 0, type: "u64" },
  limit: { offset: 8, type: "u32" },
  selector: { offset: 12, type: "u16" },
  type: { offset: 14, type: "u8" },
  present: { offset: 15, type: "u8" },
  dpl: { offset: 16, type: "u8" },
  db: { offset: 17, type: "u8" },
  s: { offset: 18, type: "u8" },
  l: { offset: 19, type: "u8" },
  g: { offset: 20, type: "u8" },
  avl: { offset: 21, type: "u8" },
  unusable: { offset: 22, type: "u8" },
} as const;
/** `struct kvm_segment`: a segment register with its hidden descriptor part. */
export const KvmSegment: StructDef<typeof kvmSegmentFields> = defineStruct(
  "struct kvm_segment",
  24,
  kvmSegmentFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmDtableFields = {
  base: { offset: 0, type: "u64" },
  limit: { offset: 8, type: "u16" },
} as const;
/** `struct kvm_dtable`: the GDTR or IDTR. */
export const KvmDtable: StructDef<typeof kvmDtableFields> = defineStruct(
  "struct kvm_dtable",
  16,
  kvmDtableFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmSregsFields = {
  cs: { offset: 0, type: KvmSegment },
  ds: { offset: 24, type: KvmSegment },
  es: { offset: 48, type: KvmSegment },
  fs: { offset: 72, type: KvmSegment },
  gs: { offset: 96, type: KvmSegment },
  ss: { offset: 120, type: KvmSegment },
  tr: { offset: 144, type: KvmSegment },
  ldt: { offset: 168, type: KvmSegment },
  gdt: { offset: 192, type: KvmDtable },
  idt: { offset: 208, type: KvmDtable },
  cr0: { offset: 224, type: "u64" },
  cr2: { offset: 232, type: "u64" },
  cr3: { offset: 240, type: "u64" },
  cr4: { offset: 248, type: "u64" },
  cr8: { offset: 256, type: "u64" },
  efer: { offset: 264, type: "u64" },
  apicBase: { offset: 272, type: "u64" },
  interruptBitmap: { offset: 280, type: "u64", count: 4 },
} as const;
/** `struct kvm_sregs`: segments, descriptor tables, control registers, EFER. */
export const KvmSregs: StructDef<typeof kvmSregsFields> = defineStruct(
  "struct kvm_sregs",
  312,
  kvmSregsFields,
);
