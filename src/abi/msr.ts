/**
 * Codecs of the MSR structs (`<asm/kvm.h>`): `kvm_msrs` with its
 * `kvm_msr_entry` array, and `kvm_msr_list`. Both are variable-length: the
 * codecs cover the header and one entry, {@linkcode msrBuffer} lays out a
 * whole request.
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Field layout (offsets and types) of the struct codec below. */
export const kvmMsrEntryFields = {
  index: { offset: 0, type: "u32" },
  reserved: { offset: 4, type: "u32" },
  data: { offset: 8, type: "u64" },
} as const;
/** `struct kvm_msr_entry`: one MSR and its value. */
export const KvmMsrEntry: StructDef<typeof kvmMsrEntryFields> = defineStruct(
  "struct kvm_msr_entry",
  16,
  kvmMsrEntryFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmMsrsFields = {
  nmsrs: { offset: 0, type: "u32" },
  pad: { offset: 4, type: "u32" },
} as const;
/** `struct kvm_msrs`: the header of `KVM_GET_MSRS`/`KVM_SET_MSRS`; entries follow. */
export const KvmMsrs: StructDef<typeof kvmMsrsFields> = defineStruct(
  "struct kvm_msrs",
  8,
  kvmMsrsFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmMsrListFields = {
  nmsrs: { offset: 0, type: "u32" },
} as const;
/** `struct kvm_msr_list`: the header of `KVM_GET_MSR_INDEX_LIST`; u32 indices follow. */
export const KvmMsrList: StructDef<typeof kvmMsrListFields> = defineStruct(
  "struct kvm_msr_list",
  4,
  kvmMsrListFields,
);

/** An MSR and its value, as read or written by `getMsrs`/`setMsrs`. */
export interface MsrEntry {
  /** The MSR number, e.g. `0xc0000080` (EFER). */
  index: number;
  /** Its 64-bit value. */
  data: bigint;
}

/**
 * A `struct kvm_msrs` with `entries.length` entries: the indices (and, for
 * writes, the values) filled in. The buffer is 8-byte aligned.
 */
export function msrBuffer(entries: ArrayLike<MsrEntry | number>): Uint8Array {
  const n = entries.length;
  const size = KvmMsrs.size + n * KvmMsrEntry.size;
  const bytes = new Uint8Array(new BigUint64Array(size / 8).buffer);
  new KvmMsrs(bytes).nmsrs = n;
  for (let i = 0; i < n; i++) {
    const e = entries[i];
    const at = KvmMsrs.size + i * KvmMsrEntry.size;
    const entry = new KvmMsrEntry(bytes.subarray(at, at + KvmMsrEntry.size));
    if (typeof e === "number") entry.index = e;
    else entry.assign({ index: e.index, data: e.data });
  }
  return bytes;
}

/** The first `count` entries of a {@linkcode msrBuffer}, as plain objects. */
export function readMsrBuffer(bytes: Uint8Array, count: number): MsrEntry[] {
  const out: MsrEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = KvmMsrs.size + i * KvmMsrEntry.size;
    const entry = new KvmMsrEntry(bytes.subarray(at, at + KvmMsrEntry.size));
    out.push({ index: entry.index, data: entry.data });
  }
  return out;
}
