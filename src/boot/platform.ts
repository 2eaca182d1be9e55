/**
 * The minimal PC platform a Linux guest needs around its vCPUs: the in-kernel
 * interrupt controllers and PIT, the VMX helper pages, CPUID with per-vCPU
 * APIC ids and KVM's paravirtual leaves, the MSRs a boot loader sets, and the
 * local APIC's LINT pins wired as on a PC.
 *
 * @module
 */

import type { CpuidEntry } from "../abi/cpuid.ts";
import { ApicReg } from "../abi/lapic.ts";
import type { MsrEntry } from "../abi/msr.ts";
import { KVM_PIT_SPEAKER_DUMMY } from "../abi/pit.ts";
import type { Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import { type CpuProbeReport, hideUnusableFeatures } from "./cpu_probe.ts";
import { IDENTITY_MAP_ADDRESS, TSS_ADDRESS } from "./address_map.ts";

export { IDENTITY_MAP_ADDRESS, TSS_ADDRESS };

/** `KVM_CPUID_SIGNATURE`: the hypervisor leaf, "KVMKVMKVM\0\0\0". */
export const KVM_CPUID_SIGNATURE = 0x40000000;
/** `KVM_CPUID_FEATURES`: KVM's paravirtual feature bits in EAX. */
export const KVM_CPUID_FEATURES = 0x40000001;

/** `KVM_FEATURE_*` bits of leaf 0x40000001 EAX (offered when the kernel's list lacks the leaf, or hidden). */
export const KvmFeature = {
  /** kvmclock at the old MSRs. */
  CLOCKSOURCE: 1 << 0,
  /** No delay needed for port I/O (Linux then skips its port 0x80 writes). */
  NOP_IO_DELAY: 1 << 1,
  /** kvmclock at the new MSRs. */
  CLOCKSOURCE2: 1 << 3,
  /** Steal time accounting. */
  STEAL_TIME: 1 << 5,
  /** Paravirtual end of interrupt. */
  PV_EOI: 1 << 6,
  /** Paravirtual spinlocks (a halted vCPU is woken by a hypercall). */
  PV_UNHALT: 1 << 7,
  /** The kvmclock's stable bit is reliable. */
  CLOCKSOURCE_STABLE_BIT: 1 << 24,
} as const;

/**
 * KVM features hidden from the guest by default: paravirtual EOI and
 * paravirtual spinlocks. With either, a 2-vCPU Debian 6.1 guest on nested KVM
 * (kvm-amd inside a QEMU TCG guest, this project's test machine) hung in
 * early boot: one CPU halted for good in the PV spinlock wait, or spun on a
 * scheduler lock taken again from a timer interrupt. With both hidden (or
 * with the guest's `nopv`) it booted every time. Both only save exits that
 * the in-kernel APIC makes cheap; pass `hiddenKvmFeatures: 0` to offer them.
 */
export const DEFAULT_HIDDEN_KVM_FEATURES = KvmFeature.PV_EOI | KvmFeature.PV_UNHALT;

/** MSR numbers set at boot. */
export const BootMsr = {
  IA32_TSC: 0x10,
  IA32_SYSENTER_CS: 0x174,
  IA32_SYSENTER_ESP: 0x175,
  IA32_SYSENTER_EIP: 0x176,
  IA32_MISC_ENABLE: 0x1a0,
  MTRR_DEF_TYPE: 0x2ff,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SYSCALL_MASK: 0xc0000084,
  KERNEL_GS_BASE: 0xc0000102,
} as const;

const MISC_ENABLE_FAST_STRING = 1n;
const MTRR_ENABLE = 1n << 11n;
const MTRR_TYPE_WRITEBACK = 6n;
const CPUID_1_ECX_HYPERVISOR = 1 << 31;
const CPUID_1_EDX_HTT = 1 << 28;
const CPUID_1_ECX_TSC_DEADLINE = 1 << 24;

const LVT_DELIVERY_MASK = 0x700;
const LVT_MASKED = 1 << 16;
const DELIVERY_EXTINT = 0x700;
const DELIVERY_NMI = 0x400;

/**
 * Creates the in-kernel irqchip (PIC pair, IOAPIC, LAPICs) and PIT (with the
 * dummy speaker port 0x61), and places the VMX helper pages at the top of the
 * 32-bit space. Call before creating vCPUs.
 */
export function setupPlatform(vm: Vm): void {
  vm.setTssAddr(TSS_ADDRESS);
  vm.setIdentityMapAddr(IDENTITY_MAP_ADDRESS);
  vm.createIrqchip();
  vm.createPit2({ flags: KVM_PIT_SPEAKER_DUMMY });
}

/**
 * CPUID for vCPU `id` of `cpus`, from the kernel's supported list: the APIC id
 * in leaf 1 EBX[31:24] and in the x2APIC leaves 0xb/0x1f EDX, the logical
 * processor count in leaf 1, the hypervisor bit, and KVM's paravirtual leaves
 * (added when the supported list lacks them: kvmclock, no I/O delay, PV EOI),
 * and with `tscDeadline` the TSC-deadline timer bit (leaf 1 ECX[24]). KVM
 * features in `hiddenKvmFeatures` (default {@linkcode DEFAULT_HIDDEN_KVM_FEATURES})
 * are removed from leaf 0x40000001. With `probe` (from `probeCpu`), the
 * features this KVM failed to execute are hidden too (see `hideUnusableFeatures`).
 */
export function vcpuCpuid(
  supported: readonly CpuidEntry[],
  id: number,
  cpus: number,
  options: { tscDeadline?: boolean; hiddenKvmFeatures?: number; probe?: CpuProbeReport } = {},
): CpuidEntry[] {
  const entries = supported.map((e) => ({ ...e }));
  if (options.probe) hideUnusableFeatures(entries, options.probe);
  for (const e of entries) {
    switch (e.function) {
      case 1:
        e.ebx = ((e.ebx & 0x0000ffff) | ((cpus & 0xff) << 16) | ((id & 0xff) << 24)) >>> 0;
        e.ecx = (e.ecx | CPUID_1_ECX_HYPERVISOR) >>> 0;
        // KVM emulates the TSC-deadline timer in its LAPIC but leaves the bit out of the
        // supported list (QEMU adds it the same way). Without it Linux calibrates the LAPIC
        // timer against the PIT, which a nested or loaded host can fail.
        if (options.tscDeadline) e.ecx = (e.ecx | CPUID_1_ECX_TSC_DEADLINE) >>> 0;
        if (cpus > 1) e.edx = (e.edx | CPUID_1_EDX_HTT) >>> 0;
        break;
      case 0xb:
      case 0x1f:
        e.edx = id >>> 0;
        break;
    }
  }
  const hidden = options.hiddenKvmFeatures ?? DEFAULT_HIDDEN_KVM_FEATURES;
  for (const e of entries) {
    if (e.function === KVM_CPUID_FEATURES) e.eax = (e.eax & ~hidden) >>> 0;
  }
  if (!entries.some((e) => e.function === KVM_CPUID_SIGNATURE)) {
    const sig = new Uint32Array(new TextEncoder().encode("KVMKVMKVM\0\0\0").buffer);
    entries.push({
      function: KVM_CPUID_SIGNATURE,
      index: 0,
      flags: 0,
      eax: KVM_CPUID_FEATURES,
      ebx: sig[0],
      ecx: sig[1],
      edx: sig[2],
    });
  }
  if (!entries.some((e) => e.function === KVM_CPUID_FEATURES)) {
    entries.push({
      function: KVM_CPUID_FEATURES,
      index: 0,
      flags: 0,
      eax: KvmFeature.CLOCKSOURCE | KvmFeature.NOP_IO_DELAY | KvmFeature.CLOCKSOURCE2 |
        KvmFeature.STEAL_TIME | KvmFeature.PV_EOI | KvmFeature.CLOCKSOURCE_STABLE_BIT,
      ebx: 0,
      ecx: 0,
      edx: 0,
    });
  }
  return entries;
}

/** The MSRs a boot loader leaves set (SYSCALL/SYSENTER zeroed, fast strings, MTRRs write-back). */
export function bootMsrs(): MsrEntry[] {
  return [
    { index: BootMsr.IA32_SYSENTER_CS, data: 0n },
    { index: BootMsr.IA32_SYSENTER_ESP, data: 0n },
    { index: BootMsr.IA32_SYSENTER_EIP, data: 0n },
    { index: BootMsr.STAR, data: 0n },
    { index: BootMsr.CSTAR, data: 0n },
    { index: BootMsr.KERNEL_GS_BASE, data: 0n },
    { index: BootMsr.SYSCALL_MASK, data: 0n },
    { index: BootMsr.LSTAR, data: 0n },
    { index: BootMsr.IA32_TSC, data: 0n },
    { index: BootMsr.IA32_MISC_ENABLE, data: MISC_ENABLE_FAST_STRING },
    { index: BootMsr.MTRR_DEF_TYPE, data: MTRR_ENABLE | MTRR_TYPE_WRITEBACK },
  ];
}

/**
 * Sets up one vCPU of a `cpus`-vCPU PC: CPUID (see {@linkcode vcpuCpuid}),
 * the boot MSRs, and the local APIC's LINT0 as ExtINT (so the PIC's
 * interrupts reach the CPU before Linux programs its APIC) and LINT1 as NMI.
 * `supported` is `kvm.getSupportedCpuid()`, fetched once for all vCPUs;
 * `tscDeadline`: whether `KVM_CAP_TSC_DEADLINE_TIMER` is there (see {@linkcode vcpuCpuid});
 * `probe`: a `probeCpu` report whose unusable features are hidden;
 * `adjust` may change the CPUID list last.
 */
export function setupVcpu(
  vcpu: Vcpu,
  cpus: number,
  supported: readonly CpuidEntry[],
  options: {
    tscDeadline?: boolean;
    hiddenKvmFeatures?: number;
    probe?: CpuProbeReport;
    adjust?: (entries: CpuidEntry[], vcpuId: number) => CpuidEntry[];
  } = {},
): void {
  const entries = vcpuCpuid(supported, vcpu.id, cpus, options);
  vcpu.setCpuid2(options.adjust ? options.adjust(entries, vcpu.id) : entries);
  vcpu.setMsrs(bootMsrs());
  const lapic = vcpu.getLapic();
  const lint0 = lapic.read(ApicReg.LVT_LINT0);
  lapic.write(ApicReg.LVT_LINT0, (lint0 & ~(LVT_DELIVERY_MASK | LVT_MASKED)) | DELIVERY_EXTINT);
  const lint1 = lapic.read(ApicReg.LVT_LINT1);
  lapic.write(ApicReg.LVT_LINT1, (lint1 & ~(LVT_DELIVERY_MASK | LVT_MASKED)) | DELIVERY_NMI);
  vcpu.setLapic(lapic);
}
