/**
 * The KVM ABI: one codec per kernel struct, the ioctl request numbers and the
 * kernel's constants (`KVM_IRQCHIP_*`, `KVM_PIT_*`, exit reasons, MSR indices,
 * ...). Every size, offset, ioctl number and constant here is checked against
 * `<linux/kvm.h>` by the ABI probe test. Most programs need only the core
 * entry (`@deno-kvm/kvm`); import this one to build or read raw kernel
 * structs, or to call an ioctl the core does not wrap.
 *
 * @example
 * ```ts
 * import { encodeRedirection, Ioctl, KVM_IRQCHIP_IOAPIC } from "@deno-kvm/kvm/abi";
 *
 * console.log(Ioctl.KVM_RUN.toString(16), KVM_IRQCHIP_IOAPIC);
 * console.log(encodeRedirection({ vector: 0x30 }));
 * ```
 *
 * @module
 */

export * as Ioctl from "./ioctls.ts";
// RunArea (the run area codec's type) is exported by the core entry, with Vcpu.runArea.
export { ExitReason, KvmRun, kvmRunFields } from "./kvm_run.ts";
export * from "./x86.ts";
export * from "./memory.ts";
export type {
  AnyStructDef,
  ArrayFor,
  Assignable,
  FieldDef,
  Fields,
  FieldValue,
  Plain,
  ReadonlyKeys,
  Scalar,
  Struct,
  StructBase,
  StructDef,
} from "./struct.ts";
export * from "./irqchip.ts";
export * from "./pit.ts";
export * from "./irq_routing.ts";
export * from "./eventfd.ts";
export * from "./coalesced.ts";
export * from "./dirty_log.ts";
export * from "./dirty_ring.ts";
export * from "./clock.ts";
export * from "./device.ts";
export * from "./enable_cap.ts";
export { KVM_CAP_USER_MEMORY2 } from "./memory2.ts";
export * from "./fpu.ts";
export * from "./debug.ts";
export * from "./msr.ts";
export * from "./cpuid.ts";
export * from "./lapic.ts";
export * from "./vcpu_state.ts";
