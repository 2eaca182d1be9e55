/**
 * Codec of `struct kvm_run`, the area shared with the kernel through mmap of a
 * vCPU fd. The exit data is a union; its members are flattened here into
 * prefixed fields (`ioPort` is `io.port`), which lets the ABI probe check each
 * one and lets the run loop read them through a single `DataView`.
 *
 * @module
 */

import { defineStruct, type Struct, type StructDef } from "./struct.ts";

/** Offset of the exit-data union inside `struct kvm_run`. */
const U = 32;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmRunFields = {
  requestInterruptWindow: { offset: 0, type: "u8" },
  immediateExit: { offset: 1, type: "u8" },
  exitReason: { offset: 8, type: "u32" },
  readyForInterruptInjection: { offset: 12, type: "u8" },
  ifFlag: { offset: 13, type: "u8" },
  flags: { offset: 14, type: "u16" },
  cr8: { offset: 16, type: "u64" },
  apicBase: { offset: 24, type: "u64" },

  hwHardwareExitReason: { offset: U, type: "u64", c: "hw.hardware_exit_reason" },
  failEntryReason: { offset: U, type: "u64", c: "fail_entry.hardware_entry_failure_reason" },
  failEntryCpu: { offset: U + 8, type: "u32", c: "fail_entry.cpu" },
  exException: { offset: U, type: "u32", c: "ex.exception" },
  exErrorCode: { offset: U + 4, type: "u32", c: "ex.error_code" },
  ioDirection: { offset: U, type: "u8", c: "io.direction" },
  ioSize: { offset: U + 1, type: "u8", c: "io.size" },
  ioPort: { offset: U + 2, type: "u16", c: "io.port" },
  ioCount: { offset: U + 4, type: "u32", c: "io.count" },
  ioDataOffset: { offset: U + 8, type: "u64", c: "io.data_offset" },
  debugException: { offset: U, type: "u32", c: "debug.arch.exception" },
  debugPc: { offset: U + 8, type: "u64", c: "debug.arch.pc" },
  debugDr6: { offset: U + 16, type: "u64", c: "debug.arch.dr6" },
  debugDr7: { offset: U + 24, type: "u64", c: "debug.arch.dr7" },
  mmioPhysAddr: { offset: U, type: "u64", c: "mmio.phys_addr" },
  mmioData: { offset: U + 8, type: "u8", count: 8, c: "mmio.data" },
  mmioLen: { offset: U + 16, type: "u32", c: "mmio.len" },
  mmioIsWrite: { offset: U + 20, type: "u8", c: "mmio.is_write" },
  hypercallNr: { offset: U, type: "u64", c: "hypercall.nr" },
  hypercallArgs: { offset: U + 8, type: "u64", count: 6, c: "hypercall.args" },
  hypercallRet: { offset: U + 56, type: "u64", c: "hypercall.ret" },
  hypercallLongmode: { offset: U + 64, type: "u32", c: "hypercall.longmode" },
  tprAccessRip: { offset: U, type: "u64", c: "tpr_access.rip" },
  tprAccessIsWrite: { offset: U + 8, type: "u32", c: "tpr_access.is_write" },
  internalSuberror: { offset: U, type: "u32", c: "internal.suberror" },
  internalNdata: { offset: U + 4, type: "u32", c: "internal.ndata" },
  internalData: { offset: U + 8, type: "u64", count: 16, c: "internal.data" },
  systemEventType: { offset: U, type: "u32", c: "system_event.type" },
  systemEventNdata: { offset: U + 4, type: "u32", c: "system_event.ndata" },
  systemEventData: { offset: U + 8, type: "u64", count: 16, c: "system_event.data" },
  eoiVector: { offset: U, type: "u8", c: "eoi.vector" },
  msrError: { offset: U, type: "u8", c: "msr.error" },
  msrReason: { offset: U + 8, type: "u32", c: "msr.reason" },
  msrIndex: { offset: U + 12, type: "u32", c: "msr.index" },
  msrData: { offset: U + 16, type: "u64", c: "msr.data" },
  notifyFlags: { offset: U, type: "u32", c: "notify.flags" },

  kvmValidRegs: { offset: 288, type: "u64" },
  kvmDirtyRegs: { offset: 296, type: "u64" },
} as const;
/** `struct kvm_run` (x86-64), flattened. */
export const KvmRun: StructDef<typeof kvmRunFields> = defineStruct(
  "struct kvm_run",
  2352,
  kvmRunFields,
);

/** A `struct kvm_run` codec instance, such as a vCPU's shared run area. */
export type RunArea = Struct<typeof kvmRunFields>;

/** `KVM_EXIT_*` exit reasons. */
export const ExitReason = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
  IOAPIC_EOI: 26,
  HYPERV: 27,
  X86_RDMSR: 29,
  X86_WRMSR: 30,
  DIRTY_RING_FULL: 31,
  AP_RESET_HOLD: 32,
  X86_BUS_LOCK: 33,
  XEN: 34,
  NOTIFY: 37,
  MEMORY_FAULT: 39,
} as const;
