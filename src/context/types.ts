/**
 * Public types of {@linkcode KvmContext}: in-worker device modules, main-thread
 * callbacks (libkvm's `struct kvm_callbacks`), stop reasons and errors.
 *
 * @module
 */

import type { DebugExit, VcpuExit } from "../kvm/exit.ts";
import type { Vcpu } from "../kvm/vcpu.ts";
import type { GuestRam } from "./guest_ram.ts";

/**
 * Returned by a handler to stop its vCPU (libkvm: a callback returning
 * nonzero). Make one with {@linkcode stopVcpu}.
 */
export class VcpuStop {
  /** Why, as reported in the run's result. */
  readonly reason: string;
  /** Creates the request; prefer {@linkcode stopVcpu}. */
  constructor(reason: string) {
    this.reason = reason;
  }
}

/**
 * A handler's answer that stops its vCPU with `reason` (reported as
 * `{ kind: "handler", reason }`).
 *
 * @example
 * ```ts
 * import { stopVcpu, type VcpuDevice } from "@deno-kvm/kvm";
 * export default (): VcpuDevice => ({
 *   ioPorts: [[0xf4, 0xf4]],
 *   ioOut: (_port, _size, data) => stopVcpu(`guest exit code ${data[0]}`),
 * });
 * ```
 */
export function stopVcpu(reason: string): VcpuStop {
  return new VcpuStop(reason);
}

/**
 * What an in-worker handler returns: `undefined` or `true` — handled, keep
 * running; `false` — not mine, let the next device (then the main-thread
 * callbacks, then the default) have it; a {@linkcode VcpuStop} — stop this
 * vCPU. Throwing stops the whole VM and rejects `run()` with a
 * {@linkcode VcpuError} of kind `"handler"`.
 */
export type HandlerResult = void | boolean | VcpuStop;

/**
 * A device as seen by one vCPU's worker: the exits it handles, called
 * synchronously on the vCPU's own thread between two `KVM_RUN`s (no message,
 * no allocation by the library). Every hook is optional. Data arrays are views
 * into the run area, valid only during the call; for reads, write the answer
 * into them.
 *
 * Devices are modules loaded by each worker; their default export is a
 * {@linkcode DeviceFactory}. State shared between vCPUs (or with the main
 * thread) lives in SharedArrayBuffers passed through the device's options.
 */
export interface VcpuDevice {
  /** Port ranges `[first, last]` (inclusive) this device answers; omitted: every port. */
  readonly ioPorts?: ReadonlyArray<readonly [number, number]>;
  /** Guest-physical ranges `[first, last]` (inclusive) for MMIO; omitted: every address. */
  readonly mmioRanges?: ReadonlyArray<readonly [number, number]>;
  /** IN: fill `data` (`size * count` bytes; `count > 1` for `rep ins`). */
  ioIn?(port: number, size: number, data: Uint8Array, vcpuId: number): HandlerResult;
  /** OUT: `data` holds what the guest wrote (`size * count` bytes). */
  ioOut?(port: number, size: number, data: Uint8Array, vcpuId: number): HandlerResult;
  /** MMIO read of `length` bytes: fill `data`. */
  mmioRead?(address: number, length: number, data: Uint8Array, vcpuId: number): HandlerResult;
  /** MMIO write of `length` bytes in `data`. */
  mmioWrite?(address: number, length: number, data: Uint8Array, vcpuId: number): HandlerResult;
  /** `KVM_EXIT_HLT` (only without the in-kernel irqchip, which handles HLT itself). */
  halt?(vcpuId: number): HandlerResult;
  /** `KVM_EXIT_SHUTDOWN` (triple fault). Unhandled, it stops the VM. */
  shutdown?(vcpuId: number): HandlerResult;
  /** `KVM_EXIT_DEBUG` (see `Vcpu.setGuestDebug`). */
  debug?(exit: DebugExit, vcpuId: number): HandlerResult;
  /** `KVM_EXIT_TPR_ACCESS` (with TPR access reporting on). */
  tprAccess?(rip: bigint, isWrite: boolean, vcpuId: number): HandlerResult;
  /** `KVM_EXIT_IRQ_WINDOW_OPEN` (libkvm's `io_window`). */
  irqWindowOpen?(vcpuId: number): HandlerResult;
  /**
   * Userspace irqchip only: called before every `KVM_RUN`; inject with
   * `vcpu.interrupt()` when the run area says the guest is ready, and return
   * `true` to request an interrupt-window exit (libkvm's `try_push_interrupts`).
   */
  tryPushInterrupts?(vcpuId: number): boolean;
  /** Called before every `KVM_RUN` to inject a pending NMI (libkvm's `push_nmi`). */
  pushNmi?(vcpuId: number): void;
  /** Called before every `KVM_RUN` (libkvm's `pre_kvm_run`). */
  preRun?(vcpuId: number): HandlerResult;
  /** Called after every `KVM_RUN` returns, before the exit is dispatched (`post_kvm_run`). */
  postRun?(vcpuId: number): void;
  /** Any other exit (hypercall, MSR, system event...). */
  exit?(exit: VcpuExit, vcpuId: number): HandlerResult;
  /** Called when the worker shuts down. */
  close?(): void;
}

