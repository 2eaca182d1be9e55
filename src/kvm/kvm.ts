/**
 * The KVM system object: `/dev/kvm`.
 *
 * @module
 */

import { Cap, type CapName } from "../abi/capabilities.ts";
import * as Ioctl from "../abi/ioctls.ts";
import { Errno, KvmError } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { KVM_API_VERSION, O_RDWR } from "./constants.ts";
import type { CpuidEntry } from "../abi/cpuid.ts"; // (vcpu-api helper)
import { msrBuffer, type MsrEntry, readMsrBuffer } from "../abi/msr.ts"; // (vcpu-api helper)
import { hex } from "./constants.ts"; // (vcpu-api helper)
import { u32 } from "./validate.ts";
import { getCpuidList } from "./cpuid_list.ts"; // (vcpu-api helper)
import { OwnedFd, pointerOf } from "./owned_fd.ts";
import { Vm } from "./vm.ts";

/**
 * Which KVM the host kernel provides, as the host names it: for reports and
 * test logs. Decide on features with `checkExtension` and the supported
 * CPUID, never on these names.
 */
export interface KvmImplementation {
  /**
   * The vendor module that backs `/dev/kvm` (`"kvm_intel"`, `"kvm_amd"`,
   * `"kvm_pvm"`, ...): the first `kvm_*` entry of `/sys/module`, or
   * `undefined` when none can be read.
   */
  vendorModule: string | undefined;
  /** Every `kvm_*` entry of `/sys/module` (loaded or built in), sorted. */
  modules: string[];
  /** The host kernel's release (`/proc/sys/kernel/osrelease`), or `undefined`. */
  hostKernelRelease: string | undefined;
}

/** Reads the host's KVM implementation facts; needs `--allow-read` of /sys/module and /proc. */
function readImplementation(): KvmImplementation {
  let modules: string[] = [];
  try {
    modules = [...Deno.readDirSync("/sys/module")]
      .map((e) => e.name)
      .filter((name) => name.startsWith("kvm_"))
      .sort();
  } catch { /* no /sys, or no read permission: unknown */ }
  let hostKernelRelease: string | undefined;
  try {
    hostKernelRelease = Deno.readTextFileSync("/proc/sys/kernel/osrelease").trim();
  } catch { /* unknown */ }
  // Prefer the hardware vendors' modules, then any other backend.
  const preferred = ["kvm_intel", "kvm_amd"].find((m) => modules.includes(m));
  return { vendorModule: preferred ?? modules[0], modules, hostKernelRelease };
}

