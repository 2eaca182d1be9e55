/**
 * The vCPU object: registers, the run area, and the run loop's single step.
 *
 * @module
 */

import * as Ioctl from "../abi/ioctls.ts";
import { KvmRun, type RunArea } from "../abi/kvm_run.ts";
import { KvmRegs, KvmSregs } from "../abi/x86.ts";
import { Cap } from "../abi/capabilities.ts";
import { cpuidBuffer, type CpuidEntry, MAX_CPUID_ENTRIES } from "../abi/cpuid.ts";
import { KvmDebugregs, KvmGuestDebug } from "../abi/debug.ts";
import { KVM_MAX_XCRS, KvmFpu, KvmXcr, KvmXcrs, KvmXsave } from "../abi/fpu.ts";
import { msrBuffer, type MsrEntry, readMsrBuffer } from "../abi/msr.ts";
import type { AnyStructDef, Fields, Struct, StructBase, StructDef } from "../abi/struct.ts";
import {
  KVM_MP_STATE_UNINITIALIZED,
  KvmInterrupt,
  KvmMpState,
  KvmNestedState,
  KvmSignalMask,
  KvmTprAccessCtl,
  KvmTranslation,
  KvmVapicAddr,
  KvmVcpuEvents,
} from "../abi/vcpu_state.ts";
import { hex, MAP_SHARED, PROT_READ, PROT_WRITE } from "./constants.ts";
import { getCpuidList } from "./cpuid_list.ts";
import { DUMP_MSRS, formatDump } from "./dump.ts";
import { encodeGuestDebug, type GuestDebugOptions } from "./guest_debug.ts";
import { Lapic } from "./lapic.ts";
import { Errno, KvmError, unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { ExitDecoder, type VcpuExit } from "./exit.ts";
import { type KickTarget, kickVcpu, registerKickable, unregisterKickable } from "./kick.ts";
import { Entry, VmLife } from "./lifetime.ts";

export type { RunArea };
import { OwnedFd, pointerOf } from "./owned_fd.ts";
import { u32, u64 } from "./validate.ts";

/** The 32-bit fields of a CPUID entry, each checked before `KVM_SET_CPUID2`. */
const CPUID_FIELDS = ["function", "index", "flags", "eax", "ebx", "ecx", "edx"] as const;

/** `struct kvm_regs` codec instance. */
export type Regs = InstanceType<typeof KvmRegs>;
/** `struct kvm_sregs` codec instance. */
export type Sregs = InstanceType<typeof KvmSregs>;
/** `struct kvm_fpu` codec instance. */
export type Fpu = InstanceType<typeof KvmFpu>;
/** `struct kvm_xsave` codec instance; its `bytes` may be longer than 4096 (XSAVE2). */
export type Xsave = InstanceType<typeof KvmXsave>;
/** `struct kvm_debugregs` codec instance. */
export type DebugRegs = InstanceType<typeof KvmDebugregs>;
/** `struct kvm_vcpu_events` codec instance. */
export type VcpuEvents = InstanceType<typeof KvmVcpuEvents>;
/** `struct kvm_nested_state` codec instance; its `bytes` hold the header and the data. */
export type NestedState = InstanceType<typeof KvmNestedState>;

/** One extended control register (`struct kvm_xcr`). */
export interface XcrEntry {
  /** Its number (0 for XCR0). */
  xcr: number;
  /** Its value. */
  value: bigint;
}

/** What `KVM_TRANSLATE` says about a guest virtual address. */
export interface Translation {
  /** The guest physical address. */
  physicalAddress: bigint;
  /** Whether the address is mapped. */
  valid: boolean;
  /** Whether it is writable. */
  writeable: boolean;
  /** Whether user mode may access it. */
  usermode: boolean;
}

export type { KickTarget } from "./kick.ts";

let kickHandlerInstalled = false;

/** After its deadline the watchdog signals again this often, until disarmed. */
const WATCHDOG_REPEAT_NS = 10_000_000n;

/**
 * A virtual CPU (`KVM_CREATE_VCPU`), created by `Vm.createVcpu`.
 *
 * @example
 * ```ts
 * import { Kvm } from "@deno-kvm/kvm";
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
  #adopted = false;
  #ownsMapping = true;
  #released = false;
  /** The VM's lifetime record and this vCPU's entry in it (see `lifetime.ts`); none for a raw adopt. */
  #life: VmLife | undefined;
  #slot = 0;
  /** Owner: closing goes through the record. Adopter: holds the ADOPTED lease. */
  #leased = false;
  #watchdogTimer = -1;
  #watchdogThread = 0;
  #watchdogMs = 0;
  /** performance.now() after which an unkicked EINTR means the watchdog expired; 0: disarmed. */
  #watchdogDeadline = 0;
  #regs = new KvmRegs();
  #regsPtr = pointerOf(this.#regs.bytes);
  /** Error detail, made once: a closure per call would allocate on every ioctl. */
  readonly #describe = (): string => this.label;
  #sregs = new KvmSregs();
  #sregsPtr = pointerOf(this.#sregs.bytes);
  readonly #ioctl = native().kvm_ioctl_ptr;
  /** The fd for run(), -1 once released: the kernel's EBADF replaces a check per exit. */
  #runFd = -1;

  private constructor(
    fd: number,
    id: number,
    mmapSize: number,
    onClose: () => void,
    life: VmLife | undefined,
    adopted?: { runAddress?: bigint; slot?: number },
  ) {
    super(fd);
    this.id = id;
    this.label = `vCPU ${id}`;
    this.#onClose = onClose;
    this.#mmapSize = mmapSize;
    const out = new BigUint64Array(1);
    // An adopted vCPU may borrow a run area mapped elsewhere.
    this.#adopted = adopted !== undefined;
    this.#ownsMapping = adopted?.runAddress === undefined && adopted?.slot === undefined;
    if (adopted?.runAddress !== undefined) out[0] = adopted.runAddress;
    if (life && adopted?.slot !== undefined) {
      // Joins the owner's entry: the run area and fd stay as long as this object holds it.
      if (!life.acquireLease(adopted.slot, Entry.ADOPTED, "adopt vCPU")) {
        throw new KvmError("adopt vCPU", Errno.EBADF, `${this.label} was closed by its owner`);
      }
      this.#life = life;
      this.#slot = adopted.slot;
      this.#leased = true;
      out[0] = life.runAddress(adopted.slot);
    }
    const mapped = this.#ownsMapping
      ? native().kvm_mmap(fd, BigInt(mmapSize), PROT_READ | PROT_WRITE, MAP_SHARED, 0n, out)
      : 0;
    if (mapped < 0) {
      if (!this.#adopted) native().kvm_close(fd);
      throw new KvmError("mmap vCPU run area", -mapped, this.label);
    }
    this.#runAddress = out[0];
    this.#runFd = fd;
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
    if (life && !this.#adopted) {
      try {
        this.#slot = life.addVcpu(fd, out[0], mmapSize, this.#threadId);
      } catch (e) {
        native().kvm_munmap(Deno.UnsafePointer.create(out[0]), BigInt(mmapSize));
        native().kvm_close(fd);
        throw e;
      }
      this.#life = life;
      this.#leased = true;
      registerKickable(out[0], life.words, this.#slot);
    } else if (this.#leased) {
      life!.setRunner(this.#slot, this.#threadId);
    }
  }

  /** @internal Used by `Vm.createVcpu`: takes ownership of a new vCPU fd. */
  static fromFd(
    fd: number,
    id: number,
    mmapSize: number,
    onClose: () => void = () => {},
    life?: VmLife,
  ): Vcpu {
    return new Vcpu(fd, id, mmapSize, onClose, life);
  }

  /**
   * Wraps a vCPU that another object owns (a Worker adopting a vCPU whose
   * {@linkcode Vcpu} lives on the main thread): the result never closes the fd.
   *
   * Pass the owner's {@linkcode kickTarget} as `from` (it can be posted to a
   * Worker): the adopter then joins the vCPU's lifetime record, so its fd and
   * run area stay valid until the adopter closes, even when the owner closes
   * first. Closing the owner makes the adopter's current or next `run()`
   * throw a KvmError(`KVM_RUN`, `EBADF`); adopting a closed vCPU is EBADF, and
   * a vCPU has one adopter at a time (EBUSY).
   *
   * Unsafe form: `from` as the owner's raw run-area address borrows that
   * mapping with no protection (the owner must outlive every use); without
   * `from` the adopter maps its own run area. Its kick target is the calling
   * thread. `close()` only drops the views (and its hold or its own mapping);
   * afterwards every method throws EBADF.
   */
  static adopt(fd: number, id: number, mmapSize: number, from?: bigint | KickTarget): Vcpu {
    if (typeof from === "object" && from !== null) {
      if (from.life === undefined || from.slot === undefined) {
        throw new KvmError("adopt vCPU", Errno.EINVAL, "the kick target has no lifetime record");
      }
      const life = new VmLife(from.life);
      if (life.vcpuFd(from.slot) !== fd) {
        throw new KvmError("adopt vCPU", Errno.EINVAL, `fd ${fd} is not the kick target's vCPU`);
      }
      return new Vcpu(fd, id, mmapSize, () => {}, life, { slot: from.slot });
    }
    return new Vcpu(fd, id, mmapSize, () => {}, undefined, { runAddress: from });
  }

  /** Whether this object was made by {@linkcode Vcpu.adopt}. */
  get adopted(): boolean {
    return this.#adopted;
  }

  /** Closes the vCPU; for an adopted one, only drops its views (see {@linkcode Vcpu.adopt}). */
  override close(): void {
    if (!this.#adopted) return super.close();
    if (this.#released) return;
    this.#released = true;
    this.releaseResources();
  }

  /** Whether {@linkcode close} has been called. */
  override get closed(): boolean {
    return this.#released || super.closed;
  }

  /** The fd, or EBADF after close (also for an adopted vCPU). */
  protected override fd(operation: string): number {
    if (this.#released) {
      throw new KvmError(operation, Errno.EBADF, `the ${this.label} is closed`);
    }
    return super.fd(operation);
  }

  /**
   * `KVM_RUN`: enters the guest until the next exit, and returns it decoded.
   *
   * The returned object is reused by the next call (see `exit.ts`): this path
   * allocates nothing for I/O, MMIO and HLT exits. `EINTR` (a signal or a
   * {@linkcode kick}) returns `{ reason: "interrupted" }` and clears
   * `immediate_exit`; `EAGAIN` (an AP in wait-for-SIPI woken by something
   * other than INIT/SIPI, api.rst "KVM_RUN") enters again, as QEMU does; a
   * kick still ends it, since KVM checks `immediate_exit` first. Other
   * failures throw a KvmError. The one place these errnos are handled.
   */
  run(): VcpuExit {
    // Kept small so that V8 inlines it into the caller's loop: the exit path is
    // one FFI call and the decoder; errors and EINTR/EAGAIN go to #runFailed.
    const result = this.#ioctl(this.#runFd, Ioctl.KVM_RUN, null);
    if (result >= 0) return this.#decoder.decode(this.#exitReason[0]);
    return this.#runFailed(result);
  }

  /** `KVM_RUN` returned `-errno`: enter again (EAGAIN, an unkicked EINTR) or report. */
  #runFailed(first: number): VcpuExit {
    let result = first;
    for (;;) {
      if (result >= 0) return this.#decoder.decode(this.#exitReason[0]);
      if (result === -Errno.EAGAIN) {
        result = this.#ioctl(this.#runFd, Ioctl.KVM_RUN, null);
        continue;
      }
      if (result !== -Errno.EINTR) {
        if (this.#runFd < 0) this.fd("KVM_RUN"); // closed: the usual EBADF error
        throw new KvmError("KVM_RUN", -result, this.label);
      }
      // Was this EINTR a kick, or only the watchdog's (or an unrelated) signal? Reading
      // the flag, then clearing it, would lose a kick landing in between (its signal
      // then taken for the watchdog's, KVM_RUN re-entered). A kick counts itself in the
      // record before it sets the flag; clearing first and reading the count after
      // means a kick missed here has set the flag again for the next KVM_RUN.
      let kicked: boolean;
      if (this.#life !== undefined) {
        this.#runBytes[1] = 0;
        kicked = this.#life.takeKick(this.#slot);
      } else {
        // No record (a raw adopt): only the flag tells, as a kick through the
        // owner's record still sets it.
        kicked = this.#runBytes[1] !== 0;
        this.#runBytes[1] = 0;
      }
      // The owner closed an adopted vCPU (it set immediate_exit after marking it closed,
      // so this check, ordered after the store above, cannot miss it).
      if (this.#adopted && this.#leased && !this.#life!.vcpuOpen(this.#slot)) {
        throw new KvmError("KVM_RUN", Errno.EBADF, `${this.label} was closed by its owner`);
      }
      if (kicked || this.#watchdogDeadline === 0) return this.#decoder.interrupted;
      if (performance.now() >= this.#watchdogDeadline) this.#watchdogExpired();
      result = this.#ioctl(this.#runFd, Ioctl.KVM_RUN, null);
    }
  }

  /**
   * Bounds the time this vCPU may keep running from now on: once `ms`
   * milliseconds have passed, the `run()` in progress (or the next one)
   * throws a KvmError(`KVM_RUN`, `ETIMEDOUT`) carrying the registers, and so
   * does every later `run()` until the watchdog is disarmed with `null`.
   *
   * It is a POSIX timer that sends the kick signal to the calling thread, so
   * call it from the thread that runs the vCPU. Until the deadline it costs
   * nothing (no signal, nothing added to the exit path); after it, a signal
   * every 10 ms makes sure a `KVM_RUN` that never returns on its own (a
   * guest spinning without exits, or a KVM that never reports a triple
   * fault) comes back. `close()` deletes the timer.
   *
   * @example
   * ```ts
   * import { Kvm } from "@deno-kvm/kvm";
   * using kvm = Kvm.open();
   * using vm = kvm.createVm();
   * const vcpu = vm.createVcpu(0);
   * vcpu.setWatchdog(5_000); // run() throws ETIMEDOUT after 5 s
   * vcpu.setWatchdog(null); // disarmed
   * ```
   */
  setWatchdog(ms: number | null): void {
    const op = "vCPU watchdog";
    this.fd(op);
    if (ms === null) {
      if (this.#watchdogTimer >= 0) unwrap(native().kvm_timer_set(this.#watchdogTimer, 0n, 0n), op);
      this.#watchdogDeadline = 0;
      return;
    }
    if (!Number.isFinite(ms) || ms <= 0 || ms > 2 ** 52) {
      throw new KvmError(op, Errno.EINVAL, `watchdog time ${ms} ms is not a positive number`);
    }
    const thread = native().kvm_thread_id();
    if (this.#watchdogTimer >= 0 && this.#watchdogThread !== thread) this.#deleteWatchdog();
    if (this.#watchdogTimer < 0) {
      const out = new Int32Array(1);
      unwrap(native().kvm_timer_create(thread, new Uint8Array(out.buffer)), op);
      this.#watchdogTimer = out[0];
      this.#watchdogThread = thread;
    }
    this.#watchdogMs = ms;
    this.#watchdogDeadline = performance.now() + ms;
    const first = BigInt(Math.max(1, Math.ceil(ms * 1e6)));
    unwrap(native().kvm_timer_set(this.#watchdogTimer, first, WATCHDOG_REPEAT_NS), op);
  }

  #watchdogExpired(): never {
    let state = "";
    try {
      const r = this.getRegs();
      state = `; rip=0x${r.rip.toString(16)} rsp=0x${r.rsp.toString(16)} rflags=0x${
        r.rflags.toString(16)
      }`;
    } catch { /* the registers are a courtesy */ }
    throw new KvmError(
      "KVM_RUN",
      Errno.ETIMEDOUT,
      `${this.label} still running when its ${this.#watchdogMs} ms watchdog expired${state}`,
    );
  }

  #deleteWatchdog(): void {
    if (this.#watchdogTimer < 0) return;
    native().kvm_timer_delete(this.#watchdogTimer);
    this.#watchdogTimer = -1;
    this.#watchdogDeadline = 0;
  }

  /**
   * `KVM_GET_REGS`. Returns a codec over this vCPU's own buffer (overwritten
   * by the next call) unless `into` is given.
   */
  getRegs(into?: Regs): Regs {
    if (!into) {
      this.ioctlPtr("KVM_GET_REGS", Ioctl.KVM_GET_REGS, this.#regsPtr, this.#describe);
      return this.#regs;
    }
    this.ioctlPtr("KVM_GET_REGS", Ioctl.KVM_GET_REGS, pointerOf(into.bytes), this.#describe);
    return into;
  }

  /** `KVM_SET_REGS`. */
  setRegs(regs: Regs): void {
    const ptr = regs === this.#regs ? this.#regsPtr : pointerOf(regs.bytes);
    this.ioctlPtr("KVM_SET_REGS", Ioctl.KVM_SET_REGS, ptr, this.#describe);
  }

  /** `KVM_GET_SREGS`; reuses an internal buffer unless `into` is given. */
  getSregs(into?: Sregs): Sregs {
    const target = into ?? this.#sregs;
    const ptr = into ? pointerOf(into.bytes) : this.#sregsPtr;
    this.ioctlPtr("KVM_GET_SREGS", Ioctl.KVM_GET_SREGS, ptr, this.#describe);
    return target;
  }

  /** `KVM_SET_SREGS`. */
  setSregs(sregs: Sregs): void {
    const ptr = sregs === this.#sregs ? this.#sregsPtr : pointerOf(sregs.bytes);
    this.ioctlPtr("KVM_SET_SREGS", Ioctl.KVM_SET_SREGS, ptr, this.#describe);
  }

  /** What another thread needs to {@linkcode Vcpu.kick} this vCPU. */
  get kickTarget(): KickTarget {
    if (!this.#life) return { threadId: this.#threadId, runAddress: this.#runAddress };
    return {
      threadId: this.#threadId,
      runAddress: this.#life.runAddress(this.#slot),
      life: this.#life.words,
      slot: this.#slot,
    };
  }

  /**
   * Makes the vCPU's current or next `KVM_RUN` return `EINTR` ("interrupted"):
   * sets the run area's `immediate_exit`, then signals the vCPU's thread.
   * Thread-safe; callable from any thread of the process (including one that
   * only has the {@linkcode KickTarget}). Kicking a closed vCPU does nothing.
   */
  static kick(target: KickTarget): void {
    kickVcpu(target);
  }

  /** Records the calling thread as the one that runs this vCPU (for kicks). */
  adoptThread(): void {
    this.#threadId = native().kvm_thread_id();
    if (this.#leased) this.#life!.setRunner(this.#slot, this.#threadId);
  }

  /**
   * The bytes of page `page` of this vCPU's mapping, without a copy (page 2
   * on x86 is the coalesced MMIO ring, `KVM_COALESCED_MMIO_PAGE_OFFSET`).
   * Views become empty when the vCPU closes; after close, EBADF. A page past
   * the mapping is a KvmError(EINVAL).
   */
  mappedPage(page: number): Uint8Array {
    this.fd("vCPU mapping");
    const start = page * 4096;
    if (!Number.isInteger(page) || page < 0 || start + 4096 > this.#mmapSize) {
      throw new KvmError(
        "vCPU mapping",
        Errno.EINVAL,
        `page ${page} is outside the ${this.#mmapSize}-byte mapping of ${this.label}`,
      );
    }
    return new Uint8Array(this.#runBuffer, start, 4096);
  }

  // ---- (vcpu-api helper) state, interrupts, debugging: issue 3 ----

  #buffers = new Map<AnyStructDef, { value: StructBase<Fields>; ptr: Deno.PointerValue }>();
  #vmFd = -1;
  #xsaveSize = 0;
  #hasXsave2 = false;

  /** This vCPU's own buffer for `def`, made once with its pointer. */
  #buffer<F extends Fields>(def: StructDef<F>): { value: Struct<F>; ptr: Deno.PointerValue } {
    let entry = this.#buffers.get(def);
    if (!entry) {
      const value = new def();
      entry = { value, ptr: pointerOf(value.bytes) };
      this.#buffers.set(def, entry);
    }
    return entry as unknown as { value: Struct<F>; ptr: Deno.PointerValue };
  }

  #getStruct<F extends Fields>(
    op: string,
    request: number,
    def: StructDef<F>,
    into?: Struct<F>,
  ): Struct<F> {
    const own = this.#buffer(def);
    const target = into ?? own.value;
    const ptr = target === own.value ? own.ptr : pointerOf(target.bytes);
    this.ioctlPtr(op, request, ptr, this.#describe);
    return target;
  }

  #setStruct<F extends Fields>(op: string, request: number, def: StructDef<F>, value: Struct<F>) {
    const own = this.#buffer(def);
    const ptr = value === own.value ? own.ptr : pointerOf(value.bytes);
    this.ioctlPtr(op, request, ptr, this.#describe);
  }

  /**
   * @internal Called by `Vm.createVcpu`: the VM's fd (borrowed, not owned),
   * for the `KVM_CHECK_EXTENSION`s that only a VM answers (XSAVE2 size, nested state).
   */
  attachVm(vmFd: number): void {
    this.#vmFd = vmFd;
  }

  /** `KVM_CHECK_EXTENSION` on the VM's fd; -1 when this vCPU does not know its VM. */
  #vmExtension(cap: number): number {
    if (this.#vmFd < 0) return -1;
    return unwrap(
      native().kvm_ioctl_val(this.#vmFd, Ioctl.KVM_CHECK_EXTENSION, BigInt(cap)),
      "KVM_CHECK_EXTENSION",
    );
  }

  /** `KVM_GET_FPU`: x87, MMX and SSE state. Reuses an internal buffer unless `into` is given. */
  getFpu(into?: Fpu): Fpu {
    return this.#getStruct("KVM_GET_FPU", Ioctl.KVM_GET_FPU, KvmFpu, into);
  }

  /** `KVM_SET_FPU`. */
  setFpu(fpu: Fpu): void {
    this.#setStruct("KVM_SET_FPU", Ioctl.KVM_SET_FPU, KvmFpu, fpu);
  }

  /**
   * Bytes of this vCPU's XSAVE state: `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` on
   * the VM (at least 4096), or 4096 (`struct kvm_xsave`) without XSAVE2.
   */
  get xsaveSize(): number {
    if (!this.#xsaveSize) {
      const size = this.#vmExtension(Cap.XSAVE2);
      this.#hasXsave2 = size > 0;
      this.#xsaveSize = Math.max(size, KvmXsave.size);
    }
    return this.#xsaveSize;
  }

  /**
   * `KVM_GET_XSAVE2` when the kernel has `KVM_CAP_XSAVE2`, else
   * `KVM_GET_XSAVE`: the XSAVE area. The codec's `bytes` hold all
   * {@linkcode xsaveSize} bytes; its buffer is reused by the next call.
   */
  getXsave(): Xsave {
    const size = this.xsaveSize;
    let own = this.#buffers.get(KvmXsave);
    if (!own || own.value.bytes.length !== size) {
      const value = new KvmXsave(new Uint8Array(new BigUint64Array(size / 8).buffer));
      own = { value, ptr: pointerOf(value.bytes) };
      this.#buffers.set(KvmXsave, own);
    }
    if (this.#hasXsave2) {
      this.ioctlPtr("KVM_GET_XSAVE2", Ioctl.KVM_GET_XSAVE2, own.ptr, this.#describe);
    } else {
      this.ioctlPtr("KVM_GET_XSAVE", Ioctl.KVM_GET_XSAVE, own.ptr, this.#describe);
    }
    return own.value as unknown as Xsave;
  }

  /** `KVM_SET_XSAVE`: the kernel reads {@linkcode xsaveSize} bytes. */
  setXsave(xsave: Xsave): void {
    if (xsave.bytes.length < this.xsaveSize) {
      throw new KvmError(
        "KVM_SET_XSAVE",
        Errno.EINVAL,
        `the XSAVE area has ${xsave.bytes.length} bytes, this VM's is ${this.xsaveSize}`,
      );
    }
    const own = this.#buffers.get(KvmXsave);
    const ptr = own && own.value === (xsave as unknown) ? own.ptr : pointerOf(xsave.bytes);
    this.ioctlPtr("KVM_SET_XSAVE", Ioctl.KVM_SET_XSAVE, ptr, this.#describe);
  }

  /** `KVM_GET_XCRS`: the extended control registers (XCR0). */
  getXcrs(): XcrEntry[] {
    const xcrs = this.#getStruct("KVM_GET_XCRS", Ioctl.KVM_GET_XCRS, KvmXcrs);
    const out: XcrEntry[] = [];
    for (let i = 0; i < Math.min(xcrs.nrXcrs, KVM_MAX_XCRS); i++) {
      const at = 8 + i * KvmXcr.size;
      const xcr = new KvmXcr(xcrs.bytes.subarray(at, at + KvmXcr.size));
      out.push({ xcr: xcr.xcr, value: xcr.value });
    }
    return out;
  }

  /** `KVM_SET_XCRS`, e.g. `[{ xcr: 0, value: 0x7n }]` (x87, SSE, AVX). */
  setXcrs(entries: readonly XcrEntry[]): void {
    for (let i = 0; i < entries.length; i++) {
      u32("KVM_SET_XCRS", `entry ${i}: xcr`, entries[i].xcr);
      u64("KVM_SET_XCRS", `entry ${i}: value`, entries[i].value);
    }
    if (entries.length > KVM_MAX_XCRS) {
      throw new KvmError(
        "KVM_SET_XCRS",
        Errno.E2BIG,
        `${entries.length} XCRs given, at most ${KVM_MAX_XCRS}`,
      );
    }
    const xcrs = this.#buffer(KvmXcrs).value.clear();
    xcrs.nrXcrs = entries.length;
    entries.forEach((e, i) => {
      const at = 8 + i * KvmXcr.size;
      new KvmXcr(xcrs.bytes.subarray(at, at + KvmXcr.size)).assign({ xcr: e.xcr, value: e.value });
    });
    this.#setStruct("KVM_SET_XCRS", Ioctl.KVM_SET_XCRS, KvmXcrs, xcrs);
  }

  /** `KVM_GET_DEBUGREGS`: the guest's DR0-DR3, DR6, DR7. */
  getDebugRegs(into?: DebugRegs): DebugRegs {
    return this.#getStruct("KVM_GET_DEBUGREGS", Ioctl.KVM_GET_DEBUGREGS, KvmDebugregs, into);
  }

  /** `KVM_SET_DEBUGREGS` (`flags` must be 0). */
  setDebugRegs(regs: DebugRegs): void {
    this.#setStruct("KVM_SET_DEBUGREGS", Ioctl.KVM_SET_DEBUGREGS, KvmDebugregs, regs);
  }

  /**
   * `KVM_GET_MSRS`: the values of the MSRs `indices`. An MSR the kernel
   * cannot read stops it; that is a KvmError(`EINVAL`) naming the MSR.
   */
  getMsrs(indices: ArrayLike<number>): MsrEntry[] {
    const op = "KVM_GET_MSRS";
    this.fd(op);
    if (indices.length === 0) throw new KvmError(op, Errno.EINVAL, "no MSR indices given");
    for (let i = 0; i < indices.length; i++) u32(op, `MSR index`, indices[i]);
    const bytes = msrBuffer(Array.from(indices));
    const n = this.ioctlPtr(op, Ioctl.KVM_GET_MSRS, pointerOf(bytes), () => {
      return `${this.label}, ${indices.length} MSRs`;
    });
    if (n < indices.length) {
      throw new KvmError(
        op,
        Errno.EINVAL,
        `${this.label}: MSR ${hex(indices[n])} cannot be read (read ${n} of ${indices.length})`,
      );
    }
    return readMsrBuffer(bytes, n);
  }

  /**
   * `KVM_SET_MSRS`. The kernel stops at the first MSR it refuses; that is a
   * KvmError(`EINVAL`) naming it (the ones before it were written).
   */
  setMsrs(entries: ArrayLike<MsrEntry>): void {
    const op = "KVM_SET_MSRS";
    this.fd(op);
    if (entries.length === 0) throw new KvmError(op, Errno.EINVAL, "no MSRs given");
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i];
      u32(op, `entry ${i}: MSR index`, e.index);
      u64(op, `entry ${i}: MSR ${hex(e.index)} data`, e.data);
    }
    const bytes = msrBuffer(entries);
    const n = this.ioctlPtr(op, Ioctl.KVM_SET_MSRS, pointerOf(bytes), () => {
      return `${this.label}, ${entries.length} MSRs`;
    });
    if (n < entries.length) {
      throw new KvmError(
        op,
        Errno.EINVAL,
        `${this.label}: MSR ${hex(entries[n].index)} refused the value ${
          hex(entries[n].data)
        } (wrote ${n} of ${entries.length})`,
      );
    }
  }

  /** @internal The MSRs among `indices` the kernel reads, stopping at the first it cannot. */
  #readableMsrs(indices: number[]): MsrEntry[] {
    const bytes = msrBuffer(indices);
    const n = native().kvm_ioctl_ptr(this.fd("KVM_GET_MSRS"), Ioctl.KVM_GET_MSRS, pointerOf(bytes));
    return n > 0 ? readMsrBuffer(bytes, n) : [];
  }

  /**
   * `KVM_SET_CPUID2`: what CPUID reports to the guest (start from
   * `Kvm.getSupportedCpuid()`). More than 256 entries is a KvmError(`E2BIG`).
   */
  setCpuid2(entries: readonly CpuidEntry[]): void {
    const op = "KVM_SET_CPUID2";
    this.fd(op);
    if (entries.length > MAX_CPUID_ENTRIES) {
      throw new KvmError(
        op,
        Errno.E2BIG,
        `${entries.length} CPUID entries given, the kernel takes at most ${MAX_CPUID_ENTRIES}`,
      );
    }
    entries.forEach((e, i) => {
      for (const field of CPUID_FIELDS) u32(op, `entry ${i}: ${field}`, e[field]);
    });
    const bytes = cpuidBuffer(entries);
    this.ioctlPtr(op, Ioctl.KVM_SET_CPUID2, pointerOf(bytes), () => {
      return `${this.label}, ${entries.length} entries`;
    });
  }

  /** `KVM_GET_CPUID2`: the CPUID entries set on this vCPU (growing the buffer on E2BIG). */
  getCpuid2(): CpuidEntry[] {
    return getCpuidList(
      "KVM_GET_CPUID2",
      (ptr) => native().kvm_ioctl_ptr(this.fd("KVM_GET_CPUID2"), Ioctl.KVM_GET_CPUID2, ptr),
      this.#describe,
      true,
    );
  }

  /**
   * `KVM_GET_LAPIC`: the in-kernel local APIC's registers (needs
   * `Vm.createIrqchip`). Reuses an internal buffer unless `into` is given.
   */
  getLapic(into?: Lapic): Lapic {
    const own = this.#lapic ??= new Lapic();
    const target = into ?? own;
    const ptr = target === own
      ? (this.#lapicPtr ??= pointerOf(own.bytes))
      : pointerOf(target.bytes);
    this.ioctlPtr("KVM_GET_LAPIC", Ioctl.KVM_GET_LAPIC, ptr, this.#describe);
    return target;
  }
  #lapic?: Lapic;
  #lapicPtr?: Deno.PointerValue;

  /** `KVM_SET_LAPIC`. */
  setLapic(lapic: Lapic): void {
    const ptr = lapic === this.#lapic && this.#lapicPtr ? this.#lapicPtr : pointerOf(lapic.bytes);
    this.ioctlPtr("KVM_SET_LAPIC", Ioctl.KVM_SET_LAPIC, ptr, this.#describe);
  }

  /** The IA32_APIC_BASE MSR (APIC address, BSP bit 8, enable bit 11), from `KVM_GET_SREGS`. */
  getApicBase(): bigint {
    return this.getSregs().apicBase;
  }

  /** Sets IA32_APIC_BASE through `KVM_SET_SREGS`. */
  setApicBase(value: bigint): void {
    u64("KVM_SET_SREGS", "apicBase value", value);
    const sregs = this.getSregs();
    sregs.apicBase = value;
    this.setSregs(sregs);
  }

  /** `KVM_GET_MP_STATE`: a `KVM_MP_STATE_*` value. */
  getMpState(): number {
    return this.#getStruct("KVM_GET_MP_STATE", Ioctl.KVM_GET_MP_STATE, KvmMpState).mpState;
  }

  /**
   * `KVM_SET_MP_STATE`. Anything but `KVM_MP_STATE_RUNNABLE` needs the
   * in-kernel irqchip.
   */
  setMpState(state: number): void {
    const mp = this.#buffer(KvmMpState).value;
    mp.mpState = u32("KVM_SET_MP_STATE", "state", state);
    this.#setStruct("KVM_SET_MP_STATE", Ioctl.KVM_SET_MP_STATE, KvmMpState, mp);
  }

  /**
   * libkvm's `kvm_reset_mpstate`: sets the MP state to
   * `KVM_MP_STATE_UNINITIALIZED`, so the vCPU waits for INIT/SIPI (needs the
   * in-kernel irqchip).
   */
  reset(): void {
    this.setMpState(KVM_MP_STATE_UNINITIALIZED);
  }

  /** `KVM_GET_VCPU_EVENTS`: pending and injected exceptions, interrupts, NMI, SMI. */
  getVcpuEvents(into?: VcpuEvents): VcpuEvents {
    return this.#getStruct("KVM_GET_VCPU_EVENTS", Ioctl.KVM_GET_VCPU_EVENTS, KvmVcpuEvents, into);
  }

  /** `KVM_SET_VCPU_EVENTS` (`flags` says which optional parts apply). */
  setVcpuEvents(events: VcpuEvents): void {
    this.#setStruct("KVM_SET_VCPU_EVENTS", Ioctl.KVM_SET_VCPU_EVENTS, KvmVcpuEvents, events);
  }

  /**
   * `KVM_INTERRUPT`: queues external interrupt `vector` for a VM without an
   * in-kernel irqchip (a userspace PIC). Inject only when
   * {@linkcode readyForInterruptInjection}; otherwise set
   * {@linkcode requestInterruptWindow} and wait for the `"irqWindowOpen"` exit.
   * With an in-kernel irqchip the kernel refuses with `ENXIO`.
   */
  interrupt(vector: number): void {
    const op = "KVM_INTERRUPT";
    if (!Number.isInteger(vector) || vector < 0 || vector > 255) {
      throw new KvmError(op, Errno.EINVAL, `vector ${vector} is not 0..255`);
    }
    const irq = this.#buffer(KvmInterrupt).value;
    irq.irq = vector;
    this.#setStruct(op, Ioctl.KVM_INTERRUPT, KvmInterrupt, irq);
  }

  /** `KVM_NMI`: queues a non-maskable interrupt (vector 2). */
  nmi(): void {
    this.ioctlVal("KVM_NMI", Ioctl.KVM_NMI, 0, this.#describe);
  }

  /** `KVM_SMI`: queues a system management interrupt (needs `KVM_CAP_X86_SMM`). */
  smi(): void {
    this.ioctlVal("KVM_SMI", Ioctl.KVM_SMI, 0, this.#describe);
  }

  /**
   * `KVM_SET_GUEST_DEBUG`: single stepping, `int3` interception, and up to
   * four hardware breakpoints/watchpoints. Each event is a `"debug"` exit;
   * `setGuestDebug({ enable: false })` turns debugging off. More than four
   * breakpoints, or a misaligned or oversized one, is a KvmError(`EINVAL`).
   */
  setGuestDebug(options: GuestDebugOptions): void {
    const debug = this.#buffer(KvmGuestDebug).value;
    encodeGuestDebug(options, debug);
    this.#setStruct("KVM_SET_GUEST_DEBUG", Ioctl.KVM_SET_GUEST_DEBUG, KvmGuestDebug, debug);
  }

  /**
   * `KVM_SET_SIGNAL_MASK`: the signals (numbers 1-64) blocked while the guest
   * runs; `null` removes the guest-mode mask.
   */
  setSignalMask(signals: readonly number[] | null): void {
    const op = "KVM_SET_SIGNAL_MASK";
    if (signals === null) {
      this.ioctlPtr(op, Ioctl.KVM_SET_SIGNAL_MASK, null, this.#describe);
      return;
    }
    const bytes = new Uint8Array(new BigUint64Array(2).buffer);
    new KvmSignalMask(bytes).len = 8; // the kernel's sigset_t is 64 bits on x86-64
    let set = 0n;
    for (const sig of signals) {
      if (!Number.isInteger(sig) || sig < 1 || sig > 64) {
        throw new KvmError(op, Errno.EINVAL, `signal ${sig} is not 1..64`);
      }
      set |= 1n << BigInt(sig - 1);
    }
    new DataView(bytes.buffer).setBigUint64(4, set, true);
    this.ioctlPtr(op, Ioctl.KVM_SET_SIGNAL_MASK, pointerOf(bytes), this.#describe);
  }

  /**
   * `KVM_TPR_ACCESS_REPORTING`: with `true`, guest accesses to the LAPIC's
   * TPR exit as `"tprAccess"` (needs the in-kernel irqchip).
   */
  tprAccessReporting(enabled: boolean): void {
    const ctl = this.#buffer(KvmTprAccessCtl).value.clear();
    ctl.enabled = enabled ? 1 : 0;
    this.#setStruct(
      "KVM_TPR_ACCESS_REPORTING",
      Ioctl.KVM_TPR_ACCESS_REPORTING,
      KvmTprAccessCtl,
      ctl,
    );
  }

  /** `KVM_SET_VAPIC_ADDR`: guest physical address of the VAPIC page (0 turns it off). */
  setVapicAddr(address: bigint | number): void {
    const vapic = this.#buffer(KvmVapicAddr).value;
    vapic.vapicAddr = u64("KVM_SET_VAPIC_ADDR", "address", address);
    this.#setStruct("KVM_SET_VAPIC_ADDR", Ioctl.KVM_SET_VAPIC_ADDR, KvmVapicAddr, vapic);
  }

  /** `KVM_GET_TSC_KHZ`: the guest's TSC frequency in kHz. */
  getTscKhz(): number {
    return this.ioctlVal("KVM_GET_TSC_KHZ", Ioctl.KVM_GET_TSC_KHZ, 0, this.#describe);
  }

  /**
   * `KVM_SET_TSC_KHZ`. A rate away from the host's needs TSC scaling
   * (`KVM_CAP_TSC_CONTROL`); without it the kernel refuses rates above the host's.
   */
  setTscKhz(khz: number): void {
    u32("KVM_SET_TSC_KHZ", "khz", khz); // the kernel truncates it to 32 bits
    this.ioctlVal("KVM_SET_TSC_KHZ", Ioctl.KVM_SET_TSC_KHZ, khz, () => `${this.label}, ${khz} kHz`);
  }

  /**
   * `KVM_KVMCLOCK_CTRL`: tells the guest's kvmclock that the VM was paused (so
   * its soft-lockup watchdog keeps quiet). `EINVAL` when the guest has not
   * enabled kvmclock.
   */
  kvmclockCtrl(): void {
    this.ioctlVal("KVM_KVMCLOCK_CTRL", Ioctl.KVM_KVMCLOCK_CTRL, 0, this.#describe);
  }

  /** `KVM_TRANSLATE`: the guest physical address of guest virtual address `gva`. */
  translate(gva: bigint | number): Translation {
    const t = this.#buffer(KvmTranslation).value.clear();
    t.linearAddress = u64("KVM_TRANSLATE", "gva", gva);
    this.#getStruct("KVM_TRANSLATE", Ioctl.KVM_TRANSLATE, KvmTranslation, t);
    return {
      physicalAddress: t.physicalAddress,
      valid: t.valid !== 0,
      writeable: t.writeable !== 0,
      usermode: t.usermode !== 0,
    };
  }

  /** The guest's RFLAGS.IF at the last exit (run area `if_flag`; libkvm's `kvm_get_interrupt_flag`). */
  get ifFlag(): boolean {
    return this.runArea.ifFlag !== 0;
  }

  /** Whether `interrupt()` can inject now (run area; libkvm's `kvm_is_ready_for_interrupt_injection`). */
  get readyForInterruptInjection(): boolean {
    return this.runArea.readyForInterruptInjection !== 0;
  }

  /** CR8 (the task priority) at the last exit (run area; libkvm's `kvm_get_cr8`). */
  get cr8(): bigint {
    return this.runArea.cr8;
  }

  /** Sets the CR8 the next `run()` enters with (run area; libkvm's `kvm_set_cr8`). */
  set cr8(value: bigint) {
    this.runArea.cr8 = value;
  }

  /** IA32_APIC_BASE at the last exit (run area; libkvm's `kvm_get_apic_base`). */
  get apicBase(): bigint {
    return this.runArea.apicBase;
  }

  /**
   * Ask for an `"irqWindowOpen"` exit as soon as the guest can take an
   * interrupt (run area `request_interrupt_window`).
   */
  get requestInterruptWindow(): boolean {
    return this.runArea.requestInterruptWindow !== 0;
  }
  set requestInterruptWindow(value: boolean) {
    this.runArea.requestInterruptWindow = value ? 1 : 0;
  }

  /**
   * `KVM_GET_NESTED_STATE`: the nested-virtualization state (header and
   * VMCS12/VMCB12 data), growing the buffer to the size the kernel reports.
   * Without `KVM_CAP_NESTED_STATE` a KvmError(`EOPNOTSUPP`) says so.
   */
  getNestedState(): NestedState {
    const op = "KVM_GET_NESTED_STATE";
    this.fd(op);
    this.#requireNested(op);
    let size = KvmNestedState.size;
    for (let attempt = 0; attempt < 4; attempt++) {
      const state = new KvmNestedState(
        new Uint8Array(new BigUint64Array(Math.ceil(size / 8)).buffer),
      );
      state.size = size;
      const r = native().kvm_ioctl_ptr(
        this.fd(op),
        Ioctl.KVM_GET_NESTED_STATE,
        pointerOf(state.bytes),
      );
      if (r >= 0) {
        return new KvmNestedState(state.bytes.slice(0, Math.max(state.size, KvmNestedState.size)));
      }
      if (r !== -Errno.E2BIG) throw new KvmError(op, -r, this.label);
      size = Math.max(state.size, size * 2);
    }
    throw new KvmError(op, Errno.E2BIG, `${this.label}: the state kept growing past ${size} bytes`);
  }

  /** `KVM_SET_NESTED_STATE`: restores what {@linkcode getNestedState} returned. */
  setNestedState(state: NestedState): void {
    const op = "KVM_SET_NESTED_STATE";
    this.fd(op);
    this.#requireNested(op);
    if (state.bytes.length < state.size) {
      throw new KvmError(
        op,
        Errno.EINVAL,
        `the state says ${state.size} bytes but has ${state.bytes.length}`,
      );
    }
    this.ioctlPtr(op, Ioctl.KVM_SET_NESTED_STATE, pointerOf(state.bytes), this.#describe);
  }

  #requireNested(op: string): void {
    if (this.#vmExtension(Cap.NESTED_STATE) === 0) {
      throw new KvmError(
        op,
        Errno.EOPNOTSUPP,
        "the kernel lacks KVM_CAP_NESTED_STATE (nested virtualization is off or unsupported)",
      );
    }
  }

  /**
   * The vCPU's state as text, like libkvm's `kvm_dump_vcpu`: general
   * registers, segments, GDT/IDT, control registers, EFER, APIC base, system
   * MSRs, pending events and the MP state.
   */
  dump(): string {
    const regs = this.getRegs(new KvmRegs());
    const sregs = this.getSregs(new KvmSregs());
    const events = this.getVcpuEvents(new KvmVcpuEvents());
    return formatDump({
      label: this.label,
      regs,
      sregs,
      events,
      mpState: this.getMpState(),
      msrs: this.#readableMsrs(Object.keys(DUMP_MSRS).map(Number)),
    });
  }

  /** Closes what this object owns before its fd. */
  protected override releaseResources(): void {
    this.#runFd = -1;
    this.#deleteWatchdog();
    const address = this.#runAddress;
    this.#runAddress = 0n;
    // Detach first so stale views (runArea, exits) read nothing instead of faulting.
    this.#runBuffer.transfer(0);
    if (this.#leased && this.#adopted) {
      // Gives back this thread's hold: the owner (or whoever is last) unmaps.
      this.#leased = false;
      this.#life!.releaseLease(this.#slot, Entry.ADOPTED);
    } else if (this.#leased) {
      // The owner's run area and fd go with the record's last user (closeFd).
      unregisterKickable(address, this.#life!.words);
    } else if (this.#ownsMapping) {
      // A borrowed run area belongs to its owner.
      native().kvm_munmap(Deno.UnsafePointer.create(address), BigInt(this.#mmapSize));
    }
    this.#onClose();
  }

  /** An owner's fd goes to the lifetime record with its run area (see `lifetime.ts`). */
  protected override closeFd(fd: number): void {
    if (this.#life && !this.#adopted) this.#life.closeVcpu(this.#slot);
    else native().kvm_close(fd);
  }
}
