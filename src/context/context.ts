/**
 * `KvmContext`: libkvm's `kvm_context_t` workflow (init with callbacks →
 * create the VM with RAM → create vCPUs → run) as an async API, with every
 * vCPU on its own Deno Worker.
 *
 * Threads: the main thread owns every fd and mapping (Kvm, Vm, guest RAM, each
 * Vcpu and its run area). Each worker adopts its vCPU's fd and run area
 * without owning them, loads the shim itself, and calls `KVM_RUN`
 * synchronously; exits are handled in the worker by device modules. The main
 * thread steers the workers through a control word per vCPU in a
 * SharedArrayBuffer and a kick (immediate_exit plus a signal to the worker's
 * thread, which makes a blocking `KVM_RUN` return `EINTR`); main-thread
 * callbacks go through a SharedArrayBuffer mailbox per vCPU.
 *
 * From libkvm: `kvm_init(callbacks)` + `kvm_create(mem)` + `kvm_create_vcpu`
 * → `KvmContext.create({ memory, vcpus, callbacks, devices })`;
 * `kvm_disable_irqchip_creation` / `kvm_disable_pit_creation` → `irqchip:
 * false` / `pit: false`; `kvm_run` per vCPU thread → `run()` (all vCPUs, a
 * promise); a signal to interrupt `kvm_run` → `pause()` / `stop()`;
 * `kvm_get_regs(kvm, vcpu)` and friends → `context.vcpu(id).getRegs()` while
 * the vCPU is not running; `kvm_irqchip_in_kernel` / `kvm_pit_in_kernel` →
 * `irqchipInKernel` / `pitInKernel`; `kvm_finalize` → `close()`.
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";
import { loadNative, nativePath } from "../ffi/library.ts";
import { hex } from "../kvm/constants.ts";
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { Kvm } from "../kvm/kvm.ts";
import type { KickTarget, Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import {
  Call,
  Control,
  controlBytes,
  Ctl,
  ctl,
  type DeviceSpec,
  forbidStart,
  heldBy,
  kickVcpuThread,
  Mailbox,
  Mb,
  type PlainError,
  type PostedStop,
  releaseHolds,
  Reply,
  signalVcpu,
  type SlotInfo,
  spinUntil,
  State,
  threadExists,
  VCPU_WORKER_URL,
  type WorkerMessage,
} from "./protocol.ts";
import {
  type CallbackResult,
  type DeviceModule,
  type KvmCallbacks,
  type RunOptions,
  type RunResult,
  VcpuError,
  type VcpuErrorKind,
  type VcpuResult,
  VcpuStop,
  type VcpuStopReason,
} from "./types.ts";

/** Start of the legacy VGA hole, which libkvm leaves unmapped. */
export const VGA_HOLE_START = 0xa0000;
/** End of the legacy VGA hole: RAM resumes here. */
export const VGA_HOLE_END = 0xc0000;
/** RAM above this goes to 4 GiB and up (below: PCI holes, IOAPIC, LAPIC, BIOS). */
export const LOW_RAM_END = 0xe000_0000;
/** Where libkvm puts the three TSS pages that Intel VMX needs for real mode. */
export const DEFAULT_TSS_ADDRESS = 0xfffb_d000;

/** Options of {@linkcode KvmContext.create}. */
export interface KvmContextOptions {
  /**
   * Guest RAM in bytes (rounded up to a page). Mapped like libkvm's
   * `kvm_create`: 0–0xA0000 and 0xC0000–end, leaving the VGA hole; RAM beyond
   * 0xE0000000 continues at 4 GiB.
   */
  memory: number;
  /** Number of vCPUs (ids 0..n-1), default 1. vCPU 0 is the bootstrap processor. */
  vcpus?: number;
  /**
   * Create the in-kernel irqchip (PIC, IOAPIC, a LAPIC per vCPU), default
   * true (libkvm's `kvm_disable_irqchip_creation` sets it false). With it, HLT
   * waits in the kernel and vCPUs other than 0 wait for INIT/SIPI.
   */
  irqchip?: boolean;
  /** Create the in-kernel PIT (`KVM_CREATE_PIT2`), default true; needs `irqchip`. */
  pit?: boolean;
  /** `KVM_SET_TSS_ADDR` (default {@linkcode DEFAULT_TSS_ADDRESS}); `false` skips it. */
  tssAddress?: number | false;
  /** Main-thread callbacks (libkvm's `struct kvm_callbacks`); slow, see {@linkcode KvmCallbacks}. */
  callbacks?: KvmCallbacks;
  /** Device modules each worker imports; tried in order before the callbacks. */
  devices?: DeviceModule[];
  /** Unhandled port reads return all ones and writes are dropped, instead of stopping the vCPU. */
  ignoreUnhandledIo?: boolean;
  /** The KVM device, default `/dev/kvm`. */
  kvmPath?: string;
  /** A prebuilt shim, as for `loadNative({ path })`. */
  libraryPath?: string;
  /** How long `close()` waits for a running vCPU to stop before terminating its worker (ms, default 2000). */
  stopTimeoutMs?: number;
}

