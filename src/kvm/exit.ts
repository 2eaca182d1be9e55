/**
 * vCPU exits as a tagged union on `reason`.
 *
 * Each vCPU owns one instance of every exit class and refills the one that
 * matches on each `run()`, so decoding an exit allocates nothing. An exit
 * object is therefore valid until the next `run()` of its vCPU: copy what must
 * outlive it.
 *
 * @module
 */

import { ExitReason, type RunArea } from "../abi/kvm_run.ts";
import { decodeX86, hexBytes, type X86Instruction, type X86Mode } from "./x86_decode.ts";

type Run = RunArea;

/** Direction of a port I/O exit. */
export type IoDirection = "in" | "out";

/**
 * `KVM_EXIT_IO`: the guest executed IN/OUT (or INS/OUTS). For `"out"`, `data`
 * holds `size * count` bytes the guest wrote; for `"in"`, write `size * count`
 * bytes into `data` before the next `run()`. String instructions may arrive
 * as one exit with `count > 1` or as several with `count = 1`.
 */
export class IoExit {
  /** Discriminant. */
  readonly reason = "io" as const;
  /** `"in"` (guest reads) or `"out"` (guest writes). */
  direction: IoDirection = "out";
  /** The port. */
  port = 0;
  /** Bytes per element: 1, 2 or 4. */
  size = 1;
  /** Elements: more than 1 for `rep ins/outs`. */
  count = 1;
  /** `size * count` bytes inside the run area (no copy). */
  data: Uint8Array = new Uint8Array(0);
  #bytes: Uint8Array;
  #view: DataView;
  #cacheAt = -1;
  #cacheLength = -1;

  /** @internal */
  constructor(runBytes: Uint8Array) {
    this.#bytes = runBytes;
    this.#view = new DataView(runBytes.buffer, runBytes.byteOffset, runBytes.byteLength);
  }

  /** @internal Refills from the run area; reuses the data view when its place is unchanged. */
  fill(run: Run): this {
    this.direction = run.ioDirection === 0 ? "in" : "out";
    this.port = run.ioPort;
    this.size = run.ioSize;
    this.count = run.ioCount;
    const at = Number(run.view.getUint32(40, true));
    const length = this.size * this.count;
    if (at !== this.#cacheAt || length !== this.#cacheLength) {
      this.#cacheAt = at;
      this.#cacheLength = length;
      this.data = this.#bytes.subarray(at, at + length);
    }
    return this;
  }

  /** The first element as a number (1, 2 or 4 bytes, little-endian). */
  get value(): number {
    const at = this.data.byteOffset - this.#bytes.byteOffset;
    return this.size === 1
      ? this.#view.getUint8(at)
      : this.size === 2
      ? this.#view.getUint16(at, true)
      : this.#view.getUint32(at, true);
  }

  /** Sets the first element, for an `"in"` exit. */
  set value(v: number) {
    const at = this.data.byteOffset - this.#bytes.byteOffset;
    if (this.size === 1) this.#view.setUint8(at, v);
    else if (this.size === 2) this.#view.setUint16(at, v, true);
    else this.#view.setUint32(at, v >>> 0, true);
  }
}

/**
 * `KVM_EXIT_MMIO`: the guest accessed a guest physical address with no memory
 * slot (or wrote to a read-only one). For a read, write `length` bytes into
 * `data` before the next `run()`.
 */
export class MmioExit {
  /** Discriminant. */
  readonly reason = "mmio" as const;
  /** Guest physical address (a number: physical addresses fit in 52 bits). */
  address = 0;
  /** Whether the guest wrote. */
  isWrite = false;
  /** Access size in bytes: 1, 2, 4 or 8. */
  length = 0;
  /** `length` bytes inside the run area (no copy). */
  data: Uint8Array;
  #views: Uint8Array[];
  #run: Run;

  /** @internal */
  constructor(run: Run) {
    this.#run = run;
    // One view per possible length, made once.
    this.#views = Array.from({ length: 9 }, (_, n) => run.mmioData.subarray(0, n));
    this.data = this.#views[0];
  }

