/**
 * The parts of a PC BIOS that guests written for QEMU (SeaBIOS) rely on and
 * that a firmware-less VMM does itself:
 *
 * - {@linkcode programPicsLikeBios}: the 8259 pair initialised as a BIOS
 *   leaves it, IRQs 0-7 at vectors 0x08-0x0f and IRQs 8-15 at 0x70-0x77
 *   (kvm-unit-tests' `realmode` takes IRQ 11 at vector 0x73).
 * - S3 resume: {@linkcode facsWakingVector} reads the waking vector the guest
 *   put in the FACS before it slept, {@linkcode resumeAtWakingVector} puts
 *   the bootstrap vCPU where a BIOS's resume path leaves it (real mode at
 *   that vector, APIC reset), and {@linkcode rtcAlarmDelayMs} says when the
 *   CMOS alarm, the usual wake event, fires.
 *
 * @example
 * ```ts
 * import { rtcAlarmDelayMs } from "@deno-kvm/kvm/vmm";
 * // Alarm registers "don't care" (0xc0-0xff): it fires at the next second.
 * const now = new Date(Date.UTC(2026, 0, 1, 12, 0, 0, 250));
 * console.log(rtcAlarmDelayMs(now, { seconds: 0xc0, minutes: 0xc0, hours: 0xc0 })); // 750
 * ```
 *
 * @module
 */

import { KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE } from "../abi/irqchip.ts";
import {
  APIC_BASE_BSP,
  APIC_BASE_ENABLE,
  APIC_DEFAULT_BASE,
  ApicReg,
  LVT_OFFSETS,
} from "../abi/lapic.ts";
import {
  KVM_MP_STATE_RUNNABLE,
  KVM_VCPUEVENT_VALID_NMI_PENDING,
  KVM_VCPUEVENT_VALID_SHADOW,
  KVM_VCPUEVENT_VALID_SMM,
} from "../abi/vcpu_state.ts";
import type { Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import { ACPI_FACS_WAKING_VECTOR_OFFSET } from "./acpi.ts";

/** The master PIC's vector base a PC BIOS programs (IRQ 0 = vector 8). */
export const BIOS_PIC_MASTER_BASE = 0x08;
/** The slave PIC's vector base a PC BIOS programs (IRQ 8 = vector 0x70). */
export const BIOS_PIC_SLAVE_BASE = 0x70;

/**
 * Programs the in-kernel PIC pair as a BIOS's ICW1-ICW4 sequence leaves it:
 * vector bases 0x08 and 0x70, initialisation complete (ICW4 given, 8086
 * mode, no auto-EOI), nothing pending or in service. The mask stays
 * all-clear, KVM's power-on value: nothing drives a line unless the guest
 * asked a device to, and a guest that programs the PICs itself (Linux,
 * kvm-unit-tests' `lib/x86`) overrides all of it. Needs the irqchip
 * (`Vm.createIrqchip`).
 */
export function programPicsLikeBios(vm: Vm): void {
  for (
    const [chipId, base] of [
      [KVM_IRQCHIP_PIC_MASTER, BIOS_PIC_MASTER_BASE],
      [KVM_IRQCHIP_PIC_SLAVE, BIOS_PIC_SLAVE_BASE],
    ]
  ) {
    const chip = vm.getIrqchip(chipId);
    chip.pic.assign({
      lastIrr: 0,
      irr: 0,
      isr: 0,
      imr: 0,
      priorityAdd: 0,
      irqBase: base,
      readRegSelect: 0,
      poll: 0,
      specialMask: 0,
      initState: 0,
      autoEoi: 0,
      rotateOnAutoEoi: 0,
      specialFullyNestedMode: 0,
      init4: 1,
    });
    vm.setIrqchip(chip);
  }
}

/**
 * The 32-bit real-mode waking vector the guest stored in the FACS at
 * `facsAddress` (0: none set, the firmware would boot instead of resume).
 */
export function facsWakingVector(vm: Vm, facsAddress: number): number {
  const bytes = vm.guestMemory(facsAddress + ACPI_FACS_WAKING_VECTOR_OFFSET, 4);
  return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
}

/**
 * Puts `vcpu` (the bootstrap processor) where a BIOS's S3 resume path hands
 * over to the OS (ACPI 16.3.2): 16-bit real mode with CS = vector >> 4 and
 * IP = vector & 0xf, the other segments 0, paging, protection and long mode
 * off, interrupts disabled, the general registers zeroed, pending events
 * dropped, and the local APIC as after a reset (xAPIC at its default base,
 * software-disabled, every LVT masked but LINT0 = ExtINT and LINT1 = NMI, as
 * KVM and a BIOS set them). Guest RAM is untouched.
 */
export function resumeAtWakingVector(vcpu: Vcpu, vector: number): void {
  const cs = (vector >>> 4) & 0xffff;
  const sregs = vcpu.getSregs();
  const real = (selector: number, type: number) => ({
    selector,
    base: BigInt(selector * 16),
    limit: 0xffff,
    type,
    s: 1,
    dpl: 0,
    present: 1,
    avl: 0,
    l: 0,
    db: 0,
    g: 0,
    unusable: 0,
  });
  sregs.cs.assign(real(cs, 0xb)); // execute/read, accessed
  for (const seg of [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss]) seg.assign(real(0, 3));
  sregs.gdt.base = 0n;
  sregs.gdt.limit = 0xffff;
  sregs.idt.base = 0n;
  sregs.idt.limit = 0x3ff; // the real-mode interrupt vector table
  sregs.cr0 = 0x10n; // ET only: real mode, no paging, caches on (a BIOS clears CD/NW)
  sregs.cr2 = 0n;
  sregs.cr3 = 0n;
  sregs.cr4 = 0n;
  sregs.efer = 0n;
  sregs.apicBase = APIC_BASE_BSP | APIC_BASE_ENABLE | BigInt(APIC_DEFAULT_BASE);
  vcpu.setSregs(sregs);
  vcpu.setRegs(vcpu.getRegs().clear().assign({ rip: BigInt(vector & 0xf), rflags: 2n }));
  // The APIC as a reset leaves it (setSregs above took it out of x2APIC mode).
  const lapic = vcpu.getLapic();
  const version = lapic.read(ApicReg.VERSION);
  lapic.bytes.fill(0);
  lapic.write(ApicReg.ID, (vcpu.id & 0xff) << 24);
  lapic.write(ApicReg.VERSION, version);
  lapic.write(ApicReg.DFR, 0xffffffff);
  lapic.write(ApicReg.SPIV, 0xff);
  for (const offset of Object.values(LVT_OFFSETS)) lapic.write(offset, 1 << 16);
  lapic.write(ApicReg.LVT_LINT0, 0x700); // ExtINT: the PICs reach the CPU
  lapic.write(ApicReg.LVT_LINT1, 0x400); // NMI
  vcpu.setLapic(lapic);
  // Nothing the sleeping machine had pending survives the reset.
  const events = vcpu.getVcpuEvents().assign({
    exceptionInjected: 0,
    exceptionPending: 0,
    interruptInjected: 0,
    interruptShadow: 0,
    nmiInjected: 0,
    nmiPending: 0,
    nmiMasked: 0,
  });
  events.flags = (events.flags | KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW) &
    ~KVM_VCPUEVENT_VALID_SMM;
  vcpu.setVcpuEvents(events);
  vcpu.setMpState(KVM_MP_STATE_RUNNABLE);
}

/** The CMOS RTC's alarm registers (1, 3 and 5), as the guest wrote them. */
export interface RtcAlarm {
  /** Register 1: seconds; 0xc0-0xff: any. */
  seconds: number;
  /** Register 3: minutes; 0xc0-0xff: any. */
  minutes: number;
  /** Register 5: hours; 0xc0-0xff: any. */
  hours: number;
}

function fromBcd(value: number): number {
  return (value >> 4) * 10 + (value & 0xf);
}

/**
 * Milliseconds from `now` until the RTC alarm fires (the first whole second
 * after `now` whose UTC hour, minute and second match the registers, a
 * "don't care" value matching any), or -1 when it never can (a value out of
 * range). `binary`: the registers hold binary, not BCD (status B's DM bit).
 */
export function rtcAlarmDelayMs(now: Date, alarm: RtcAlarm, binary = false): number {
  const field = (v: number) => (v & 0xc0) === 0xc0 ? -1 : binary ? v : fromBcd(v);
  const [s, m, h] = [field(alarm.seconds), field(alarm.minutes), field(alarm.hours)];
  if (s > 59 || m > 59 || h > 23) return -1;
  const start = Math.floor(now.getTime() / 1000) + 1;
  // A day holds every combination: scan its seconds (at most 86400 cheap steps, once per sleep).
  for (let t = start; t < start + 86400; t++) {
    const d = new Date(t * 1000);
    if (
      (s < 0 || d.getUTCSeconds() === s) && (m < 0 || d.getUTCMinutes() === m) &&
      (h < 0 || d.getUTCHours() === h)
    ) return t * 1000 - now.getTime();
  }
  return -1;
}
