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
import { KvmUserspaceMemoryRegion } from "./memory.ts";

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
