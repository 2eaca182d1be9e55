/**
 * Codecs of the smaller per-vCPU structs (`<linux/kvm.h>`, `<asm/kvm.h>`):
 * MP state, pending events, interrupt injection, address translation, TPR
 * access reporting, the VAPIC address, the signal mask and nested state.
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Field layout (offsets and types) of the struct codec below. */
export const kvmMpStateFields = {
  mpState: { offset: 0, type: "u32" },
} as const;
/** `struct kvm_mp_state`: the multiprocessing state (`KVM_GET_MP_STATE`). */
export const KvmMpState: StructDef<typeof kvmMpStateFields> = defineStruct(
  "struct kvm_mp_state",
  4,
  kvmMpStateFields,
);

/** Running (or ready to run). */
export const KVM_MP_STATE_RUNNABLE = 0;
/** An AP waiting for INIT. */
export const KVM_MP_STATE_UNINITIALIZED = 1;
/** INIT received, waiting for SIPI. */
export const KVM_MP_STATE_INIT_RECEIVED = 2;
/** Halted (HLT) until an interrupt. */
export const KVM_MP_STATE_HALTED = 3;
/** SIPI received. */
export const KVM_MP_STATE_SIPI_RECEIVED = 4;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmVcpuEventsFields = {
  exceptionInjected: { offset: 0, type: "u8", c: "exception.injected" },
  exceptionNr: { offset: 1, type: "u8", c: "exception.nr" },
  exceptionHasErrorCode: { offset: 2, type: "u8", c: "exception.has_error_code" },
  exceptionPending: { offset: 3, type: "u8", c: "exception.pending" },
  exceptionErrorCode: { offset: 4, type: "u32", c: "exception.error_code" },
  interruptInjected: { offset: 8, type: "u8", c: "interrupt.injected" },
  interruptNr: { offset: 9, type: "u8", c: "interrupt.nr" },
  interruptSoft: { offset: 10, type: "u8", c: "interrupt.soft" },
  interruptShadow: { offset: 11, type: "u8", c: "interrupt.shadow" },
  nmiInjected: { offset: 12, type: "u8", c: "nmi.injected" },
  nmiPending: { offset: 13, type: "u8", c: "nmi.pending" },
  nmiMasked: { offset: 14, type: "u8", c: "nmi.masked" },
  sipiVector: { offset: 16, type: "u32" },
  /** `KVM_VCPUEVENT_VALID_*`: which optional parts a set applies. */
  flags: { offset: 20, type: "u32" },
  smiSmm: { offset: 24, type: "u8", c: "smi.smm" },
  smiPending: { offset: 25, type: "u8", c: "smi.pending" },
  smiSmmInsideNmi: { offset: 26, type: "u8", c: "smi.smm_inside_nmi" },
  smiLatchedInit: { offset: 27, type: "u8", c: "smi.latched_init" },
  tripleFaultPending: { offset: 28, type: "u8", c: "triple_fault.pending" },
  exceptionHasPayload: { offset: 55, type: "u8" },
  exceptionPayload: { offset: 56, type: "u64" },
} as const;
/** `struct kvm_vcpu_events`: pending and injected exceptions, interrupts, NMI, SMI. */
export const KvmVcpuEvents: StructDef<typeof kvmVcpuEventsFields> = defineStruct(
  "struct kvm_vcpu_events",
  64,
  kvmVcpuEventsFields,
);

