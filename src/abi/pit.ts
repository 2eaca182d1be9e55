/**
 * Codecs of the in-kernel i8254 PIT structs (`<linux/kvm.h>`, `<asm/kvm.h>`).
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** `KVM_CREATE_PIT2` flag: a dummy speaker port 0x61 in the kernel (`KVM_PIT_SPEAKER_DUMMY`). */
export const KVM_PIT_SPEAKER_DUMMY = 1;
/** `kvm_pit_state2.flags`: the HPET runs in legacy mode, the PIT is disabled. */
export const KVM_PIT_FLAGS_HPET_LEGACY = 1;
/** `kvm_pit_state2.flags`: the speaker data bit (port 0x61 bit 1) is on. */
export const KVM_PIT_FLAGS_SPEAKER_DATA_ON = 2;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmPitConfigFields = {
  flags: { offset: 0, type: "u32" },
  pad: { offset: 4, type: "u32", count: 15 },
} as const;
/** `struct kvm_pit_config`: the argument of `KVM_CREATE_PIT2`. */
export const KvmPitConfig: StructDef<typeof kvmPitConfigFields> = defineStruct(
  "struct kvm_pit_config",
  64,
  kvmPitConfigFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmPitChannelStateFields = {
  count: { offset: 0, type: "u32" },
  latchedCount: { offset: 4, type: "u16" },
  countLatched: { offset: 6, type: "u8" },
  statusLatched: { offset: 7, type: "u8" },
  status: { offset: 8, type: "u8" },
  readState: { offset: 9, type: "u8" },
  writeState: { offset: 10, type: "u8" },
  writeLatch: { offset: 11, type: "u8" },
  rwMode: { offset: 12, type: "u8" },
  mode: { offset: 13, type: "u8" },
  bcd: { offset: 14, type: "u8" },
  gate: { offset: 15, type: "u8" },
  countLoadTime: { offset: 16, type: "i64" },
} as const;
/** `struct kvm_pit_channel_state`: one of the PIT's three counters. */
export const KvmPitChannelState: StructDef<typeof kvmPitChannelStateFields> = defineStruct(
  "struct kvm_pit_channel_state",
  24,
  kvmPitChannelStateFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmPitState2Fields = {
  channel0: { offset: 0, type: KvmPitChannelState, c: "channels[0]" },
  channel1: { offset: 24, type: KvmPitChannelState, c: "channels[1]" },
  channel2: { offset: 48, type: KvmPitChannelState, c: "channels[2]" },
  flags: { offset: 72, type: "u32" },
  reserved: { offset: 76, type: "u32", count: 9 },
} as const;
/** `struct kvm_pit_state2`: the three channels (`channels[i]` is `channel<i>`) and flags. */
export const KvmPitState2: StructDef<typeof kvmPitState2Fields> = defineStruct(
  "struct kvm_pit_state2",
  112,
  kvmPitState2Fields,
);
