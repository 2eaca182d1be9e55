/**
 * Codecs of the x86 debug structs (`<asm/kvm.h>`, `<linux/kvm.h>`):
 * `kvm_debugregs` and `kvm_guest_debug`, with the `KVM_GUESTDBG_*` flags.
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Field layout (offsets and types) of the struct codec below. */
export const kvmDebugregsFields = {
  /** DR0..DR3: breakpoint addresses. */
  db: { offset: 0, type: "u64", count: 4 },
  dr6: { offset: 32, type: "u64" },
  dr7: { offset: 40, type: "u64" },
  flags: { offset: 48, type: "u64" },
  reserved: { offset: 56, type: "u64", count: 9 },
} as const;
/** `struct kvm_debugregs`: the guest's own debug registers (`KVM_GET_DEBUGREGS`). */
export const KvmDebugregs: StructDef<typeof kvmDebugregsFields> = defineStruct(
  "struct kvm_debugregs",
  128,
  kvmDebugregsFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmGuestDebugFields = {
  /** `KVM_GUESTDBG_*` flags. */
  control: { offset: 0, type: "u32" },
  pad: { offset: 4, type: "u32" },
  /** DR0..DR7 as the debugger wants them (DR4/DR5 unused). */
  debugreg: { offset: 8, type: "u64", count: 8, c: "arch.debugreg" },
} as const;
/** `struct kvm_guest_debug`: host-side debugging of the guest (`KVM_SET_GUEST_DEBUG`). */
export const KvmGuestDebug: StructDef<typeof kvmGuestDebugFields> = defineStruct(
  "struct kvm_guest_debug",
  72,
  kvmGuestDebugFields,
);

/** Guest debugging on. */
export const KVM_GUESTDBG_ENABLE = 0x00000001;
/** Exit after every instruction. */
export const KVM_GUESTDBG_SINGLESTEP = 0x00000002;
/** Intercept #BP (`int3`) as a debug exit. */
export const KVM_GUESTDBG_USE_SW_BP = 0x00010000;
/** Use `debugreg` as hardware breakpoints. */
export const KVM_GUESTDBG_USE_HW_BP = 0x00020000;
/** Inject #DB into the guest. */
export const KVM_GUESTDBG_INJECT_DB = 0x00040000;
/** Inject #BP into the guest. */
export const KVM_GUESTDBG_INJECT_BP = 0x00080000;
/** Block interrupts while single-stepping. */
export const KVM_GUESTDBG_BLOCKIRQ = 0x00100000;