  /** @internal */
  fill(run: Run): this {
    const view = run.view;
    this.address = view.getUint32(32, true) + view.getUint32(36, true) * 0x1_0000_0000;
    this.length = run.mmioLen;
    this.isWrite = run.mmioIsWrite !== 0;
    this.data = this.#views[this.length <= 8 ? this.length : 8];
    return this;
  }

  /** The data as an unsigned number, for accesses up to 4 bytes. */
  get value(): number {
    const v = this.#run.view;
    switch (this.length) {
      case 1:
        return v.getUint8(40);
      case 2:
        return v.getUint16(40, true);
      default:
        return v.getUint32(40, true);
    }
  }

  /** Sets the data for a read, up to 4 bytes. */
  set value(x: number) {
    const v = this.#run.view;
    if (this.length === 1) v.setUint8(40, x);
    else if (this.length === 2) v.setUint16(40, x, true);
    else v.setUint32(40, x >>> 0, true);
  }
}

/** An exit that carries no data beyond its reason. */
export class SimpleExit<R extends string> {
  /** Discriminant. */
  readonly reason: R;
  /** @internal */
  constructor(reason: R) {
    this.reason = reason;
  }
}

/** `KVM_EXIT_HLT`: the guest halted with no in-kernel LAPIC to wait for interrupts. */
export type HltExit = SimpleExit<"hlt">;
/** `KVM_EXIT_SHUTDOWN`: a triple fault or similar; the vCPU cannot continue. */
export type ShutdownExit = SimpleExit<"shutdown">;
/** `KVM_EXIT_IRQ_WINDOW_OPEN`: the guest can take an interrupt (requested via `requestInterruptWindow`). */
export type IrqWindowOpenExit = SimpleExit<"irqWindowOpen">;
/** `KVM_EXIT_NMI`. */
export type NmiExit = SimpleExit<"nmi">;
/** `KVM_EXIT_SET_TPR`. */
export type SetTprExit = SimpleExit<"setTpr">;
/**
 * `KVM_RUN` returned `EINTR`: a signal (for example a kick) interrupted it
 * before or while the guest ran. `immediate_exit` is cleared again.
 */
export type InterruptedExit = SimpleExit<"interrupted">;
/**
 * `KVM_EXIT_DIRTY_RING_FULL`: this vCPU's dirty ring is (nearly) full. Harvest
 * it and call `Vm.resetDirtyRings()` before the next `run()`, which otherwise
 * returns this exit again. The guest did not advance.
 */
export type DirtyRingFullExit = SimpleExit<"dirtyRingFull">;

/** `KVM_EXIT_FAIL_ENTRY`: the hardware refused to enter the guest. */
export class FailEntryExit {
  /** Discriminant. */
  readonly reason = "failEntry" as const;
  /** Hardware entry failure reason (VMX exit reason or SVM exit code). */
  hardwareEntryFailureReason = 0n;
  /** Host CPU that failed. */
  cpu = 0;
  /** @internal */
  fill(run: Run): this {
    this.hardwareEntryFailureReason = run.failEntryReason;
    this.cpu = run.failEntryCpu;
    return this;
  }
}

/** `KVM_INTERNAL_ERROR_EMULATION`: the suberror of an instruction KVM could not emulate. */
export const KVM_INTERNAL_ERROR_EMULATION = 1;
/** `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`: `insn_size`/`insn_bytes` are valid. */
export const KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1n;

/**
 * `KVM_EXIT_INTERNAL_ERROR`: KVM could not go on. With suberror 1 (an
 * emulation failure) the kernel may give the instruction's bytes
 * (`struct kvm_run`'s `emulation_failure` overlay, always with
 * `KVM_CAP_EXIT_ON_EMULATION_FAILURE`): then {@linkcode instruction} names it.
 */
export class InternalErrorExit {
  /** Discriminant. */
  readonly reason = "internalError" as const;
  /** `KVM_INTERNAL_ERROR_*`: 1 emulation, 2 simultaneous exceptions, 3 delivery event, 4 unexpected exit. */
  suberror = 0;
  /** Extra data words (`ndata` of them). */
  data: bigint[] = [];
  /** `emulation_failure.flags` (suberror 1 only; else 0n). */
  flags = 0n;
  // insn_size and insn_bytes, copied at the exit (the run area changes on the next run).
  readonly #insn = new Uint8Array(16);
  #insnValid = false;
  #decoded: X86Instruction | null = null;