/**
 * An open `/dev/kvm`: the system-wide ioctls, and the factory of VMs.
 *
 * @example
 * ```ts
 * import { Kvm } from "@deno-kvm/kvm";
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
    u32("KVM_CHECK_EXTENSION", "capability", number);
    return this.ioctlVal("KVM_CHECK_EXTENSION", Ioctl.KVM_CHECK_EXTENSION, number);
  }

  /**
   * Which KVM implementation the host kernel provides (vendor module and
   * host kernel release), as data for reports. Not a feature test: ask
   * {@linkcode checkExtension} and {@linkcode getSupportedCpuid} for those.
   */
  implementation(): KvmImplementation {
    this.fd("KVM implementation");
    return readImplementation();
  }

  /** `KVM_GET_VCPU_MMAP_SIZE`: bytes to map from a vCPU fd (the run area and rings). */
  vcpuMmapSize(): number {
    return this.ioctlVal("KVM_GET_VCPU_MMAP_SIZE", Ioctl.KVM_GET_VCPU_MMAP_SIZE, 0);
  }

  /**
   * Recommended maximum of vCPUs per VM (`KVM_CAP_NR_VCPUS`); 4 when the
   * capability is absent, as Documentation/virt/kvm/api.rst ("KVM_CREATE_VCPU") says.
   */
  getNrVcpus(): number {
    return this.checkExtension("NR_VCPUS") || 4;
  }

  /**
   * Hard maximum of vCPUs per VM (`KVM_CAP_MAX_VCPUS`); the recommended count
   * ({@linkcode getNrVcpus}) when the capability is absent (api.rst).
   */
  getMaxVcpus(): number {
    return this.checkExtension("MAX_VCPUS") || this.getNrVcpus();
  }

  /**
   * Maximum vCPU id plus one (`KVM_CAP_MAX_VCPU_ID`): ids passed to
   * `createVcpu` must be below it. Falls back to {@linkcode getMaxVcpus}
   * when the capability is absent (api.rst).
   */
  getMaxVcpuId(): number {
    return this.checkExtension("MAX_VCPU_ID") || this.getMaxVcpus();
  }

  /** Memory slots per address space (`KVM_CAP_NR_MEMSLOTS`); 32 when absent (kvm-ioctls' fallback). */
  getNrMemslots(): number {
    return this.checkExtension("NR_MEMSLOTS") || 32;
  }

  /**
   * `KVM_CREATE_VM`. The VM is owned by this object: closing the Kvm closes
   * its VMs, their vCPUs and the guest memory they allocated.
   */
  createVm(type = 0): Vm {
    u32("KVM_CREATE_VM", "type", type);
    const fd = this.ioctlVal("KVM_CREATE_VM", Ioctl.KVM_CREATE_VM, type);
    const vm = Vm.fromFd(fd, this, () => this.#vms.delete(vm));
    this.#vms.add(vm);
    return vm;
  }

  // ---- (vcpu-api helper) CPUID and MSR discovery ----

  /**
   * `KVM_GET_SUPPORTED_CPUID`: the CPUID leaves KVM can offer a guest (feed
   * them, adjusted, to `Vcpu.setCpuid2`). The buffer grows on E2BIG.
   */
  getSupportedCpuid(): CpuidEntry[] {
    const op = "KVM_GET_SUPPORTED_CPUID";
    return getCpuidList(
      op,
      (ptr) => native().kvm_ioctl_ptr(this.fd(op), Ioctl.KVM_GET_SUPPORTED_CPUID, ptr),
      () => "supported CPUID",
    );
  }

  /**
   * `KVM_GET_EMULATED_CPUID`: CPUID features KVM emulates in software (e.g.
   * MOVBE, RDPID). Needs `KVM_CAP_EXT_EMUL_CPUID`.
   */
  getEmulatedCpuid(): CpuidEntry[] {
    const op = "KVM_GET_EMULATED_CPUID";
    if (this.checkExtension("EXT_EMUL_CPUID") === 0) {
      throw new KvmError(op, Errno.EOPNOTSUPP, "the kernel lacks KVM_CAP_EXT_EMUL_CPUID");
    }
    return getCpuidList(
      op,
      (ptr) => native().kvm_ioctl_ptr(this.fd(op), Ioctl.KVM_GET_EMULATED_CPUID, ptr),
      () => "emulated CPUID",
    );
  }

  /** `KVM_GET_MSR_INDEX_LIST`: the MSRs `Vcpu.getMsrs`/`setMsrs` support. */
  getMsrIndexList(): number[] {
    return this.#msrList("KVM_GET_MSR_INDEX_LIST", Ioctl.KVM_GET_MSR_INDEX_LIST);
  }

  /**
   * `KVM_GET_MSR_FEATURE_INDEX_LIST`: the feature MSRs (read-only CPU
   * capabilities such as IA32_ARCH_CAPABILITIES) {@linkcode getFeatureMsrs}
   * reads. Needs `KVM_CAP_GET_MSR_FEATURES`.
   */
  getMsrFeatureIndexList(): number[] {
    this.#requireMsrFeatures("KVM_GET_MSR_FEATURE_INDEX_LIST");
    return this.#msrList("KVM_GET_MSR_FEATURE_INDEX_LIST", Ioctl.KVM_GET_MSR_FEATURE_INDEX_LIST);
  }

  /**
   * `KVM_GET_MSRS` on the system fd: the values of feature MSRs (from
   * {@linkcode getMsrFeatureIndexList}). An MSR the kernel does not know is a
   * KvmError(`EINVAL`) naming it.
   */
  getFeatureMsrs(indices: ArrayLike<number>): MsrEntry[] {
    const op = "KVM_GET_MSRS";
    this.#requireMsrFeatures(op);
    if (indices.length === 0) throw new KvmError(op, Errno.EINVAL, "no MSR indices given");
    for (let i = 0; i < indices.length; i++) u32(op, "MSR index", indices[i]);
    const bytes = msrBuffer(Array.from(indices));
    const n = this.ioctlPtr(op, Ioctl.KVM_GET_MSRS, pointerOf(bytes), () => "feature MSRs");
    if (n < indices.length) {
      throw new KvmError(
        op,
        Errno.EINVAL,
        `feature MSR ${hex(indices[n])} cannot be read (read ${n} of ${indices.length})`,
      );
    }
    return readMsrBuffer(bytes, n);
  }

  #requireMsrFeatures(op: string): void {
    if (this.checkExtension("GET_MSR_FEATURES") === 0) {
      throw new KvmError(op, Errno.EOPNOTSUPP, "the kernel lacks KVM_CAP_GET_MSR_FEATURES");
    }
  }

  /** A `struct kvm_msr_list` ioctl: ask with room for none, the kernel says how many. */
  #msrList(op: string, request: number): number[] {
    let count = 0;
    for (let attempt = 0; attempt < 4; attempt++) {
      const words = new Uint32Array(1 + count);
      words[0] = count;
      const r = native().kvm_ioctl_ptr(
        this.fd(op),
        request,
        pointerOf(new Uint8Array(words.buffer)),
      );
      if (r >= 0) return Array.from(words.subarray(1, 1 + words[0]));
      if (r !== -Errno.E2BIG) throw new KvmError(op, -r);
      count = words[0]; // E2BIG: the kernel wrote the count it needs
    }
    throw new KvmError(op, Errno.E2BIG, "the list kept growing");
  }

  /** Closes what this object owns before its fd. */
  protected override releaseResources(): void {
    for (const vm of [...this.#vms]) vm.close();
  }
}
