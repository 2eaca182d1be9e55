/**
 * Codecs of the CPUID structs (`<asm/kvm.h>`): `kvm_cpuid2` with its
 * `kvm_cpuid_entry2` array. Variable-length: the codecs cover the header and
 * one entry, {@linkcode cpuidBuffer} and {@linkcode readCpuidBuffer} convert a
 * whole list.
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** Field layout (offsets and types) of the struct codec below. */
export const kvmCpuidEntry2Fields = {
  function: { offset: 0, type: "u32" },
  index: { offset: 4, type: "u32" },
  flags: { offset: 8, type: "u32" },
  eax: { offset: 12, type: "u32" },
  ebx: { offset: 16, type: "u32" },
  ecx: { offset: 20, type: "u32" },
  edx: { offset: 24, type: "u32" },
  padding: { offset: 28, type: "u32", count: 3 },
} as const;
/** `struct kvm_cpuid_entry2`: one CPUID leaf (and subleaf) and its four registers. */
export const KvmCpuidEntry2: StructDef<typeof kvmCpuidEntry2Fields> = defineStruct(
  "struct kvm_cpuid_entry2",
  40,
  kvmCpuidEntry2Fields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmCpuid2Fields = {
  nent: { offset: 0, type: "u32" },
  padding: { offset: 4, type: "u32" },
} as const;
/** `struct kvm_cpuid2`: the header of a CPUID list; `nent` entries follow. */
export const KvmCpuid2: StructDef<typeof kvmCpuid2Fields> = defineStruct(
  "struct kvm_cpuid2",
  8,
  kvmCpuid2Fields,
);

/** The entry's `index` (subleaf, ECX on input) matters. */
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0;
/** Old stateful leaf (leaf 2 on old CPUs). */
export const KVM_CPUID_FLAG_STATEFUL_FUNC = 1 << 1;
/** Old stateful leaf: this entry is read next. */
export const KVM_CPUID_FLAG_STATE_READ_NEXT = 1 << 2;

/**
 * The most CPUID entries the kernel accepts in one list
 * (`KVM_MAX_CPUID_ENTRIES` in the kernel's `arch/x86/include/asm/kvm_host.h`).
 */
export const MAX_CPUID_ENTRIES = 256;

/** One CPUID leaf as a plain object. */
export interface CpuidEntry {
  /** The leaf (EAX on input). */
  function: number;
  /** The subleaf (ECX on input); meaningful with `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`. */
  index: number;
  /** `KVM_CPUID_FLAG_*`. */
  flags: number;
  /** EAX output. */
  eax: number;
  /** EBX output. */
  ebx: number;
  /** ECX output. */
  ecx: number;
  /** EDX output. */
  edx: number;
}

/** A `struct kvm_cpuid2` with room for `capacity` entries, holding `entries`. */
export function cpuidBuffer(entries: readonly CpuidEntry[], capacity = entries.length): Uint8Array {
  const size = KvmCpuid2.size + capacity * KvmCpuidEntry2.size;
  const bytes = new Uint8Array(new BigUint64Array(size / 8).buffer);
  new KvmCpuid2(bytes).nent = Math.max(capacity, entries.length);
  entries.forEach((e, i) => {
    const at = KvmCpuid2.size + i * KvmCpuidEntry2.size;
    new KvmCpuidEntry2(bytes.subarray(at, at + KvmCpuidEntry2.size)).assign({
      function: e.function,
      index: e.index,
      flags: e.flags,
      eax: e.eax,
      ebx: e.ebx,
      ecx: e.ecx,
      edx: e.edx,
    });
  });
  return bytes;
}

/**
 * Fills every entry slot of a {@linkcode cpuidBuffer} with all-ones bytes: a
 * marker for the slots the kernel did not write. (`KVM_GET_CPUID2` of Linux
 * before 6.2 leaves `nent` unchanged on success, so the marker is how the
 * reader finds the end.)
 */
export function markCpuidSlots(bytes: Uint8Array): Uint8Array {
  bytes.fill(0xff, KvmCpuid2.size);
  return bytes;
}

function isMarker(entry: Uint8Array): boolean {
  return entry.every((b) => b === 0xff);
}

/**
 * The entries of a `struct kvm_cpuid2` buffer: as many as its `nent` says,
 * stopping early at a slot still holding the {@linkcode markCpuidSlots} marker.
 */
export function readCpuidBuffer(bytes: Uint8Array): CpuidEntry[] {
  const n = new KvmCpuid2(bytes).nent;
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = KvmCpuid2.size + i * KvmCpuidEntry2.size;
    if (at + KvmCpuidEntry2.size > bytes.length) break;
    const raw = bytes.subarray(at, at + KvmCpuidEntry2.size);
    if (isMarker(raw)) break;
    const e = new KvmCpuidEntry2(raw);
    out.push({
      function: e.function,
      index: e.index,
      flags: e.flags,
      eax: e.eax,
      ebx: e.ebx,
      ecx: e.ecx,
      edx: e.edx,
    });
  }
  return out;
}