/** A vCPU as the context tracks it. */
interface VcpuSlot {
  id: number;
  index: number;
  vcpu: Vcpu;
  worker: Worker;
  kick: KickTarget;
  mailbox: Mailbox;
  /** Worker alive (not terminated, no error event). */
  alive: boolean;
  /** The worker died or was terminated: why. */
  death?: { kind: VcpuErrorKind; error: Error };
  /** Part of the current run and not yet reported. */
  inRun: boolean;
  /** Stop reason recorded by a main-thread callback. */
  callbackStop?: string;
  /** Error thrown by a main-thread callback. */
  callbackError?: unknown;
  ready: PromiseWithResolvers<void>;
  exited: PromiseWithResolvers<void>;
  /** The worker's thread ended in an orderly way (it unmapped its views). */
  cleanExit: boolean;
}

interface RunState {
  pending: number;
  /** Set when `run({ timeoutMs })` ran out: the vCPUs it stopped report "timeout". */
  timedOut?: boolean;
  timer?: ReturnType<typeof setTimeout>;
  results: (VcpuResult | undefined)[];
  failure?: VcpuError;
  done: PromiseWithResolvers<RunResult>;
}

/**
 * A VM with its RAM and vCPUs, each vCPU on its own Worker: libkvm's
 * `kvm_context_t` as an async API.
 *
 * @example
 * ```ts
 * import { KvmContext, stopVcpu } from "@deno-kvm/kvm";
 *
 * await using ctx = await KvmContext.create({
 *   memory: 1 << 20,
 *   irqchip: false,
 *   callbacks: {
 *     outb: (port, value) => port === 0xe9 ? stopVcpu(`got ${value}`) : undefined,
 *   },
 * });
 * ctx.vm.writeGuest(0x1000, [0xb0, 0x2a, 0xe6, 0xe9]); // mov al, 42; out 0xe9, al
 * const vcpu = ctx.vcpu(0);
 * const sregs = vcpu.getSregs();
 * sregs.cs.base = 0n;
 * sregs.cs.selector = 0;
 * vcpu.setSregs(sregs);
 * vcpu.setRegs(vcpu.getRegs().assign({ rip: 0x1000n, rflags: 2n }));
 * const result = await ctx.run();
 * console.log(result.vcpus[0].stop); // { kind: "handler", reason: "got 42" }
 * ```
 */
export class KvmContext implements AsyncDisposable {
  /** The KVM system object. */
  readonly kvm: Kvm;
  /** The VM. */
  readonly vm: Vm;
  /** Guest RAM (host mapping); guest physical layout per {@linkcode KvmContextOptions.memory}. */
  readonly memory: GuestMemory;
  /** Whether the in-kernel irqchip was created. */
  readonly irqchipInKernel: boolean;
  /** Whether the in-kernel PIT was created. */
  readonly pitInKernel: boolean;
  #slots: VcpuSlot[] = [];
  #control: Int32Array;
  #callbacks: KvmCallbacks;
  #run: RunState | undefined;
  #closing = false;
  #closed = false;
  #leaked: number[] = [];
  #stopTimeoutMs: number;

