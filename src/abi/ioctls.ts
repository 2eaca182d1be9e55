/**
 * KVM ioctl request numbers, one place for all of them. Each is computed from
 * the kernel's `_IO`/`_IOR`/`_IOW`/`_IOWR` definition and verified against
 * `<linux/kvm.h>` by the ABI probe test. Import as a namespace:
 * `import * as Ioctl from "./ioctls.ts"`.
 *
 * @module
 */

import { io, ior, iow, iowr } from "./ioctl.ts";
import { KvmRegs, KvmSregs } from "./x86.ts";
import { KvmCpuid2 } from "./cpuid.ts";
import { KvmDebugregs, KvmGuestDebug } from "./debug.ts";
import { KvmFpu, KvmXcrs, KvmXsave } from "./fpu.ts";
import { KvmLapicState } from "./lapic.ts";
import { KvmMsrList, KvmMsrs } from "./msr.ts";
import {
  KvmInterrupt,
  KvmMpState,
  KvmNestedState,
  KvmSignalMask,
  KvmTprAccessCtl,
  KvmTranslation,
  KvmVapicAddr,
  KvmVcpuEvents,
} from "./vcpu_state.ts";
import { KvmUserspaceMemoryRegion } from "./memory.ts";
import { KvmClockData } from "./clock.ts";
import { KvmCoalescedMmioZone } from "./coalesced.ts";
import { KvmCreateDevice, KvmDeviceAttr } from "./device.ts";
import { KvmClearDirtyLog, KvmDirtyLog } from "./dirty_log.ts";
import { KvmEnableCap } from "./enable_cap.ts";
import { KvmIoeventfd, KvmIrqfd } from "./eventfd.ts";
import { KvmIrqchip, KvmIrqLevel, KvmMsi } from "./irqchip.ts";
import { KvmIrqRouting } from "./irq_routing.ts";
import { USERSPACE_MEMORY_REGION2_SIZE } from "./memory2.ts";
import { KvmPitConfig, KvmPitState2 } from "./pit.ts";

// System ioctls (on the /dev/kvm fd).
/** `KVM_GET_API_VERSION` = `_IO(KVMIO, 0x00)`. */
export const KVM_GET_API_VERSION: number = io(0x00);
/** `KVM_CREATE_VM` = `_IO(KVMIO, 0x01)`. */
export const KVM_CREATE_VM: number = io(0x01);
/** `KVM_GET_MSR_INDEX_LIST` = `_IOWR(KVMIO, 0x02, 4)`. */
export const KVM_GET_MSR_INDEX_LIST: number = iowr(0x02, 4);
/** `KVM_CHECK_EXTENSION` = `_IO(KVMIO, 0x03)`. */
export const KVM_CHECK_EXTENSION: number = io(0x03);
/** `KVM_GET_VCPU_MMAP_SIZE` = `_IO(KVMIO, 0x04)`. */
export const KVM_GET_VCPU_MMAP_SIZE: number = io(0x04);

// VM ioctls.
/** `KVM_CREATE_VCPU` = `_IO(KVMIO, 0x41)`. */
export const KVM_CREATE_VCPU: number = io(0x41);
/** `KVM_SET_USER_MEMORY_REGION` = `_IOW(KVMIO, 0x46, KvmUserspaceMemoryRegion)`. */
export const KVM_SET_USER_MEMORY_REGION: number = iow(0x46, KvmUserspaceMemoryRegion);
/** `KVM_SET_TSS_ADDR` = `_IO(KVMIO, 0x47)`. */
export const KVM_SET_TSS_ADDR: number = io(0x47);
/** `KVM_SET_IDENTITY_MAP_ADDR` = `_IOW(KVMIO, 0x48, 8)`. */
export const KVM_SET_IDENTITY_MAP_ADDR: number = iow(0x48, 8);
/** `KVM_CREATE_IRQCHIP` = `_IO(KVMIO, 0x60)`. */
export const KVM_CREATE_IRQCHIP: number = io(0x60);

