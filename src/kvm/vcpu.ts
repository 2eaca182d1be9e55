/**
 * The vCPU object: registers, the run area, and the run loop's single step.
 *
 * @module
 */

import * as Ioctl from "../abi/ioctls.ts";
import { KvmRun, type RunArea } from "../abi/kvm_run.ts";
import { KvmRegs, KvmSregs } from "../abi/x86.ts";
import { Errno, KvmError, unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { ExitDecoder, type VcpuExit } from "./exit.ts";

export type { RunArea };
import { OwnedFd, pointerOf } from "./owned_fd.ts";

const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;

/** `struct kvm_regs` codec instance. */
export type Regs = InstanceType<typeof KvmRegs>;
/** `struct kvm_sregs` codec instance. */
export type Sregs = InstanceType<typeof KvmSregs>;

/**
 * What another thread needs to kick this vCPU out of `KVM_RUN`: plain
 * numbers, so it can be posted to a Worker.
 */
export interface KickTarget {
  /** Kernel thread id of the thread that runs the vCPU. */
  threadId: number;
  /** Host address of the run area (its `immediate_exit` byte is at +1). */
  runAddress: bigint;
}

let kickHandlerInstalled = false;

/**
 * A virtual CPU (`KVM_CREATE_VCPU`), created by `Vm.createVcpu`.
 *
 * @example
 * ```ts
 * import { Kvm } from "../../mod.ts";
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * const ram = vm.allocateMemory(0x1000);
 * ram.bytes.set([0xe6, 0x10, 0xf4]); // out 0x10, al; hlt
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0x1000, memory: ram });
 * const vcpu = vm.createVcpu(0);
 * const sregs = vcpu.getSregs();
 * sregs.cs.base = 0n;
 * sregs.cs.selector = 0;
 * vcpu.setSregs(sregs);
 * vcpu.setRegs(vcpu.getRegs().assign({ rip: 0n, rax: 42n, rflags: 2n }));
 * for (;;) {
 *   const exit = vcpu.run();
 *   if (exit.reason === "io") console.log(exit.port, exit.value);
 *   else if (exit.reason === "hlt") break;
 * }
 * ```
 */
export class Vcpu extends OwnedFd {
  /** Names this object in error messages. */
  protected readonly label: string;
  /** The vCPU id (its initial APIC id). */
  readonly id: number;
  /** The shared run area, read and written without copies. */
  readonly runArea: RunArea;
  #runAddress: bigint;
  #runBuffer: ArrayBuffer;
  #mmapSize: number;
  #exitReason: Uint32Array;
  #runBytes: Uint8Array;
  #decoder: ExitDecoder;
  #onClose: () => void;
  #threadId: number;
  #regs = new KvmRegs();
  #regsPtr = pointerOf(this.#regs.bytes);
  #sregs = new KvmSregs();
  #sregsPtr = pointerOf(this.#sregs.bytes);
  readonly #ioctl = native().kvm_ioctl_ptr;

  private constructor(fd: number, id: number, mmapSize: number, onClose: () => void) {
    super(fd);
    this.id = id;
    this.label = `vCPU ${id}`;
    this.#onClose = onClose;
    this.#mmapSize = mmapSize;
    const out = new BigUint64Array(1);
    const mapped = native().kvm_mmap(
      fd,
      BigInt(mmapSize),
      PROT_READ | PROT_WRITE,
      MAP_SHARED,
      0n,
      out,
    );
    if (mapped < 0) {
      native().kvm_close(fd);
      throw new KvmError("mmap vCPU run area", -mapped, this.label);
    }
    this.#runAddress = out[0];
    this.#runBuffer = Deno.UnsafePointerView.getArrayBuffer(
      Deno.UnsafePointer.create(out[0])!,
      mmapSize,
    );
    this.#runBytes = new Uint8Array(this.#runBuffer);
    this.runArea = new KvmRun(this.#runBytes);
    this.#exitReason = new Uint32Array(this.#runBuffer, 8, 1);
    this.#decoder = new ExitDecoder(this.runArea);
    if (!kickHandlerInstalled) {
      unwrap(native().kvm_install_kick_handler(), "sigaction (vCPU kick signal)");
      kickHandlerInstalled = true;
    }
    this.#threadId = native().kvm_thread_id();
  }

  /** @internal Used by `Vm.createVcpu`; also adopts a vCPU fd passed to a Worker. */
  static fromFd(fd: number, id: number, mmapSize: number, onClose: () => void = () => {}): Vcpu {
    return new Vcpu(fd, id, mmapSize, onClose);
  }

  /**
   * `KVM_RUN`: enters the guest until the next exit, and returns it decoded.
   *
   * The returned object is reused by the next call (see `exit.ts`): this path
   * allocates nothing for I/O, MMIO and HLT exits. `EINTR` (a signal or a
   * {@linkcode kick}) returns `{ reason: "interrupted" }` and clears
   * `immediate_exit`; other failures throw a KvmError.
   */
  run(): VcpuExit {
    const result = this.#ioctl(this.fd("KVM_RUN"), Ioctl.KVM_RUN, null);
    if (result < 0) {
      if (result === -Errno.EINTR) {
        this.#runBytes[1] = 0;
        return this.#decoder.interrupted;
      }
      throw new KvmError("KVM_RUN", -result, this.label);
    }
    return this.#decoder.decode(this.#exitReason[0]);
  }

  /**
   * `KVM_GET_REGS`. Returns a codec over this vCPU's own buffer (overwritten
   * by the next call) unless `into` is given.
   */
  getRegs(into?: Regs): Regs {
    if (!into) {
      this.ioctlPtr("KVM_GET_REGS", Ioctl.KVM_GET_REGS, this.#regsPtr, () => this.label);
      return this.#regs;
    }
    this.ioctlPtr("KVM_GET_REGS", Ioctl.KVM_GET_REGS, pointerOf(into.bytes), () => this.label);
    return into;
  }

  /** `KVM_SET_REGS`. */
  setRegs(regs: Regs): void {
    const ptr = regs === this.#regs ? this.#regsPtr : pointerOf(regs.bytes);
    this.ioctlPtr("KVM_SET_REGS", Ioctl.KVM_SET_REGS, ptr, () => this.label);
  }

  /** `KVM_GET_SREGS`; reuses an internal buffer unless `into` is given. */
  getSregs(into?: Sregs): Sregs {
    const target = into ?? this.#sregs;
    const ptr = into ? pointerOf(into.bytes) : this.#sregsPtr;
    this.ioctlPtr("KVM_GET_SREGS", Ioctl.KVM_GET_SREGS, ptr, () => this.label);
    return target;
  }

  /** `KVM_SET_SREGS`. */
  setSregs(sregs: Sregs): void {
    const ptr = sregs === this.#sregs ? this.#sregsPtr : pointerOf(sregs.bytes);
    this.ioctlPtr("KVM_SET_SREGS", Ioctl.KVM_SET_SREGS, ptr, () => this.label);
  }

  /** What another thread needs to {@linkcode Vcpu.kick} this vCPU. */
  get kickTarget(): KickTarget {
    return { threadId: this.#threadId, runAddress: this.#runAddress };
  }

  /**
   * Makes the vCPU's current or next `KVM_RUN` return `EINTR` ("interrupted"):
   * sets the run area's `immediate_exit`, then signals the vCPU's thread.
   * Thread-safe; callable from any thread of the process (including one that
   * only has the {@linkcode KickTarget}).
   */
  static kick(target: KickTarget): void {
    const immediateExit = Deno.UnsafePointer.create(target.runAddress + 1n);
    unwrap(native().kvm_kick(target.threadId, immediateExit), "tgkill (vCPU kick)");
  }

  /** Records the calling thread as the one that runs this vCPU (for kicks). */
  adoptThread(): void {
    this.#threadId = native().kvm_thread_id();
  }

  /** Closes what this object owns before its fd. */
  protected override releaseResources(): void {
    const address = this.#runAddress;
    this.#runAddress = 0n;
    // Detach first so stale views (runArea, exits) read nothing instead of faulting.
    this.#runBuffer.transfer(0);
    native().kvm_munmap(Deno.UnsafePointer.create(address), BigInt(this.#mmapSize));
    this.#onClose();
  }
}
