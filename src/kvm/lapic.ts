/**
 * A view of the in-kernel local APIC's registers, as `Vcpu.getLapic()`
 * returns them, with helpers for the registers a VMM touches.
 *
 * @module
 */

import { ApicReg, KVM_APIC_REG_SIZE, LVT_OFFSETS, type LvtName } from "../abi/lapic.ts";
import { KvmLapicState } from "../abi/lapic.ts";
import { Errno, KvmError } from "../errors.ts";
import { hex } from "./constants.ts";
import { bits32, u8 } from "./validate.ts";

/** LVT bit 16: the entry is masked. */
export const LVT_MASKED = 1 << 16;

/**
 * `struct kvm_lapic_state` with register access by offset (the APIC's MMIO
 * offsets: TPR is `0x80`). Reads and writes go to this buffer only; pass it
 * to `Vcpu.setLapic` to apply them.
 *
 * @example
 * ```ts
 * import { Kvm } from "@deno-kvm/kvm";
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * vm.createIrqchip();
 * const vcpu = vm.createVcpu(0);
 * const lapic = vcpu.getLapic();
 * lapic.tpr = 0x20;
 * lapic.setLvt("lint0", 0x700); // ExtINT
 * vcpu.setLapic(lapic);
 * ```
 */
export class Lapic {
  /** The raw `struct kvm_lapic_state` codec (1024 bytes). */
  readonly state: InstanceType<typeof KvmLapicState>;
  #view: DataView;

  /** Wraps `bytes` (at least 1024 of them), or fresh zeroed memory. */
  constructor(bytes?: Uint8Array) {
    this.state = new KvmLapicState(bytes);
    this.#view = this.state.view;
  }

  /** The 1024 bytes, as passed to the kernel. */
  get bytes(): Uint8Array {
    return this.state.bytes;
  }

  /** The 32-bit register at `offset` (16-byte aligned, below 0x400). */
  read(offset: number): number {
    return this.#view.getUint32(checkOffset(offset), true);
  }

  /** Sets the 32-bit register at `offset` in this buffer. */
  write(offset: number, value: number): void {
    this.#view.setUint32(checkOffset(offset), bits32(OP, "value", value), true);
  }

  /** The APIC ID (bits 24-31 of the ID register in xAPIC mode). */
  get id(): number {
    return this.read(ApicReg.ID) >>> 24;
  }

  /** The task priority register (TPR, offset 0x80). */
  get tpr(): number {
    return this.read(ApicReg.TPR) & 0xff;
  }
  set tpr(value: number) {
    this.write(ApicReg.TPR, u8(OP, "tpr", value));
  }

  /** The spurious-interrupt vector register; bit 8 enables the APIC in software. */
  get spuriousVector(): number {
    return this.read(ApicReg.SPIV);
  }
  set spuriousVector(value: number) {
    this.write(ApicReg.SPIV, value);
  }

  /** An LVT entry (vector, delivery mode, mask bit 16...). */
  lvt(name: LvtName): number {
    return this.read(lvtOffset(name));
  }

  /** Sets an LVT entry. */
  setLvt(name: LvtName, value: number): void {
    this.write(lvtOffset(name), value);
  }

  /** Whether bit `vector` is set in the 256-bit register at `offset` (IRR, ISR, TMR). */
  vectorBit(offset: number, vector: number): boolean {
    u8(OP, "vector", vector);
    return ((this.read(offset + (vector >>> 5) * 0x10) >>> (vector & 31)) & 1) === 1;
  }
}

const OP = "LAPIC register access";

function checkOffset(offset: number): number {
  if (!Number.isInteger(offset) || offset < 0 || offset >= KVM_APIC_REG_SIZE || offset % 16) {
    throw new KvmError(
      "LAPIC register access",
      Errno.EINVAL,
      `offset ${hex(offset)} is not a 16-byte aligned register below ${hex(KVM_APIC_REG_SIZE)}`,
    );
  }
  return offset;
}

function lvtOffset(name: LvtName): number {
  const offset = LVT_OFFSETS[name];
  if (offset === undefined) {
    throw new KvmError(
      "LAPIC register access",
      Errno.EINVAL,
      `unknown LVT entry ${name} (one of ${Object.keys(LVT_OFFSETS).join(", ")})`,
    );
  }
  return offset;
}
