/**
 * The KVM system object: `/dev/kvm`.
 *
 * @module
 */

import { Cap, type CapName } from "../abi/capabilities.ts";
import * as Ioctl from "../abi/ioctls.ts";
import { Errno, KvmError } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { KVM_API_VERSION } from "./constants.ts";
import { OwnedFd } from "./owned_fd.ts";
import { Vm } from "./vm.ts";

const O_RDWR = 2;

/**
 * An open `/dev/kvm`: the system-wide ioctls, and the factory of VMs.
 *
 * @example
 * ```ts
 * import { Kvm } from "../../mod.ts";
 * using kvm = Kvm.open();
 * console.log(kvm.apiVersion(), kvm.checkExtension("IRQCHIP"));
 * using vm = kvm.createVm();
 * ```
 */
export class Kvm extends OwnedFd {
  /** Names this object in error messages. */
  protected readonly label = "Kvm";
  #vms = new Set<Vm>();

  private constructor(fd: number) {
    super(fd);
  }

  /**
   * Opens the KVM device (default `/dev/kvm`) and checks its API version.
   * Throws a KvmError with `operation: "open /dev/kvm"` and `ENOENT`/`EACCES`
   * when KVM is missing or not accessible.
   */
  static open(path = "/dev/kvm"): Kvm {
    const lib = native();
    const fd = lib.kvm_open(new TextEncoder().encode(`${path}\0`), O_RDWR);
    if (fd < 0) {
      const hint = -fd === Errno.ENOENT
        ? "KVM is not available on this machine (no kernel module, or not a VM host); " +
          "`deno task sandbox` runs code inside a VM that has it"
        : -fd === Errno.EACCES
        ? "add your user to the `kvm` group or fix the device's permissions"
        : path;
      throw new KvmError(`open ${path}`, -fd, hint);
    }
    const kvm = new Kvm(fd);
    const version = kvm.apiVersion();
    if (version !== KVM_API_VERSION) {
      kvm.close();
      throw new KvmError(
        "KVM_GET_API_VERSION",
        Errno.EINVAL,
        `the kernel speaks KVM API ${version}, this library needs ${KVM_API_VERSION}`,
      );
    }
    return kvm;
  }

  /** `KVM_GET_API_VERSION`: always 12 on any kernel this library accepts. */
  apiVersion(): number {
    return this.ioctlVal("KVM_GET_API_VERSION", Ioctl.KVM_GET_API_VERSION, 0);
  }

  /**
   * `KVM_CHECK_EXTENSION` on the system fd: 0 when the capability is absent,
   * otherwise a positive value whose meaning depends on the capability (for
   * `NR_MEMSLOTS`, the slot count).
   */
  checkExtension(cap: CapName | number): number {
    const number = typeof cap === "number" ? cap : Cap[cap];
    if (number === undefined) {
      throw new KvmError("KVM_CHECK_EXTENSION", Errno.EINVAL, `unknown capability ${cap}`);
    }
    return this.ioctlVal("KVM_CHECK_EXTENSION", Ioctl.KVM_CHECK_EXTENSION, number);
  }

  /** `KVM_GET_VCPU_MMAP_SIZE`: bytes to map from a vCPU fd (the run area and rings). */
  vcpuMmapSize(): number {
    return this.ioctlVal("KVM_GET_VCPU_MMAP_SIZE", Ioctl.KVM_GET_VCPU_MMAP_SIZE, 0);
  }

  /**
   * `KVM_CREATE_VM`. The VM is owned by this object: closing the Kvm closes
   * its VMs, their vCPUs and the guest memory they allocated.
   */
  createVm(type = 0): Vm {
    const fd = this.ioctlVal("KVM_CREATE_VM", Ioctl.KVM_CREATE_VM, type);
    const vm = Vm.fromFd(fd, this, () => this.#vms.delete(vm));
    this.#vms.add(vm);
    return vm;
  }

  /** Closes what this object owns before its fd. */
  protected override releaseResources(): void {
    for (const vm of [...this.#vms]) vm.close();
  }
}