/** What a device factory receives in its worker. */
export interface DeviceContext {
  /** The vCPU this worker runs. */
  readonly vcpuId: number;
  /** How many vCPUs the VM has. */
  readonly vcpuCount: number;
  /**
   * The vCPU itself (adopted: the main thread owns its fd). Safe to use from
   * hooks, e.g. `vcpu.runArea` or register access.
   */
  readonly vcpu: Vcpu;
  /** Guest RAM, viewed without copies from this worker. */
  readonly memory: GuestRam;
  /** The device's options as given to `KvmContext.create` (structured-cloned). */
  readonly options: unknown;
  /** Whether the in-kernel irqchip (PIC, IOAPIC, LAPICs) is in use. */
  readonly irqchipInKernel: boolean;
  /**
   * Stops every vCPU of the VM (this one at its next exit): the run resolves
   * with `{ kind: "vmStopped" }` for the others and `{ kind: "handler", reason }`
   * for this one once the handler returns.
   */
  stopVm(reason: string): void;
}

/** The default export of a device module. */
export type DeviceFactory = (context: DeviceContext) => VcpuDevice | Promise<VcpuDevice>;

/** A device module for `KvmContext.create({ devices })`: its URL, and options for its factory. */
export type DeviceModule = string | URL | { url: string | URL; options?: unknown };

/** What a main-thread callback returns (see {@linkcode HandlerResult}; `false`: use the default). */
export type CallbackResult = HandlerResult;

/** A value or a promise of it: main-thread callbacks may be async. */
export type MaybePromise<T> = T | Promise<T>;

/**
 * Main-thread callbacks, libkvm's `struct kvm_callbacks`. Each one is a
 * round trip from the vCPU's worker through a SharedArrayBuffer mailbox
 * (`Atomics.wait` in the worker, `Atomics.waitAsync` here). Measured cost of
 * that round trip: 20-32 µs on a host (the protocol alone, no KVM). In the
 * project's nested TCG sandbox, `deno task bench` measured 178 PIO exits/s
 * through the mailbox (case 4) against 5,761/s with the handler in the
 * worker (case 3) and 4,019/s for a plain `Vcpu.run()` loop on one thread
 * (case 1); tests/kvm/context_callbacks_test.ts logs both per-exit costs. Use in-worker devices ({@linkcode VcpuDevice}) for anything
 * frequent. While a callback runs its vCPU waits, and the main thread may use
 * that vCPU's {@linkcode Vcpu} (registers, `interrupt()`...).
 */
export interface KvmCallbacks {
  /** 8-bit IN: return the byte (or a {@linkcode VcpuStop}). Called per element of `rep insb`. */
  inb?(port: number, vcpuId: number): MaybePromise<number | VcpuStop>;
  /** 16-bit IN. */
  inw?(port: number, vcpuId: number): MaybePromise<number | VcpuStop>;
  /** 32-bit IN. */
  inl?(port: number, vcpuId: number): MaybePromise<number | VcpuStop>;
  /** 8-bit OUT. Called per element of `rep outsb`. */
  outb?(port: number, value: number, vcpuId: number): MaybePromise<CallbackResult>;
  /** 16-bit OUT. */
  outw?(port: number, value: number, vcpuId: number): MaybePromise<CallbackResult>;
  /** 32-bit OUT. */
  outl?(port: number, value: number, vcpuId: number): MaybePromise<CallbackResult>;
  /** MMIO read: fill `data` (1 to 8 bytes). */
  mmioRead?(address: number, data: Uint8Array, vcpuId: number): MaybePromise<CallbackResult>;
  /** MMIO write of `data`. */
  mmioWrite?(address: number, data: Uint8Array, vcpuId: number): MaybePromise<CallbackResult>;
  /** HLT with a userspace irqchip. Unhandled, it stops the vCPU with `{ kind: "hlt" }`. */
  halt?(vcpuId: number): MaybePromise<CallbackResult>;
  /** Triple fault. Unhandled, it stops the VM with `{ kind: "shutdown" }`. */
  shutdown?(vcpuId: number): MaybePromise<CallbackResult>;
  /** Debug exit. */
  debug?(vcpuId: number, info: DebugInfo): MaybePromise<CallbackResult>;
  /** TPR access. */
  tprAccess?(vcpuId: number, rip: bigint, isWrite: boolean): MaybePromise<CallbackResult>;
  /** Before every `KVM_RUN` (a round trip per run: slow). */
  preRun?(vcpuId: number): MaybePromise<CallbackResult>;
  /** After every `KVM_RUN` (a round trip per run: slow). */
  postRun?(vcpuId: number): MaybePromise<void>;
  /**
   * Userspace irqchip: before every `KVM_RUN`; inject with
   * `context.vcpu(id).interrupt()`; return `true` to request an interrupt window.
   */
  tryPushInterrupts?(vcpuId: number): MaybePromise<boolean>;
  /** Before every `KVM_RUN`: inject a pending NMI. */
  pushNmi?(vcpuId: number): MaybePromise<void>;
  /** Interrupt window open (libkvm's `io_window`). */
  ioWindow?(vcpuId: number): MaybePromise<CallbackResult>;
}