// VM ioctls of the vm-api helper (interrupts, eventfds, dirty log, clock, devices).
/** `KVM_GET_DIRTY_LOG` = `_IOW(KVMIO, 0x42, struct kvm_dirty_log)`. */
export const KVM_GET_DIRTY_LOG: number = iow(0x42, KvmDirtyLog);
/** `KVM_SET_NR_MMU_PAGES` = `_IO(KVMIO, 0x44)`. */
export const KVM_SET_NR_MMU_PAGES: number = io(0x44);
/** `KVM_GET_NR_MMU_PAGES` = `_IO(KVMIO, 0x45)`. */
export const KVM_GET_NR_MMU_PAGES: number = io(0x45);
/** `KVM_SET_USER_MEMORY_REGION2` = `_IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)`. */
export const KVM_SET_USER_MEMORY_REGION2: number = iow(0x49, USERSPACE_MEMORY_REGION2_SIZE);
/** `KVM_IRQ_LINE` = `_IOW(KVMIO, 0x61, struct kvm_irq_level)`. */
export const KVM_IRQ_LINE: number = iow(0x61, KvmIrqLevel);
/** `KVM_GET_IRQCHIP` = `_IOWR(KVMIO, 0x62, struct kvm_irqchip)`. */
export const KVM_GET_IRQCHIP: number = iowr(0x62, KvmIrqchip);
/** `KVM_SET_IRQCHIP` = `_IOR(KVMIO, 0x63, struct kvm_irqchip)` (sic: the kernel reads it). */
export const KVM_SET_IRQCHIP: number = ior(0x63, KvmIrqchip);
/** `KVM_IRQ_LINE_STATUS` = `_IOWR(KVMIO, 0x67, struct kvm_irq_level)`. */
export const KVM_IRQ_LINE_STATUS: number = iowr(0x67, KvmIrqLevel);
/** `KVM_REGISTER_COALESCED_MMIO` = `_IOW(KVMIO, 0x67, struct kvm_coalesced_mmio_zone)`. */
export const KVM_REGISTER_COALESCED_MMIO: number = iow(0x67, KvmCoalescedMmioZone);
/** `KVM_UNREGISTER_COALESCED_MMIO` = `_IOW(KVMIO, 0x68, struct kvm_coalesced_mmio_zone)`. */
export const KVM_UNREGISTER_COALESCED_MMIO: number = iow(0x68, KvmCoalescedMmioZone);
/** `KVM_SET_GSI_ROUTING` = `_IOW(KVMIO, 0x6a, struct kvm_irq_routing)`. */
export const KVM_SET_GSI_ROUTING: number = iow(0x6a, KvmIrqRouting);
/** `KVM_IRQFD` = `_IOW(KVMIO, 0x76, struct kvm_irqfd)`. */
export const KVM_IRQFD: number = iow(0x76, KvmIrqfd);
/** `KVM_CREATE_PIT2` = `_IOW(KVMIO, 0x77, struct kvm_pit_config)`. */
export const KVM_CREATE_PIT2: number = iow(0x77, KvmPitConfig);
/** `KVM_IOEVENTFD` = `_IOW(KVMIO, 0x79, struct kvm_ioeventfd)`. */
export const KVM_IOEVENTFD: number = iow(0x79, KvmIoeventfd);
/** `KVM_SET_CLOCK` = `_IOW(KVMIO, 0x7b, struct kvm_clock_data)`. */
export const KVM_SET_CLOCK: number = iow(0x7b, KvmClockData);
/** `KVM_GET_CLOCK` = `_IOR(KVMIO, 0x7c, struct kvm_clock_data)`. */
export const KVM_GET_CLOCK: number = ior(0x7c, KvmClockData);
/** `KVM_GET_PIT2` = `_IOR(KVMIO, 0x9f, struct kvm_pit_state2)`. */
export const KVM_GET_PIT2: number = ior(0x9f, KvmPitState2);
/** `KVM_SET_PIT2` = `_IOW(KVMIO, 0xa0, struct kvm_pit_state2)`. */
export const KVM_SET_PIT2: number = iow(0xa0, KvmPitState2);
/** `KVM_ENABLE_CAP` = `_IOW(KVMIO, 0xa3, struct kvm_enable_cap)` (VM and vCPU fds). */
export const KVM_ENABLE_CAP: number = iow(0xa3, KvmEnableCap);
/** `KVM_SIGNAL_MSI` = `_IOW(KVMIO, 0xa5, struct kvm_msi)`. */
export const KVM_SIGNAL_MSI: number = iow(0xa5, KvmMsi);
/** `KVM_CLEAR_DIRTY_LOG` = `_IOWR(KVMIO, 0xc0, struct kvm_clear_dirty_log)`. */
export const KVM_CLEAR_DIRTY_LOG: number = iowr(0xc0, KvmClearDirtyLog);
/** `KVM_RESET_DIRTY_RINGS` = `_IO(KVMIO, 0xc7)`: recycles harvested dirty-ring entries. */
export const KVM_RESET_DIRTY_RINGS: number = io(0xc7);
/** `KVM_CREATE_DEVICE` = `_IOWR(KVMIO, 0xe0, struct kvm_create_device)`. */
export const KVM_CREATE_DEVICE: number = iowr(0xe0, KvmCreateDevice);