  /** @internal */
  fill(run: Run): this {
    this.suberror = run.internalSuberror;
    const ndata = Math.min(run.internalNdata, 16);
    this.data = Array.from(run.internalData.subarray(0, ndata));
    this.#decoded = null;
    // The emulation_failure overlay: flags (= data[0]), then insn_size and 15 bytes (data[1..2]).
    this.flags = this.suberror === KVM_INTERNAL_ERROR_EMULATION && ndata >= 1 ? this.data[0] : 0n;
    this.#insnValid = ndata >= 3 &&
      (this.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) !== 0n;
    if (this.#insnValid) {
      const at = run.internalData.byteOffset + 8;
      this.#insn.set(new Uint8Array(run.internalData.buffer, at, 16));
      this.#insnValid = this.#insn[0] > 0 && this.#insn[0] <= 15;
    }
    return this;
  }

  /**
   * The bytes of the instruction KVM failed to emulate, when the kernel gave
   * them (suberror 1 with the instruction-bytes flag); `undefined` otherwise.
   * A copy.
   */
  get instructionBytes(): Uint8Array | undefined {
    return this.#insnValid ? this.#insn.slice(1, 1 + this.#insn[0]) : undefined;
  }

  /**
   * The instruction decoded for `mode` (default 64-bit code), when the kernel
   * gave its bytes. Decoded on the first call, not at the exit.
   */
  decodeInstruction(mode: X86Mode = 64): X86Instruction | undefined {
    if (!this.#insnValid) return undefined;
    if (mode !== 64) return decodeX86(this.instructionBytes!, mode);
    return this.#decoded ??= decodeX86(this.instructionBytes!, 64);
  }

  /**
   * The instruction as text, e.g. `lock cmpxchg16b (f0 48 0f c7 4d 20)`
   * (64-bit decoding; see {@linkcode decodeInstruction}), or `undefined`
   * when the kernel gave no bytes: read them at RIP then.
   */
  get instruction(): string | undefined {
    const insn = this.decodeInstruction();
    if (!insn) return undefined;
    return insn.length > 0
      ? `${insn.mnemonic} (${hexBytes(insn.bytes)})`
      : `${insn.mnemonic} (bytes: ${hexBytes(insn.bytes)})`;
  }
}

/** `KVM_EXIT_DEBUG`: a single step, breakpoint or watchpoint (see `setGuestDebug`). */
export class DebugExit {
  /** Discriminant. */
  readonly reason = "debug" as const;
  /** The exception vector: 1 (#DB) or 3 (#BP). */
  exception = 0;
  /** Guest RIP. */
  pc = 0n;
  /** DR6 at the exit: which breakpoint fired, single step (BS, bit 14). */
  dr6 = 0n;
  /** DR7 at the exit. */
  dr7 = 0n;
  /** @internal */
  fill(run: Run): this {
    this.exception = run.debugException;
    this.pc = run.debugPc;
    this.dr6 = run.debugDr6;
    this.dr7 = run.debugDr7;
    return this;
  }
}

/** `KVM_EXIT_TPR_ACCESS`: the guest touched the LAPIC TPR (with TPR access reporting on). */
export class TprAccessExit {
  /** Discriminant. */
  readonly reason = "tprAccess" as const;
  /** Guest RIP of the access. */
  rip = 0n;
  /** Whether it was a write. */
  isWrite = false;
  /** @internal */
  fill(run: Run): this {
    this.rip = run.tprAccessRip;
    this.isWrite = run.tprAccessIsWrite !== 0;
    return this;
  }
}

/** `KVM_EXIT_SYSTEM_EVENT`: shutdown, reset or crash requested by the guest (PSCI, Hyper-V...). */
export class SystemEventExit {
  /** Discriminant. */
  readonly reason = "systemEvent" as const;
  /** `KVM_SYSTEM_EVENT_*`: 1 shutdown, 2 reset, 3 crash, 4 wakeup, 5 suspend, 6 SEV terminate. */
  type = 0;
  /** Event data words. */
  data: bigint[] = [];
  /** @internal */
  fill(run: Run): this {
    this.type = run.systemEventType;
    this.data = Array.from(run.systemEventData.subarray(0, Math.min(run.systemEventNdata, 16)));
    return this;
  }
}

/** `KVM_EXIT_EXCEPTION`. */
export class ExceptionExit {
  /** Discriminant. */
  readonly reason = "exception" as const;
  /** Vector. */
  exception = 0;
  /** Error code. */
  errorCode = 0;
  /** @internal */
  fill(run: Run): this {
    this.exception = run.exException;
    this.errorCode = run.exErrorCode;
    return this;
  }
}

/** `KVM_EXIT_HYPERCALL` (with `KVM_CAP_EXIT_HYPERCALL` enabled). Set `ret` to answer. */
export class HypercallExit {
  /** Discriminant. */
  readonly reason = "hypercall" as const;
  /** Hypercall number. */
  nr = 0n;
  /** Arguments. */
  args: bigint[] = [];
  #run: Run;
  /** @internal */
  constructor(run: Run) {
    this.#run = run;
  }
  /** @internal */
  fill(run: Run): this {
    this.nr = run.hypercallNr;
    this.args = Array.from(run.hypercallArgs);
    return this;
  }
  /** The value returned to the guest in RAX. */
  set ret(value: bigint) {
    this.#run.hypercallRet = value;
  }
}

/** `KVM_EXIT_IOAPIC_EOI`: the guest acknowledged a level-triggered IOAPIC vector (split irqchip). */
export class IoapicEoiExit {
  /** Discriminant. */
  readonly reason = "ioapicEoi" as const;
  /** The vector. */
  vector = 0;
  /** @internal */
  fill(run: Run): this {
    this.vector = run.eoiVector;
    return this;
  }
}

/**
 * `KVM_EXIT_X86_RDMSR` / `KVM_EXIT_X86_WRMSR` (with `KVM_CAP_X86_USER_SPACE_MSR`).
 * For a read set `data`; set `error = 1` to inject #GP.
 */
export class MsrExit {
  /** Discriminant. */
  readonly reason: "rdmsr" | "wrmsr";
  /** The MSR index. */
  index = 0;
  /** Why it exited: `KVM_MSR_EXIT_REASON_*`. */
  msrReason = 0;
  #run: Run;
  /** @internal */
  constructor(reason: "rdmsr" | "wrmsr", run: Run) {
    this.reason = reason;
    this.#run = run;
  }
  /** @internal */
  fill(run: Run): this {
    this.index = run.msrIndex;
    this.msrReason = run.msrReason;
    return this;
  }
  /** The value written (wrmsr) or to return (rdmsr). */
  get data(): bigint {
    return this.#run.msrData;
  }
  set data(value: bigint) {
    this.#run.msrData = value;
  }
  /** Nonzero to make the guest's access fault. */
  get error(): number {
    return this.#run.msrError;
  }
  set error(value: number) {
    this.#run.msrError = value;
  }
}

/** `KVM_EXIT_UNKNOWN`: the hardware exit had no KVM handler. */
export class UnknownExit {
  /** Discriminant. */
  readonly reason = "unknown" as const;
  /** The hardware exit reason. */
  hardwareExitReason = 0n;
  /** @internal */
  fill(run: Run): this {
    this.hardwareExitReason = run.hwHardwareExitReason;
    return this;
  }
}

/** Any exit this library does not decode further: the raw reason and the run area. */
export class OtherExit {
  /** Discriminant. */
  readonly reason = "other" as const;
  /** The raw `KVM_EXIT_*` number. */
  exitReason = 0;
  /** The whole run area, to decode by hand. */
  readonly run: RunArea;
  /** @internal */
  constructor(run: Run) {
    this.run = run;
  }
  /** @internal */
  fill(run: Run): this {
    this.exitReason = run.exitReason;
    return this;
  }
}

/** Every exit `Vcpu.run()` can return, discriminated by `reason`. */
export type VcpuExit =
  | IoExit
  | MmioExit
  | HltExit
  | ShutdownExit
  | IrqWindowOpenExit
  | NmiExit
  | SetTprExit
  | InterruptedExit
  | FailEntryExit
  | InternalErrorExit
  | DebugExit
  | TprAccessExit
  | SystemEventExit
  | ExceptionExit
  | HypercallExit
  | IoapicEoiExit
  | MsrExit
  | DirtyRingFullExit
  | UnknownExit
  | OtherExit;

/**
 * The per-vCPU set of reusable exit objects and the decoder that picks and
 * refills one. Nothing is allocated per exit on the I/O, MMIO and HLT paths.
 */
export class ExitDecoder {
  readonly #run: Run;
  readonly #io: IoExit;
  readonly #mmio: MmioExit;
  readonly #hlt = new SimpleExit("hlt");
  readonly #shutdown = new SimpleExit("shutdown");
  readonly #irqWindowOpen = new SimpleExit("irqWindowOpen");
  readonly #nmi = new SimpleExit("nmi");
  readonly #setTpr = new SimpleExit("setTpr");
  readonly #dirtyRingFull = new SimpleExit("dirtyRingFull");
  /** The exit for `EINTR`. */
  readonly interrupted: InterruptedExit = new SimpleExit("interrupted");
  readonly #failEntry = new FailEntryExit();
  readonly #internal = new InternalErrorExit();
  readonly #debug = new DebugExit();
  readonly #tpr = new TprAccessExit();
  readonly #system = new SystemEventExit();
  readonly #exception = new ExceptionExit();
  readonly #hypercall: HypercallExit;
  readonly #eoi = new IoapicEoiExit();
  readonly #rdmsr: MsrExit;
  readonly #wrmsr: MsrExit;
  readonly #unknown = new UnknownExit();
  readonly #other: OtherExit;