/** `nmiPending` is valid on set. */
export const KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1;
/** `sipiVector` is valid on set. */
export const KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2;
/** `interruptShadow` is valid on set. */
export const KVM_VCPUEVENT_VALID_SHADOW = 0x4;
/** The `smi*` fields are valid on set. */
export const KVM_VCPUEVENT_VALID_SMM = 0x8;
/** The exception payload fields are valid (with `KVM_CAP_EXCEPTION_PAYLOAD`). */
export const KVM_VCPUEVENT_VALID_PAYLOAD = 0x10;
/** `tripleFaultPending` is valid (with `KVM_CAP_X86_TRIPLE_FAULT_EVENT`). */
export const KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmInterruptFields = {
  irq: { offset: 0, type: "u32" },
} as const;
/** `struct kvm_interrupt`: the vector `KVM_INTERRUPT` injects. */
export const KvmInterrupt: StructDef<typeof kvmInterruptFields> = defineStruct(
  "struct kvm_interrupt",
  4,
  kvmInterruptFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmTranslationFields = {
  linearAddress: { offset: 0, type: "u64" },
  physicalAddress: { offset: 8, type: "u64" },
  valid: { offset: 16, type: "u8" },
  writeable: { offset: 17, type: "u8" },
  usermode: { offset: 18, type: "u8" },
  pad: { offset: 19, type: "u8", count: 5 },
} as const;
/** `struct kvm_translation`: a guest virtual address and what it maps to (`KVM_TRANSLATE`). */
export const KvmTranslation: StructDef<typeof kvmTranslationFields> = defineStruct(
  "struct kvm_translation",
  24,
  kvmTranslationFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmTprAccessCtlFields = {
  enabled: { offset: 0, type: "u32" },
  flags: { offset: 4, type: "u32" },
  reserved: { offset: 8, type: "u32", count: 8 },
} as const;
/** `struct kvm_tpr_access_ctl`: turns `KVM_EXIT_TPR_ACCESS` reporting on or off. */
export const KvmTprAccessCtl: StructDef<typeof kvmTprAccessCtlFields> = defineStruct(
  "struct kvm_tpr_access_ctl",
  40,
  kvmTprAccessCtlFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmVapicAddrFields = {
  vapicAddr: { offset: 0, type: "u64" },
} as const;
/** `struct kvm_vapic_addr`: the guest physical address of the virtual APIC page. */
export const KvmVapicAddr: StructDef<typeof kvmVapicAddrFields> = defineStruct(
  "struct kvm_vapic_addr",
  8,
  kvmVapicAddrFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmSignalMaskFields = {
  len: { offset: 0, type: "u32" },
} as const;
/** `struct kvm_signal_mask`: the header; `len` bytes of the kernel's sigset follow. */
export const KvmSignalMask: StructDef<typeof kvmSignalMaskFields> = defineStruct(
  "struct kvm_signal_mask",
  4,
  kvmSignalMaskFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmNestedStateFields = {
  /** `KVM_STATE_NESTED_*`. */
  flags: { offset: 0, type: "u16" },
  /** `KVM_STATE_NESTED_FORMAT_VMX` or `_SVM`. */
  format: { offset: 2, type: "u16" },
  /** Bytes of the whole state, header and data. */
  size: { offset: 4, type: "u32" },
  vmxVmxonPa: { offset: 8, type: "u64", c: "hdr.vmx.vmxon_pa" },
  vmxVmcs12Pa: { offset: 16, type: "u64", c: "hdr.vmx.vmcs12_pa" },
  vmxSmmFlags: { offset: 24, type: "u16", c: "hdr.vmx.smm.flags" },
  vmxFlags: { offset: 28, type: "u32", c: "hdr.vmx.flags" },
  vmxPreemptionTimerDeadline: {
    offset: 32,
    type: "u64",
    c: "hdr.vmx.preemption_timer_deadline",
  },
  svmVmcbPa: { offset: 8, type: "u64", c: "hdr.svm.vmcb_pa" },
} as const;
/**
 * `struct kvm_nested_state`: the 128-byte header of a nested-virtualization
 * state (`KVM_GET_NESTED_STATE`); `size - 128` bytes of VMCS12/VMCB12 follow.
 */
export const KvmNestedState: StructDef<typeof kvmNestedStateFields> = defineStruct(
  "struct kvm_nested_state",
  128,
  kvmNestedStateFields,
);

/** Nested state format of Intel VMX. */
export const KVM_STATE_NESTED_FORMAT_VMX = 0;
/** Nested state format of AMD SVM. */
export const KVM_STATE_NESTED_FORMAT_SVM = 1;
/** The vCPU was running a nested guest. */
export const KVM_STATE_NESTED_GUEST_MODE = 0x1;
/** A nested VM entry was pending. */
export const KVM_STATE_NESTED_RUN_PENDING = 0x2;
/** SVM's global interrupt flag was set. */
export const KVM_STATE_NESTED_GIF_SET = 0x100;