// Device ioctls (on an fd from KVM_CREATE_DEVICE).
/** `KVM_SET_DEVICE_ATTR` = `_IOW(KVMIO, 0xe1, struct kvm_device_attr)`. */
export const KVM_SET_DEVICE_ATTR: number = iow(0xe1, KvmDeviceAttr);
/** `KVM_GET_DEVICE_ATTR` = `_IOW(KVMIO, 0xe2, struct kvm_device_attr)`. */
export const KVM_GET_DEVICE_ATTR: number = iow(0xe2, KvmDeviceAttr);
/** `KVM_HAS_DEVICE_ATTR` = `_IOW(KVMIO, 0xe3, struct kvm_device_attr)`. */
export const KVM_HAS_DEVICE_ATTR: number = iow(0xe3, KvmDeviceAttr);

// vCPU ioctls.
/** `KVM_RUN` = `_IO(KVMIO, 0x80)`. */
export const KVM_RUN: number = io(0x80);
/** `KVM_GET_REGS` = `_IOR(KVMIO, 0x81, KvmRegs)`. */
export const KVM_GET_REGS: number = ior(0x81, KvmRegs);
/** `KVM_SET_REGS` = `_IOW(KVMIO, 0x82, KvmRegs)`. */
export const KVM_SET_REGS: number = iow(0x82, KvmRegs);
/** `KVM_GET_SREGS` = `_IOR(KVMIO, 0x83, KvmSregs)`. */
export const KVM_GET_SREGS: number = ior(0x83, KvmSregs);
/** `KVM_SET_SREGS` = `_IOW(KVMIO, 0x84, KvmSregs)`. */
export const KVM_SET_SREGS: number = iow(0x84, KvmSregs);

// System ioctls of the vcpu-api helper (CPUID and MSR discovery).
/** `KVM_GET_SUPPORTED_CPUID` = `_IOWR(KVMIO, 0x05, struct kvm_cpuid2)`. */
export const KVM_GET_SUPPORTED_CPUID: number = iowr(0x05, KvmCpuid2);
/** `KVM_GET_EMULATED_CPUID` = `_IOWR(KVMIO, 0x09, struct kvm_cpuid2)`. */
export const KVM_GET_EMULATED_CPUID: number = iowr(0x09, KvmCpuid2);
/** `KVM_GET_MSR_FEATURE_INDEX_LIST` = `_IOWR(KVMIO, 0x0a, struct kvm_msr_list)`. */
export const KVM_GET_MSR_FEATURE_INDEX_LIST: number = iowr(0x0a, KvmMsrList);