  /** @internal */
  constructor(run: Run) {
    this.#run = run;
    this.#io = new IoExit(run.bytes);
    this.#mmio = new MmioExit(run);
    this.#hypercall = new HypercallExit(run);
    this.#rdmsr = new MsrExit("rdmsr", run);
    this.#wrmsr = new MsrExit("wrmsr", run);
    this.#other = new OtherExit(run);
  }

  /** Decodes the exit the kernel just wrote into the run area. */
  decode(reason: number): VcpuExit {
    // The two exits of a run loop first, in a function small enough for V8 to
    // inline into the caller's loop; the rest in one it calls.
    if (reason === ExitReason.IO) return this.#io.fill(this.#run);
    if (reason === ExitReason.MMIO) return this.#mmio.fill(this.#run);
    return this.#decodeOther(reason);
  }

  #decodeOther(reason: number): VcpuExit {
    const run = this.#run;
    switch (reason) {
      case ExitReason.HLT:
        return this.#hlt;
      case ExitReason.SHUTDOWN:
        return this.#shutdown;
      case ExitReason.IRQ_WINDOW_OPEN:
        return this.#irqWindowOpen;
      case ExitReason.NMI:
        return this.#nmi;
      case ExitReason.SET_TPR:
        return this.#setTpr;
      case ExitReason.INTR:
        return this.interrupted;
      case ExitReason.FAIL_ENTRY:
        return this.#failEntry.fill(run);
      case ExitReason.INTERNAL_ERROR:
        return this.#internal.fill(run);
      case ExitReason.DEBUG:
        return this.#debug.fill(run);
      case ExitReason.TPR_ACCESS:
        return this.#tpr.fill(run);
      case ExitReason.SYSTEM_EVENT:
        return this.#system.fill(run);
      case ExitReason.EXCEPTION:
        return this.#exception.fill(run);
      case ExitReason.HYPERCALL:
        return this.#hypercall.fill(run);
      case ExitReason.IOAPIC_EOI:
        return this.#eoi.fill(run);
      case ExitReason.X86_RDMSR:
        return this.#rdmsr.fill(run);
      case ExitReason.X86_WRMSR:
        return this.#wrmsr.fill(run);
      case ExitReason.DIRTY_RING_FULL:
        return this.#dirtyRingFull;
      case ExitReason.UNKNOWN:
        return this.#unknown.fill(run);
      default:
        return this.#other.fill(run);
    }
  }
}