  private constructor(
    kvm: Kvm,
    vm: Vm,
    memory: GuestMemory,
    control: Int32Array,
    options: KvmContextOptions,
    irqchip: boolean,
    pit: boolean,
  ) {
    this.kvm = kvm;
    this.vm = vm;
    this.memory = memory;
    this.#control = control;
    this.#callbacks = options.callbacks ?? {};
    this.#stopTimeoutMs = options.stopTimeoutMs ?? 2000;
    this.irqchipInKernel = irqchip;
    this.pitInKernel = pit;
  }

  /**
   * Creates the VM (libkvm's `kvm_init` + `kvm_create` + `kvm_create_vcpu`):
   * loads the shim, opens KVM, maps RAM around the VGA hole, creates the
   * in-kernel irqchip and PIT unless disabled, creates the vCPUs and starts a
   * worker for each, which loads the device modules. vCPU registers are then
   * set from the main thread (`context.vcpu(id)`) before {@linkcode run}.
   */
  static async create(options: KvmContextOptions): Promise<KvmContext> {
    const op = "KvmContext.create";
    const vcpus = options.vcpus ?? 1;
    const irqchip = options.irqchip ?? true;
    const pit = irqchip && (options.pit ?? true);
    if (!Number.isInteger(vcpus) || vcpus < 1) {
      throw new KvmError(op, Errno.EINVAL, `vcpus must be a positive integer, not ${vcpus}`);
    }
    if (!Number.isSafeInteger(options.memory) || options.memory <= 0) {
      throw new KvmError(op, Errno.EINVAL, `memory must be a positive byte count`);
    }
    if (options.pit && options.irqchip === false) {
      throw new KvmError(op, Errno.EINVAL, "the in-kernel PIT needs the in-kernel irqchip");
    }
    await loadNative({ path: options.libraryPath });
    const devices: DeviceSpec[] = (options.devices ?? []).map((d) =>
      typeof d === "string" || d instanceof URL
        ? { url: String(d), options: undefined }
        : { url: String(d.url), options: d.options }
    );
    const kvm = Kvm.open(options.kvmPath);
    let context: KvmContext | undefined;
    try {
      const vm = kvm.createVm();
      const tss = options.tssAddress ?? DEFAULT_TSS_ADDRESS;
      if (tss !== false && kvm.checkExtension("SET_TSS_ADDR")) vm.setTssAddr(tss);
      if (irqchip) {
        if (!kvm.checkExtension(0 /* KVM_CAP_IRQCHIP */)) {
          throw new KvmError(
            op,
            Errno.EOPNOTSUPP,
            "KVM_CAP_IRQCHIP is missing: pass irqchip: false",
          );
        }
        vm.createIrqchip();
        if (pit) {
          if (!kvm.checkExtension("PIT2")) {
            throw new KvmError(op, Errno.EOPNOTSUPP, "KVM_CAP_PIT2 is missing: pass pit: false");
          }
          vm.createPit2();
        }
      }
      const size = Math.ceil(options.memory / 4096) * 4096;
      const memory = vm.allocateMemory(size);
      const slots = mapRam(vm, memory);
      const control = new Int32Array(new SharedArrayBuffer(controlBytes(vcpus)));
      control[Ctl.STOP_BY] = -1;
      context = new KvmContext(kvm, vm, memory, control, options, irqchip, pit);
      await context.#startWorkers(vcpus, slots, devices, options.ignoreUnhandledIo ?? false);
      return context;
    } catch (error) {
      if (context) await context.close();
      else kvm.close();
      throw error;
    }
  }