// vCPU ioctls of the vcpu-api helper (state, interrupts, debugging).
/** `KVM_TRANSLATE` = `_IOWR(KVMIO, 0x85, struct kvm_translation)`. */
export const KVM_TRANSLATE: number = iowr(0x85, KvmTranslation);
/** `KVM_INTERRUPT` = `_IOW(KVMIO, 0x86, struct kvm_interrupt)`. */
export const KVM_INTERRUPT: number = iow(0x86, KvmInterrupt);
/** `KVM_GET_MSRS` = `_IOWR(KVMIO, 0x88, struct kvm_msrs)` (also on the system fd: feature MSRs). */
export const KVM_GET_MSRS: number = iowr(0x88, KvmMsrs);
/** `KVM_SET_MSRS` = `_IOW(KVMIO, 0x89, struct kvm_msrs)`. */
export const KVM_SET_MSRS: number = iow(0x89, KvmMsrs);
/** `KVM_SET_SIGNAL_MASK` = `_IOW(KVMIO, 0x8b, struct kvm_signal_mask)`. */
export const KVM_SET_SIGNAL_MASK: number = iow(0x8b, KvmSignalMask);
/** `KVM_GET_FPU` = `_IOR(KVMIO, 0x8c, struct kvm_fpu)`. */
export const KVM_GET_FPU: number = ior(0x8c, KvmFpu);
/** `KVM_SET_FPU` = `_IOW(KVMIO, 0x8d, struct kvm_fpu)`. */
export const KVM_SET_FPU: number = iow(0x8d, KvmFpu);
/** `KVM_GET_LAPIC` = `_IOR(KVMIO, 0x8e, struct kvm_lapic_state)`. */
export const KVM_GET_LAPIC: number = ior(0x8e, KvmLapicState);
/** `KVM_SET_LAPIC` = `_IOW(KVMIO, 0x8f, struct kvm_lapic_state)`. */
export const KVM_SET_LAPIC: number = iow(0x8f, KvmLapicState);
/** `KVM_SET_CPUID2` = `_IOW(KVMIO, 0x90, struct kvm_cpuid2)`. */
export const KVM_SET_CPUID2: number = iow(0x90, KvmCpuid2);
/** `KVM_GET_CPUID2` = `_IOWR(KVMIO, 0x91, struct kvm_cpuid2)`. */
export const KVM_GET_CPUID2: number = iowr(0x91, KvmCpuid2);
/** `KVM_TPR_ACCESS_REPORTING` = `_IOWR(KVMIO, 0x92, struct kvm_tpr_access_ctl)`. */
export const KVM_TPR_ACCESS_REPORTING: number = iowr(0x92, KvmTprAccessCtl);
/** `KVM_SET_VAPIC_ADDR` = `_IOW(KVMIO, 0x93, struct kvm_vapic_addr)`. */
export const KVM_SET_VAPIC_ADDR: number = iow(0x93, KvmVapicAddr);
/** `KVM_GET_MP_STATE` = `_IOR(KVMIO, 0x98, struct kvm_mp_state)`. */
export const KVM_GET_MP_STATE: number = ior(0x98, KvmMpState);
/** `KVM_SET_MP_STATE` = `_IOW(KVMIO, 0x99, struct kvm_mp_state)`. */
export const KVM_SET_MP_STATE: number = iow(0x99, KvmMpState);
/** `KVM_NMI` = `_IO(KVMIO, 0x9a)`. */
export const KVM_NMI: number = io(0x9a);
/** `KVM_SET_GUEST_DEBUG` = `_IOW(KVMIO, 0x9b, struct kvm_guest_debug)`. */
export const KVM_SET_GUEST_DEBUG: number = iow(0x9b, KvmGuestDebug);
/** `KVM_GET_VCPU_EVENTS` = `_IOR(KVMIO, 0x9f, struct kvm_vcpu_events)`. */
export const KVM_GET_VCPU_EVENTS: number = ior(0x9f, KvmVcpuEvents);
/** `KVM_SET_VCPU_EVENTS` = `_IOW(KVMIO, 0xa0, struct kvm_vcpu_events)`. */
export const KVM_SET_VCPU_EVENTS: number = iow(0xa0, KvmVcpuEvents);
/** `KVM_GET_DEBUGREGS` = `_IOR(KVMIO, 0xa1, struct kvm_debugregs)`. */
export const KVM_GET_DEBUGREGS: number = ior(0xa1, KvmDebugregs);
/** `KVM_SET_DEBUGREGS` = `_IOW(KVMIO, 0xa2, struct kvm_debugregs)`. */
export const KVM_SET_DEBUGREGS: number = iow(0xa2, KvmDebugregs);
/** `KVM_SET_TSC_KHZ` = `_IO(KVMIO, 0xa2)`. */
export const KVM_SET_TSC_KHZ: number = io(0xa2);
/** `KVM_GET_TSC_KHZ` = `_IO(KVMIO, 0xa3)`. */
export const KVM_GET_TSC_KHZ: number = io(0xa3);
/** `KVM_GET_XSAVE` = `_IOR(KVMIO, 0xa4, struct kvm_xsave)`. */
export const KVM_GET_XSAVE: number = ior(0xa4, KvmXsave);
/** `KVM_SET_XSAVE` = `_IOW(KVMIO, 0xa5, struct kvm_xsave)`. */
export const KVM_SET_XSAVE: number = iow(0xa5, KvmXsave);
/** `KVM_GET_XCRS` = `_IOR(KVMIO, 0xa6, struct kvm_xcrs)`. */
export const KVM_GET_XCRS: number = ior(0xa6, KvmXcrs);
/** `KVM_SET_XCRS` = `_IOW(KVMIO, 0xa7, struct kvm_xcrs)`. */
export const KVM_SET_XCRS: number = iow(0xa7, KvmXcrs);
/** `KVM_KVMCLOCK_CTRL` = `_IO(KVMIO, 0xad)`. */
export const KVM_KVMCLOCK_CTRL: number = io(0xad);
/** `KVM_SMI` = `_IO(KVMIO, 0xb7)`. */
export const KVM_SMI: number = io(0xb7);
/** `KVM_GET_NESTED_STATE` = `_IOWR(KVMIO, 0xbe, struct kvm_nested_state)`. */
export const KVM_GET_NESTED_STATE: number = iowr(0xbe, KvmNestedState);
/** `KVM_SET_NESTED_STATE` = `_IOW(KVMIO, 0xbf, struct kvm_nested_state)`. */
export const KVM_SET_NESTED_STATE: number = iow(0xbf, KvmNestedState);
/** `KVM_GET_XSAVE2` = `_IOR(KVMIO, 0xcf, struct kvm_xsave)`. */
export const KVM_GET_XSAVE2: number = ior(0xcf, KvmXsave);
