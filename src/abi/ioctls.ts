/**
 * KVM ioctl request numbers, one place for all of them. Each is computed from
 * the kernel's `_IO`/`_IOR`/`_IOW`/`_IOWR` definition and verified against
 * `<linux/kvm.h>` by the ABI probe test.
 *
 * @module
 */

import { io, ior, iow, iowr } from "./ioctl.ts";
import { KvmRegs, KvmSregs } from "./x86.ts";
import { KvmUserspaceMemoryRegion } from "./memory.ts";

/** Request numbers by their C name. */
export const Ioctl = {
  // System ioctls (on the /dev/kvm fd).
  KVM_GET_API_VERSION: io(0x00),
  KVM_CREATE_VM: io(0x01),
  KVM_GET_MSR_INDEX_LIST: iowr(0x02, 4),
  KVM_CHECK_EXTENSION: io(0x03),
  KVM_GET_VCPU_MMAP_SIZE: io(0x04),

  // VM ioctls.
  KVM_CREATE_VCPU: io(0x41),
  KVM_SET_USER_MEMORY_REGION: iow(0x46, KvmUserspaceMemoryRegion),
  KVM_SET_TSS_ADDR: io(0x47),
  KVM_SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  KVM_CREATE_IRQCHIP: io(0x60),

  // vCPU ioctls.
  KVM_RUN: io(0x80),
  KVM_GET_REGS: ior(0x81, KvmRegs),
  KVM_SET_REGS: iow(0x82, KvmRegs),
  KVM_GET_SREGS: ior(0x83, KvmSregs),
  KVM_SET_SREGS: iow(0x84, KvmSregs),
} as const;

/** The C name of an ioctl in {@linkcode Ioctl}. */
export type IoctlName = keyof typeof Ioctl;