  async #startWorkers(
    count: number,
    slots: SlotInfo[],
    devices: DeviceSpec[],
    ignoreUnhandledIo: boolean,
  ): Promise<void> {
    const mmapSize = this.kvm.vcpuMmapSize();
    const callbacks = callbackCodes(this.#callbacks);
    for (let index = 0; index < count; index++) {
      const vcpu = this.vm.createVcpu(index);
      const target = vcpu.kickTarget;
      this.#control[ctl(index, Ctl.SLOT)] = target.slot!;
      const mailbox = new Mailbox();
      const worker = new Worker(VCPU_WORKER_URL, { type: "module", name: `vCPU ${index}` });
      const slot: VcpuSlot = {
        id: index,
        index,
        vcpu,
        worker,
        kick: { ...target, threadId: 0 },
        mailbox,
        alive: true,
        inRun: false,
        ready: Promise.withResolvers(),
        exited: Promise.withResolvers(),
        cleanExit: false,
      };
      slot.ready.promise.catch(() => {});
      this.#slots.push(slot);
      worker.onmessage = (e: MessageEvent<WorkerMessage>) => this.#onMessage(slot, e.data);
      worker.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.#onDeath(slot, "worker", new Error(`the vCPU ${index} worker died: ${e.message}`));
      };
      worker.postMessage({
        type: "init",
        vcpuId: index,
        index,
        vcpuCount: count,
        fd: vcpu.unsafeFd,
        mmapSize,
        kick: target,
        libraryPath: nativePath,
        slots,
        control: this.#control.buffer as SharedArrayBuffer,
        mailbox: mailbox.buffer,
        devices,
        callbacks,
        irqchipInKernel: this.irqchipInKernel,
        ignoreUnhandledIo,
      });
      if (callbacks.length) this.#serveMailbox(slot);
    }
    await Promise.all(this.#slots.map((s) => s.ready.promise));
  }

  /** The main-thread {@linkcode Vcpu} with this id (registers, LAPIC...). Use it while the vCPU is not running. */
  vcpu(id: number): Vcpu {
    const slot = this.#slots[id];
    if (!slot) throw new KvmError("KvmContext.vcpu", Errno.EINVAL, `no vCPU ${id}`);
    return slot.vcpu;
  }

  /** Number of vCPUs. */
  get vcpuCount(): number {
    return this.#slots.length;
  }

  /** Whether a {@linkcode run} is in progress. */
  get running(): boolean {
    return this.#run !== undefined;
  }

  /** Whether {@linkcode close} has been called. */
  get closed(): boolean {
    return this.#closing;
  }

  /**
   * After {@linkcode close}: the vCPUs whose worker thread could not be
   * stopped (a handler stuck in native code). Their run areas, fds and the
   * guest RAM stay mapped for the life of the process, so that the thread,
   * should it ever return, touches live memory: a leak instead of a crash.
   */
  get leakedVcpus(): readonly number[] {
    return this.#leaked;
  }

  /**
   * Runs every vCPU on its worker until all have stopped. Resolves with each
   * vCPU's stop reason; rejects with a {@linkcode VcpuError} (after stopping
   * the others) when a handler or callback throws, `KVM_RUN` fails, or a
   * worker dies. Can be called again after it settles (registers kept).
   *
   * With `timeoutMs`, the vCPUs still running when it expires are stopped
   * (kicked, even from a guest that never exits) and report
   * `{ kind: "timeout" }`.
   */
  run(options: RunOptions = {}): Promise<RunResult> {
    const op = "KvmContext.run";
    if (this.#closing) throw new KvmError(op, Errno.EBADF, "the context is closed");
    if (this.#run) throw new KvmError(op, Errno.EBUSY, "the VM is already running");
    const { timeoutMs } = options;
    if (
      timeoutMs !== undefined &&
      (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > 2 ** 31 - 1)
    ) {
      throw new KvmError(op, Errno.EINVAL, `timeoutMs ${timeoutMs} is not in 1..${2 ** 31 - 1}`);
    }
    const dead = this.#slots.find((s) => !s.alive);
    if (dead) {
      return Promise.reject(
        new VcpuError(dead.death!.kind, dead.id, dead.death!.error.message, {
          cause: dead.death!.error,
        }),
      );
    }
    const c = this.#control;
    Atomics.store(c, Ctl.STOP_BY, -1);
    const state: RunState = {
      pending: this.#slots.length,
      results: new Array(this.#slots.length),
      done: Promise.withResolvers(),
    };
    this.#run = state;
    if (timeoutMs !== undefined) {
      state.timer = setTimeout(() => {
        state.timedOut = true;
        this.#signalAll(Control.STOP);
      }, timeoutMs);
    }
    for (const slot of this.#slots) {
      slot.inRun = true;
      slot.callbackStop = undefined;
      slot.callbackError = undefined;
      Atomics.store(c, ctl(slot.index, Ctl.CONTROL), Control.RUN);
      // RUNNING until the worker says otherwise, so pause() waits for it.
      Atomics.store(c, ctl(slot.index, Ctl.STATE), State.RUNNING);
      slot.worker.postMessage({ type: "run" });
    }
    return state.done.promise;
  }

  /**
   * Stops every vCPU, even one spinning in guest code that never exits
   * (control word, then a kick). Resolves once the current run has settled
   * (its own promise carries the result); at once when nothing runs.
   */
  async stop(): Promise<void> {
    const state = this.#run;
    if (!state) return;
    this.#signalAll(Control.STOP);
    await state.done.promise.then(() => {}, () => {});
  }

  /**
   * Pauses every running vCPU: each leaves `KVM_RUN` (kicked) and waits in
   * its worker. Resolves once all are paused (or stopped); their registers can
   * then be read and written from the main thread. Guest state is kept.
   */
  async pause(): Promise<void> {
    const state = this.#run;
    if (!state) return;
    const c = this.#control;
    for (const slot of this.#slots) {
      if (!slot.inRun) continue;
      const i = ctl(slot.index, Ctl.CONTROL);
      if (Atomics.compareExchange(c, i, Control.RUN, Control.PAUSE) === Control.RUN) {
        this.#kick(slot);
      }
    }
    for (const slot of this.#slots) {
      const i = ctl(slot.index, Ctl.STATE);
      while (slot.inRun && slot.alive && this.#run === state) {
        const s = Atomics.load(c, i);
        if (s === State.PAUSED) break;
        const w = Atomics.waitAsync(c, i, s, 20);
        if (w.async) await w.value;
      }
    }
  }

  /** Resumes paused vCPUs. */
  resume(): void {
    const c = this.#control;
    for (const slot of this.#slots) {
      const i = ctl(slot.index, Ctl.CONTROL);
      if (Atomics.compareExchange(c, i, Control.PAUSE, Control.RUN) === Control.PAUSE) {
        Atomics.notify(c, i);
      }
    }
  }

  /**
   * Terminates a vCPU's worker the hard way (for a handler stuck in an
   * endless loop): the current run rejects with a {@linkcode VcpuError} of
   * kind `"terminated"`, and that vCPU cannot run again.
   */
  terminate(id: number): void {
    const slot = this.#slots[id];
    if (!slot) throw new KvmError("KvmContext.terminate", Errno.EINVAL, `no vCPU ${id}`);
    if (!slot.alive) return;
    this.#kill(slot, "terminated", new Error(`the vCPU ${id} worker was terminated`));
  }

  #kill(slot: VcpuSlot, kind: VcpuErrorKind, error: Error): void {
    Atomics.store(this.#control, ctl(slot.index, Ctl.CONTROL), Control.STOP);
    // terminate() first, then the kick: the thread leaves KVM_RUN (or never
    // re-enters it: immediate_exit) into JavaScript that is being terminated.
    slot.worker.terminate();
    this.#kick(slot);
    this.#onDeath(slot, kind, error);
  }

  #kick(slot: VcpuSlot): void {
    if (!slot.alive || slot.kick.threadId <= 0) return;
    kickVcpuThread(this.#control, slot.kick.life!, slot.index);
  }

  /** Sets every vCPU's control word, wakes paused ones, kicks running ones (`protocol.ts`). */
  #signalAll(command: number): void {
    for (const slot of this.#slots) {
      signalVcpu(this.#control, slot.kick.life!, slot.index, command, slot.inRun && slot.alive);
    }
  }

  #onMessage(slot: VcpuSlot, msg: WorkerMessage): void {
    switch (msg.type) {
      case "ready":
        slot.kick.threadId = msg.tid;
        slot.ready.resolve();
        break;
      case "initFailed":
        slot.ready.reject(
          new VcpuError("handler", slot.id, `worker start failed: ${msg.error.message}`, {
            cause: revive(msg.error),
          }),
        );
        break;
      case "stopped":
        this.#finish(slot, {
          vcpuId: slot.id,
          stop: this.#stopReason(slot, msg.stop),
          exits: msg.exits,
        });
        if (msg.stop.kind === "shutdown") this.#signalAll(Control.STOP);
        break;
      case "failed": {
        const kind: VcpuErrorKind = msg.callbackError
          ? "callback"
          : msg.kvmError
          ? "kvm"
          : "handler";
        const cause = msg.callbackError ? slot.callbackError : revive(msg.error);
        const text = cause instanceof Error ? cause.message : String(cause);
        this.#fail(slot, new VcpuError(kind, slot.id, text, { cause, regs: msg.regs }), msg.exits);
        break;
      }
      case "exited":
        slot.cleanExit = true;
        slot.exited.resolve();
        break;
    }
  }

  #stopReason(slot: VcpuSlot, stop: PostedStop): VcpuStopReason {
    if (stop.kind === "callback") {
      return { kind: "handler", reason: slot.callbackStop ?? "callback" };
    }
    if (stop.kind === "requested" && this.#run?.timedOut) return { kind: "timeout" };
    return stop;
  }

  #onDeath(slot: VcpuSlot, kind: VcpuErrorKind, error: Error): void {
    if (!slot.alive) return;
    slot.alive = false;
    slot.death = { kind, error };
    slot.ready.reject(new VcpuError(kind, slot.id, error.message, { cause: error }));
    slot.exited.resolve();
    if (slot.inRun) {
      this.#fail(slot, new VcpuError(kind, slot.id, error.message, { cause: error }), 0);
    }
  }

  #fail(slot: VcpuSlot, error: VcpuError, exits: number): void {
    const state = this.#run;
    if (!state || !slot.inRun) return;
    state.failure ??= error;
    this.#signalAll(Control.STOP);
    this.#finish(slot, { vcpuId: slot.id, stop: { kind: "requested" }, exits }, true);
  }

  #finish(slot: VcpuSlot, result: VcpuResult, failed = false): void {
    const state = this.#run;
    if (!state || !slot.inRun) return;
    slot.inRun = false;
    if (!failed) state.results[slot.index] = result;
    if (--state.pending > 0) return;
    this.#run = undefined;
    clearTimeout(state.timer);
    const results = state.results.filter((r): r is VcpuResult => r !== undefined);
    if (state.failure) {
      const f = state.failure;
      state.done.reject(
        new VcpuError(f.kind, f.vcpuId, f.message.replace(/^vCPU \d+ \w+ failure: /, ""), {
          cause: f.cause,
          regs: f.regs as Record<string, bigint> | undefined,
          others: results,
        }),
      );
    } else {
      state.done.resolve({ vcpus: results });
    }
  }

  /** Answers one vCPU's main-thread callbacks until the context closes. */
  async #serveMailbox(slot: VcpuSlot): Promise<void> {
    const box = slot.mailbox;
    while (!this.#closed) {
      // A worker whose guest exits to the main thread often sends its next
      // request within an exit's time: poll briefly before sleeping (a wake-up
      // through the event loop costs more than the exit).
      const ack = Atomics.load(box.words, Mb.ACK);
      if (spinUntil(box.words, Mb.REQ, ack + 1 & 0x3fffffff) === ack) {
        const w = Atomics.waitAsync(box.words, Mb.REQ, ack);
        if (w.async) await w.value;
        continue;
      }
      let reply: number;
      try {
        reply = await this.#answer(slot);
      } catch (error) {
        slot.callbackError = error;
        reply = Reply.ERROR;
      }
      box.answer(reply);
    }
  }

  /** Runs the callback a mailbox request names; returns a {@linkcode Reply}. */
  async #answer(slot: VcpuSlot): Promise<number> {
    const mb = slot.mailbox.words;
    const data = slot.mailbox.data;
    const cb = this.#callbacks;
    const id = slot.id;
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const reply = (r: CallbackResult): number => {
      if (r === undefined || r === true) return Reply.CONTINUE;
      if (r === false) return Reply.UNHANDLED;
      if (r instanceof VcpuStop) {
        slot.callbackStop = r.reason;
        return Reply.STOP;
      }
      throw new TypeError(`a callback returned ${String(r)}; expected void, boolean or stopVcpu()`);
    };
    switch (mb[Mb.CALL]) {
      case Call.IN: {
        const size = mb[Mb.SIZE];
        const f = size === 1 ? cb.inb : size === 2 ? cb.inw : cb.inl;
        if (!f) return Reply.UNHANDLED;
        for (let i = 0; i < mb[Mb.COUNT]; i++) {
          const v = await f.call(cb, mb[Mb.A0], id);
          if (v instanceof VcpuStop) return reply(v);
          writeUint(view, i * size, size, v);
        }
        return Reply.CONTINUE;
      }
      case Call.OUT: {
        const size = mb[Mb.SIZE];
        const f = size === 1 ? cb.outb : size === 2 ? cb.outw : cb.outl;
        if (!f) return Reply.UNHANDLED;
        for (let i = 0; i < mb[Mb.COUNT]; i++) {
          const r = reply(await f.call(cb, mb[Mb.A0], readUint(view, i * size, size), id));
          if (r !== Reply.CONTINUE) return r;
        }
        return Reply.CONTINUE;
      }
      case Call.MMIO_READ:
      case Call.MMIO_WRITE: {
        const write = mb[Mb.CALL] === Call.MMIO_WRITE;
        const f = write ? cb.mmioWrite : cb.mmioRead;
        if (!f) return Reply.UNHANDLED;
        const address = (mb[Mb.A0] >>> 0) + (mb[Mb.A1] >>> 0) * 0x1_0000_0000;
        const bytes = data.slice(0, mb[Mb.SIZE]);
        const r = reply(await f.call(cb, address, bytes, id));
        if (!write) data.set(bytes);
        return r;
      }
      case Call.HALT:
        return cb.halt ? reply(await cb.halt(id)) : Reply.UNHANDLED;
      case Call.SHUTDOWN:
        return cb.shutdown ? reply(await cb.shutdown(id)) : Reply.UNHANDLED;
      case Call.IO_WINDOW:
        return cb.ioWindow ? reply(await cb.ioWindow(id)) : Reply.UNHANDLED;
      case Call.PRE_RUN:
        return cb.preRun ? reply(await cb.preRun(id)) : Reply.CONTINUE;
      case Call.POST_RUN:
        await cb.postRun?.(id);
        return Reply.CONTINUE;
      case Call.PUSH_NMI:
        await cb.pushNmi?.(id);
        return Reply.CONTINUE;
      case Call.TRY_PUSH_INTERRUPTS:
        mb[Mb.RESULT2] = (await cb.tryPushInterrupts?.(id)) ? 1 : 0;
        return Reply.CONTINUE;
      case Call.DEBUG: {
        if (!cb.debug) return Reply.UNHANDLED;
        const info = {
          exception: Number(view.getBigUint64(0, true)),
          pc: view.getBigUint64(8, true),
          dr6: view.getBigUint64(16, true),
          dr7: view.getBigUint64(24, true),
        };
        return reply(await cb.debug(id, info));
      }
      case Call.TPR_ACCESS:
        if (!cb.tprAccess) return Reply.UNHANDLED;
        return reply(await cb.tprAccess(id, view.getBigUint64(0, true), mb[Mb.SIZE] !== 0));
      default:
        throw new Error(`unknown mailbox request ${mb[Mb.CALL]}`);
    }
  }

  /**
   * Stops everything and releases every worker, fd and mapping: running
   * vCPUs are stopped (their workers terminated if they do not stop within
   * `stopTimeoutMs`), workers end, then the vCPUs, the VM, its RAM and
   * `/dev/kvm` are closed. Idempotent. A pending `run()` settles first.
   */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    const state = this.#run;
    if (state) {
      this.#signalAll(Control.STOP);
      const settled = state.done.promise.then(() => true, () => true);
      if (!(await within(settled, this.#stopTimeoutMs))) {
        for (const slot of this.#slots) {
          if (slot.inRun && slot.alive) {
            this.#kill(slot, "terminated", new Error(`vCPU ${slot.id} did not stop: terminated`));
          }
        }
      }
      await settled;
    }
    for (const slot of this.#slots) {
      // A worker still starting never runs its vCPU (it gives it back and exits).
      forbidStart(this.#control, slot.index);
      if (slot.alive) slot.worker.postMessage({ type: "exit" });
    }
    for (const slot of this.#slots) {
      if (slot.alive && !(await within(slot.exited.promise, this.#stopTimeoutMs))) {
        this.#kill(slot, "terminated", new Error(`vCPU ${slot.id} worker did not exit`));
      }
      slot.worker.terminate();
    }
    // A worker that did not exit cleanly may still hold its vCPU's entry in the lifetime
    // record (its adopted vCPU, its guest-RAM views): give them back for it only once its
    // thread is gone. A thread that stays (stuck in native code) keeps them, and with them
    // the memory it may touch.
    for (const slot of this.#slots) {
      if (slot.cleanExit || !slot.kick.life) continue;
      const tid = heldBy(this.#control, slot.kick.life, slot.kick.slot!, slot.index);
      if (tid === 0) continue;
      if (tid > 0 && await threadGone(tid)) releaseHolds(slot.kick.life, slot.kick.slot!);
      else this.#leaked.push(slot.id);
    }
    if (this.#leaked.length > 0) {
      console.warn(
        `KvmContext.close: the worker thread of vCPU ${
          this.#leaked.join(", ")
        } could not be stopped; its memory stays mapped (leaked, not freed under it)`,
      );
    }
    this.#closed = true;
    for (const slot of this.#slots) Atomics.notify(slot.mailbox.words, Mb.REQ);
    this.kvm.close();
  }

  /** Same as {@linkcode close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Maps `memory` like libkvm: below the VGA hole, above it, and past 4 GiB. */
function mapRam(vm: Vm, memory: GuestMemory): SlotInfo[] {
  const size = memory.size;
  const slots: SlotInfo[] = [];
  const add = (gpa: number, offset: number, length: number) => {
    if (length <= 0) return;
    vm.setUserMemoryRegion({
      slot: slots.length,
      guestPhysAddr: gpa,
      memorySize: length,
      memory,
      offset,
    });
    slots.push({ guestPhysAddr: gpa, size: length, hostAddress: memory.address + BigInt(offset) });
  };
  add(0, 0, Math.min(size, VGA_HOLE_START));
  add(VGA_HOLE_END, VGA_HOLE_END, Math.min(size, LOW_RAM_END) - VGA_HOLE_END);
  add(0x1_0000_0000, LOW_RAM_END, size - LOW_RAM_END);
  if (slots.length === 0) {
    throw new KvmError("KvmContext.create", Errno.EINVAL, `no RAM mapped for ${hex(size)} bytes`);
  }
  return slots;
}

function callbackCodes(cb: KvmCallbacks): number[] {
  const codes: number[] = [];
  if (cb.inb || cb.inw || cb.inl) codes.push(Call.IN);
  if (cb.outb || cb.outw || cb.outl) codes.push(Call.OUT);
  if (cb.mmioRead) codes.push(Call.MMIO_READ);
  if (cb.mmioWrite) codes.push(Call.MMIO_WRITE);
  if (cb.halt) codes.push(Call.HALT);
  if (cb.shutdown) codes.push(Call.SHUTDOWN);
  if (cb.debug) codes.push(Call.DEBUG);
  if (cb.tprAccess) codes.push(Call.TPR_ACCESS);
  if (cb.preRun) codes.push(Call.PRE_RUN);
  if (cb.postRun) codes.push(Call.POST_RUN);
  if (cb.tryPushInterrupts) codes.push(Call.TRY_PUSH_INTERRUPTS);
  if (cb.pushNmi) codes.push(Call.PUSH_NMI);
  if (cb.ioWindow) codes.push(Call.IO_WINDOW);
  return codes;
}

function readUint(view: DataView, at: number, size: number): number {
  return size === 1
    ? view.getUint8(at)
    : size === 2
    ? view.getUint16(at, true)
    : view.getUint32(at, true);
}

function writeUint(view: DataView, at: number, size: number, value: number): void {
  if (size === 1) view.setUint8(at, value);
  else if (size === 2) view.setUint16(at, value, true);
  else view.setUint32(at, value >>> 0, true);
}

/** An Error again from what a worker posted. */
function revive(plain: PlainError): Error {
  const error = plain.errno !== undefined && plain.operation !== undefined
    ? new KvmError(plain.operation, plain.errno)
    : new Error(plain.message);
  error.message = plain.message;
  error.name = plain.name;
  if (plain.stack) error.stack = plain.stack;
  return error;
}

/** Whether `promise` settles within `ms`. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), ms));
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether kernel thread `tid` of this process exits within 2 s. */
async function threadGone(tid: number): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    if (!threadExists(tid)) return true;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return false;
}