/** The data of a debug exit, for {@linkcode KvmCallbacks.debug}. */
export interface DebugInfo {
  /** Vector: 1 (#DB) or 3 (#BP). */
  exception: number;
  /** Guest RIP. */
  pc: bigint;
  /** DR6. */
  dr6: bigint;
  /** DR7. */
  dr7: bigint;
}

/** Why one vCPU stopped. */
export type VcpuStopReason =
  /** `stop()` was called. */
  | { kind: "requested" }
  /** `run({ timeoutMs })` ran out of time while this vCPU was still running. */
  | { kind: "timeout" }
  /** A device or callback returned {@linkcode stopVcpu}. */
  | { kind: "handler"; reason: string }
  /** HLT with no halt handler (userspace irqchip only). */
  | { kind: "hlt" }
  /** Triple fault with no shutdown handler; the other vCPUs were stopped too. */
  | { kind: "shutdown" }
  /** An exit no device or callback handled (and the default is to stop). */
  | { kind: "unhandled"; exit: string; detail: string }
  /** Another vCPU ended the VM (a shutdown, or a device's `stopVm`). */
  | { kind: "vmStopped"; by: number };

/** One vCPU's outcome in a {@linkcode RunResult}. */
export interface VcpuResult {
  /** The vCPU id. */
  vcpuId: number;
  /** Why it stopped. */
  stop: VcpuStopReason;
  /** Exits handled during this run (`KVM_RUN` returns, kicks excluded). */
  exits: number;
}

/** Options of `KvmContext.run()`. */
export interface RunOptions {
  /** Stop the vCPUs still running after this many milliseconds (they report "timeout"). */
  timeoutMs?: number;
}

/** What `KvmContext.run()` resolves with once every vCPU has stopped. */
export interface RunResult {
  /** Per vCPU, in id order. */
  vcpus: VcpuResult[];
}

/** What went wrong in a {@linkcode VcpuError}. */
export type VcpuErrorKind =
  /** An in-worker device threw (or a device factory failed). */
  | "handler"
  /** A main-thread callback threw. */
  | "callback"
  /** `KVM_RUN` itself failed. */
  | "kvm"
  /** The worker died (an uncaught error outside the run loop). */
  | "worker"
  /** The worker was terminated (`KvmContext.terminate` or `close` with a stuck worker). */
  | "terminated";

/**
 * A vCPU failure that ended `run()`: a throwing handler or callback, a failing
 * `KVM_RUN`, or a worker that died. The other vCPUs were stopped first. `cause`
 * holds the original error (as cloned from the worker).
 */
export class VcpuError extends Error {
  /** What failed. */
  readonly kind: VcpuErrorKind;
  /** The vCPU. */
  readonly vcpuId: number;
  /** Its general registers when it failed (`KVM_GET_REGS`), when they could be read. */
  readonly regs: Readonly<Record<string, bigint>> | undefined;
  /** The other vCPUs' outcomes. */
  readonly others: VcpuResult[];

  /** Creates the error. */
  constructor(
    kind: VcpuErrorKind,
    vcpuId: number,
    message: string,
    options: { cause?: unknown; regs?: Record<string, bigint>; others?: VcpuResult[] } = {},
  ) {
    const rip = options.regs?.rip;
    super(
      `vCPU ${vcpuId} ${kind} failure: ${message}${
        rip !== undefined ? ` (rip 0x${rip.toString(16)})` : ""
      }`,
      { cause: options.cause },
    );
    this.name = "VcpuError";
    this.kind = kind;
    this.vcpuId = vcpuId;
    this.regs = options.regs;
    this.others = options.others ?? [];
  }
}
