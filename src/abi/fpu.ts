/**
 * Codecs of the x86 floating-point and extended-state structs
 * (`<asm/kvm.h>`): `kvm_fpu`, `kvm_xsave`, `kvm_xcr`, `kvm_xcrs`.
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Field layout (offsets and types) of the struct codec below. */
export const kvmFpuFields = {
  /** The eight x87/MMX registers, 16 bytes each (80 bits used). */
  fpr: { offset: 0, type: "u8", count: 128 },
  fcw: { offset: 128, type: "u16" },
  fsw: { offset: 130, type: "u16" },
  ftwx: { offset: 132, type: "u8" },
  pad1: { offset: 133, type: "u8" },
  lastOpcode: { offset: 134, type: "u16" },
  lastIp: { offset: 136, type: "u64" },
  lastDp: { offset: 144, type: "u64" },
  /** XMM0..XMM15, 16 bytes each. */
  xmm: { offset: 152, type: "u8", count: 256 },
  mxcsr: { offset: 408, type: "u32" },
  pad2: { offset: 412, type: "u32" },
} as const;
/** `struct kvm_fpu`: x87, MMX and SSE state in FXSAVE form (`KVM_GET_FPU`). */
export const KvmFpu: StructDef<typeof kvmFpuFields> = defineStruct(
  "struct kvm_fpu",
  416,
  kvmFpuFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmXsaveFields = {
  /** The XSAVE area as the CPU lays it out (legacy region, header, components). */
  region: { offset: 0, type: "u32", count: 1024 },
} as const;
/**
 * `struct kvm_xsave`: the first 4096 bytes of the XSAVE area
 * (`KVM_GET_XSAVE`). `KVM_GET_XSAVE2` may write more: as many bytes as
 * `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` on the VM says.
 */
export const KvmXsave: StructDef<typeof kvmXsaveFields> = defineStruct(
  "struct kvm_xsave",
  4096,
  kvmXsaveFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmXcrFields = {
  xcr: { offset: 0, type: "u32" },
  reserved: { offset: 4, type: "u32" },
  value: { offset: 8, type: "u64" },
} as const;
/** `struct kvm_xcr`: one extended control register (XCR0 is number 0). */
export const KvmXcr: StructDef<typeof kvmXcrFields> = defineStruct(
  "struct kvm_xcr",
  16,
  kvmXcrFields,
);

/** The most XCRs `struct kvm_xcrs` holds (`KVM_MAX_XCRS`). */
export const KVM_MAX_XCRS = 16;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmXcrsFields = {
  nrXcrs: { offset: 0, type: "u32" },
  flags: { offset: 4, type: "u32" },
  /** `KVM_MAX_XCRS` entries of {@linkcode KvmXcr}, as raw words (16 bytes each). */
  xcrs: { offset: 8, type: "u64", count: 2 * 16 },
  padding: { offset: 264, type: "u64", count: 16 },
} as const;
/** `struct kvm_xcrs`: the extended control registers (`KVM_GET_XCRS`). */
export const KvmXcrs: StructDef<typeof kvmXcrsFields> = defineStruct(
  "struct kvm_xcrs",
  392,
  kvmXcrsFields,
);
