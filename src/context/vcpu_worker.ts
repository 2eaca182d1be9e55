/**
 * The vCPU worker: one per vCPU, started by `KvmContext` and by the
 * machines' `ApWorkers` (one module, one protocol: `protocol.ts`). It loads
 * the shim itself, adopts the vCPU fd (the owner keeps owning it), claims the
 * vCPU for its thread, imports the device modules, and runs the `KVM_RUN`
 * loop synchronously, handling exits right here: no message and no
 * allocation per exit. The owner steers it through a control word in a
 * SharedArrayBuffer plus a kick (immediate_exit and a signal), and answers
 * its callbacks through a mailbox: asynchronously on the context's main
 * thread, or from a machine's run loop that the worker kicks (`server`).
 *
 * @module
 * @internal
 */

import { Errno, KvmError } from "../errors.ts";
import { loadNative, native } from "../ffi/library.ts";
import type { KickTarget } from "../kvm/kick.ts";
import type { IoExit, MmioExit, VcpuExit } from "../kvm/exit.ts";
import { Vcpu } from "../kvm/vcpu.ts";
import { GuestRam } from "./guest_ram.ts";
import {
  Call,
  claimThread,
  Control,
  Ctl,
  ctl,
  End,
  type InitMessage,
  Mailbox,
  type MainMessage,
  Mb,
  type PlainError,
  type PostedStop,
  Reply,
  signalVcpu,
  State,
  type WorkerMessage,
} from "./protocol.ts";
import { type DeviceFactory, type HandlerResult, type VcpuDevice, VcpuStop } from "./types.ts";

interface WorkerScope {
  postMessage(message: WorkerMessage): void;
  onmessage: ((event: MessageEvent<MainMessage>) => void) | null;
  close(): void;
}
const scope = globalThis as unknown as WorkerScope;

/** A handler's "not mine": the next one gets the exit. */
const NOT_HANDLED = 0;

/** Runs one vCPU: dispatch tables built once, then the hot loop. */
class Runner {
  readonly id: number;
  readonly index: number;
  readonly vcpu: Vcpu;
  readonly memory: GuestRam;
  readonly devices: VcpuDevice[] = [];
  readonly #control: Int32Array;
  /** The VM's lifetime record: kicks to the other vCPUs go through it. */
  readonly #life: Int32Array;
  readonly #box: Mailbox;
  readonly #mb: Int32Array;
  readonly #mbData: Uint8Array;
  readonly #mbData64: BigUint64Array;
  /** The thread that serves the mailbox by polling: kicked after each request. */
  readonly #server: KickTarget | undefined;
  readonly #callbacks: Set<number>;
  readonly #irqchip: boolean;
  readonly #ignoreUnhandledIo: boolean;
  readonly #vcpuCount: number;
  /** Per port, the devices that claimed it; then the catch-all ones. */
  #portIn: (VcpuDevice[] | undefined)[] = new Array(0x10000);
  #portOut: (VcpuDevice[] | undefined)[] = new Array(0x10000);
  #anyIn: VcpuDevice[] = [];
  #anyOut: VcpuDevice[] = [];
  #mmio: { first: number; last: number; device: VcpuDevice }[] = [];
  #preRun: VcpuDevice[] = [];
  #postRun: VcpuDevice[] = [];
  #tryPush: VcpuDevice[] = [];
  #pushNmi: VcpuDevice[] = [];
  #pendingStop: VcpuStop | undefined;
  /** The type of the system event that ended the run unhandled (for a {@linkcode Call.END}). */
  systemEventType = 0;

  constructor(msg: InitMessage, vcpu: Vcpu) {
    this.id = msg.vcpuId;
    this.index = msg.index;
    this.vcpu = vcpu;
    this.memory = new GuestRam(msg.slots, msg.kick);
    this.#life = msg.kick.life!;
    this.#control = new Int32Array(msg.control);
    this.#box = new Mailbox(msg.mailbox);
    this.#mb = this.#box.words;
    this.#mbData = this.#box.data;
    this.#mbData64 = this.#box.data64;
    this.#server = msg.server;
    this.#callbacks = new Set(msg.callbacks);
    this.#irqchip = msg.irqchipInKernel;
    this.#ignoreUnhandledIo = msg.ignoreUnhandledIo;
    this.#vcpuCount = msg.vcpuCount;
  }

  async loadDevices(msg: InitMessage): Promise<void> {
    for (const spec of msg.devices) {
      const module = await import(spec.url);
      const factory = module.default as DeviceFactory;
      if (typeof factory !== "function") {
        throw new TypeError(`device module ${spec.url} has no default export factory`);
      }
      const device = await factory({
        vcpuId: this.id,
        vcpuCount: msg.vcpuCount,
        vcpu: this.vcpu,
        memory: this.memory,
        options: spec.options,
        irqchipInKernel: msg.irqchipInKernel,
        stopVm: (reason) => this.stopVm(reason),
      });
      this.devices.push(device);
    }
    for (const d of this.devices) {
      if (d.ioIn) this.#claimPorts(d, this.#portIn, this.#anyIn);
      if (d.ioOut) this.#claimPorts(d, this.#portOut, this.#anyOut);
      if (d.mmioRead || d.mmioWrite) {
        for (const [first, last] of d.mmioRanges ?? [[0, Number.MAX_SAFE_INTEGER]]) {
          this.#mmio.push({ first, last, device: d });
        }
      }
      if (d.preRun) this.#preRun.push(d);
      if (d.postRun) this.#postRun.push(d);
      if (d.tryPushInterrupts) this.#tryPush.push(d);
      if (d.pushNmi) this.#pushNmi.push(d);
    }
  }

  #claimPorts(d: VcpuDevice, table: (VcpuDevice[] | undefined)[], any: VcpuDevice[]): void {
    if (!d.ioPorts) return void any.push(d);
    for (const [first, last] of d.ioPorts) {
      for (let p = first; p <= last && p <= 0xffff; p++) (table[p] ??= []).push(d);
    }
  }

  /** A device asked to stop the VM: every control word to STOP, then kick every other vCPU. */
  stopVm(reason: string): void {
    this.#pendingStop = new VcpuStop(reason);
    const c = this.#control;
    Atomics.compareExchange(c, Ctl.STOP_BY, -1, this.id);
    for (let i = 0; i < this.#vcpuCount; i++) {
      signalVcpu(c, this.#life, i, Control.STOP, i !== this.index);
    }
  }

  /**
   * The run loop. Returns why the vCPU stopped; throws what a handler threw.
   * Hot path: one Atomics.load of the control word, `KVM_RUN`, and a dispatch
   * through tables built at start; exit objects are the vCPU's reused ones.
   */
  run(counter: { exits: number }): PostedStop {
    const c = this.#control;
    const controlIndex = ctl(this.index, Ctl.CONTROL);
    const stateIndex = ctl(this.index, Ctl.STATE);
    const vcpu = this.vcpu;
    const run = vcpu.runArea;
    const hasPre = this.#preRun.length > 0 || this.#callbacks.has(Call.PRE_RUN);
    const hasPost = this.#postRun.length > 0 || this.#callbacks.has(Call.POST_RUN);
    const hasNmi = this.#pushNmi.length > 0 || this.#callbacks.has(Call.PUSH_NMI);
    const hasPush = !this.#irqchip &&
      (this.#tryPush.length > 0 || this.#callbacks.has(Call.TRY_PUSH_INTERRUPTS));
    Atomics.store(c, stateIndex, State.RUNNING);
    Atomics.notify(c, stateIndex);
    for (;;) {
      const command = Atomics.load(c, controlIndex);
      if (command !== Control.RUN) {
        if (command === Control.STOP) return this.#stopReason();
        Atomics.store(c, stateIndex, State.PAUSED);
        Atomics.notify(c, stateIndex);
        while (Atomics.load(c, controlIndex) === Control.PAUSE) {
          Atomics.wait(c, controlIndex, Control.PAUSE);
        }
        Atomics.store(c, stateIndex, State.RUNNING);
        Atomics.notify(c, stateIndex);
        continue;
      }
      if (hasNmi) this.#pushNmiNow();
      if (hasPush) run.requestInterruptWindow = this.#tryPushInterrupts() ? 1 : 0;
      if (hasPre) {
        const stop = this.#preRunNow();
        if (stop) return stop;
      }
      let exit: VcpuExit;
      try {
        // EAGAIN (an AP woken from UNINITIALIZED) and EINTR are handled in Vcpu.run().
        exit = vcpu.run();
      } catch (error) {
        throw new KvmRunFailure(error);
      }
      if (exit.reason === "interrupted") continue; // a kick: re-read the control word
      counter.exits++;
      if (hasPost) this.#postRunNow();
      const stop = this.#dispatch(exit);
      if (stop !== undefined) return stop;
    }
  }

  #stopReason(): PostedStop {
    const pending = this.#pendingStop;
    if (pending) {
      this.#pendingStop = undefined;
      return { kind: "handler", reason: pending.reason };
    }
    const by = Atomics.load(this.#control, Ctl.STOP_BY);
    return by >= 0 && by !== this.id ? { kind: "vmStopped", by } : { kind: "requested" };
  }

  /** Turns a handler's result into a stop (or undefined to go on). */
  #result(r: HandlerResult): PostedStop | undefined | typeof NOT_HANDLED {
    if (r === undefined || r === true) return undefined;
    if (r === false) return NOT_HANDLED;
    if (r instanceof VcpuStop) {
      this.#pendingStop = undefined;
      return { kind: "handler", reason: r.reason };
    }
    throw new TypeError(
      `a device handler returned ${String(r)}; expected void, boolean or stopVcpu()`,
    );
  }

  #dispatch(exit: VcpuExit): PostedStop | undefined {
    // A device's stopVm() from this vCPU ends it once its handler returned.
    // I/O and MMIO, the exits of a busy device, in small methods of their own:
    // V8 optimises (and can inline) them apart from the rarer exits' code.
    if (exit.reason === "io") return this.#dispatchIo(exit);
    if (exit.reason === "mmio") return this.#dispatchMmio(exit);
    return this.#dispatchOther(exit);
  }

  #dispatchIo(exit: IoExit): PostedStop | undefined {
    const out = exit.direction === "out";
    const port = exit.port;
    const list = out ? this.#portOut[port] : this.#portIn[port];
    if (list !== undefined) {
      const r = this.#offerIo(list, out, port, exit);
      if (r !== NOT_HANDLED) return r;
    }
    const r = this.#offerIo(out ? this.#anyOut : this.#anyIn, out, port, exit);
    if (r !== NOT_HANDLED) return r;
    if (this.#callbacks.has(out ? Call.OUT : Call.IN)) {
      const data = exit.data;
      if (out) this.#mbData.set(data);
      const reply = this.#call(out ? Call.OUT : Call.IN, port, 0, exit.size, exit.count);
      if (!out && reply === Reply.CONTINUE) data.set(this.#box.bytes(data.length));
      const r = this.#reply(reply);
      if (r !== NOT_HANDLED) return r;
    }
    if (this.#ignoreUnhandledIo) {
      if (!out) exit.data.fill(0xff);
      return undefined;
    }
    return {
      kind: "unhandled",
      exit: "io",
      detail: `${exit.direction} port 0x${port.toString(16)} size ${exit.size} count ${exit.count}`,
    };
  }

  /** Offers an I/O exit to `devices` in order, until one handles it. */
  #offerIo(
    devices: readonly VcpuDevice[],
    out: boolean,
    port: number,
    exit: IoExit,
  ): PostedStop | undefined | typeof NOT_HANDLED {
    for (let i = 0; i < devices.length; i++) {
      const d = devices[i];
      const r = this.#result(
        out
          ? d.ioOut!(port, exit.size, exit.data, this.id)
          : d.ioIn!(port, exit.size, exit.data, this.id),
      );
      if (r !== NOT_HANDLED) return r;
    }
    return NOT_HANDLED;
  }

  #dispatchMmio(exit: MmioExit): PostedStop | undefined {
    const address = exit.address;
    const write = exit.isWrite;
    const mmio = this.#mmio;
    for (let i = 0; i < mmio.length; i++) {
      const m = mmio[i];
      if (address < m.first || address > m.last) continue;
      const d = m.device;
      const hook = write ? d.mmioWrite : d.mmioRead;
      if (!hook) continue;
      const r = this.#result(hook.call(d, address, exit.length, exit.data, this.id));
      if (r !== NOT_HANDLED) return r;
    }
    const code = write ? Call.MMIO_WRITE : Call.MMIO_READ;
    if (this.#callbacks.has(code)) {
      const data = exit.data;
      if (write) this.#mbData.set(data);
      const reply = this.#call(
        code,
        address % 0x1_0000_0000,
        Math.floor(address / 0x1_0000_0000),
        data.length,
        1,
      );
      if (!write && reply === Reply.CONTINUE) data.set(this.#box.bytes(data.length));
      const r = this.#reply(reply);
      if (r !== NOT_HANDLED) return r;
    }
    return {
      kind: "unhandled",
      exit: "mmio",
      detail: `${write ? "write" : "read"} of ${exit.length} bytes at 0x${address.toString(16)}`,
    };
  }

  #dispatchOther(exit: VcpuExit): PostedStop | undefined {
    switch (exit.reason) {
      case "hlt": {
        const r = this.#simple("halt", Call.HALT);
        return r === NOT_HANDLED ? { kind: "hlt" } : r;
      }
      case "shutdown": {
        const r = this.#simple("shutdown", Call.SHUTDOWN);
        if (r !== NOT_HANDLED) return r;
        // A triple fault resets a real machine: end the VM.
        this.stopVm("shutdown");
        this.#pendingStop = undefined;
        return { kind: "shutdown" };
      }
      case "irqWindowOpen": {
        const r = this.#simple("irqWindowOpen", Call.IO_WINDOW);
        return r === NOT_HANDLED ? undefined : r;
      }
      case "debug": {
        for (const d of this.devices) {
          if (!d.debug) continue;
          const r = this.#result(d.debug(exit, this.id));
          if (r !== NOT_HANDLED) return r;
        }
        if (this.#callbacks.has(Call.DEBUG)) {
          const w = this.#mbData64;
          w[0] = BigInt(exit.exception);
          w[1] = exit.pc;
          w[2] = exit.dr6;
          w[3] = exit.dr7;
          const r = this.#reply(this.#call(Call.DEBUG, 0, 0, 0, 0));
          if (r !== NOT_HANDLED) return r;
        }
        return {
          kind: "unhandled",
          exit: "debug",
          detail: `exception ${exit.exception} at 0x${exit.pc.toString(16)}`,
        };
      }
      case "tprAccess": {
        for (const d of this.devices) {
          if (!d.tprAccess) continue;
          const r = this.#result(d.tprAccess(exit.rip, exit.isWrite, this.id));
          if (r !== NOT_HANDLED) return r;
        }
        if (this.#callbacks.has(Call.TPR_ACCESS)) {
          this.#mbData64[0] = exit.rip;
          const r = this.#reply(this.#call(Call.TPR_ACCESS, 0, 0, exit.isWrite ? 1 : 0, 0));
          if (r !== NOT_HANDLED) return r;
        }
        return undefined;
      }
      default: {
        for (const d of this.devices) {
          if (!d.exit) continue;
          const r = this.#result(d.exit(exit, this.id));
          if (r !== NOT_HANDLED) return r;
        }
        this.systemEventType = exit.reason === "systemEvent" ? exit.type : 0;
        return { kind: "unhandled", exit: exit.reason, detail: describeExit(exit) };
      }
    }
  }

  #simple(
    hook: "halt" | "shutdown" | "irqWindowOpen",
    code: number,
  ): PostedStop | undefined | typeof NOT_HANDLED {
    for (const d of this.devices) {
      const f = d[hook];
      if (!f) continue;
      const r = this.#result(f.call(d, this.id));
      if (r !== NOT_HANDLED) return r;
    }
    if (this.#callbacks.has(code)) return this.#reply(this.#call(code, 0, 0, 0, 0));
    return NOT_HANDLED;
  }

  #preRunNow(): PostedStop | undefined {
    for (const d of this.#preRun) {
      const r = this.#result(d.preRun!(this.id));
      if (r !== undefined && r !== NOT_HANDLED) return r;
    }
    if (this.#callbacks.has(Call.PRE_RUN)) {
      const r = this.#reply(this.#call(Call.PRE_RUN, 0, 0, 0, 0));
      if (r !== undefined && r !== NOT_HANDLED) return r;
    }
    return undefined;
  }

  #postRunNow(): void {
    for (const d of this.#postRun) d.postRun!(this.id);
    if (this.#callbacks.has(Call.POST_RUN)) this.#reply(this.#call(Call.POST_RUN, 0, 0, 0, 0));
  }

  #pushNmiNow(): void {
    for (const d of this.#pushNmi) d.pushNmi!(this.id);
    if (this.#callbacks.has(Call.PUSH_NMI)) this.#reply(this.#call(Call.PUSH_NMI, 0, 0, 0, 0));
  }

  #tryPushInterrupts(): boolean {
    let want = false;
    for (const d of this.#tryPush) want = d.tryPushInterrupts!(this.id) || want;
    if (this.#callbacks.has(Call.TRY_PUSH_INTERRUPTS)) {
      this.#reply(this.#call(Call.TRY_PUSH_INTERRUPTS, 0, 0, 0, 0));
      want = this.#mb[Mb.RESULT2] !== 0 || want;
    }
    return want;
  }

  /** A main-thread reply as a stop, undefined (continue) or NOT_HANDLED. */
  #reply(reply: number): PostedStop | undefined | typeof NOT_HANDLED {
    switch (reply) {
      case Reply.CONTINUE:
        return undefined;
      case Reply.STOP:
        return { kind: "callback" };
      case Reply.UNHANDLED:
        return NOT_HANDLED;
      default:
        throw new CallbackFailure();
    }
  }

  /** One round trip to the mailbox's server (see {@linkcode Mailbox.call}). */
  #call(code: number, a0: number, a1: number, size: number, count: number): number {
    return this.#box.call(code, a0, a1, size, count, this.#server);
  }

  /**
   * Tells a server that registered {@linkcode Call.END} how the run ended,
   * when it did not ask for it (see `protocol.ts`). The end path, not the
   * hot one.
   */
  reportEnd(stop: PostedStop | undefined, error: unknown): void {
    if (!this.#callbacks.has(Call.END)) return;
    let code: number;
    let text: string;
    if (stop === undefined) {
      code = End.FAILED;
      text = `vCPU ${this.id}: ${error instanceof Error ? error.message : String(error)}`;
    } else if (stop.kind === "shutdown") {
      code = End.SHUTDOWN;
      text = `vCPU ${this.id}: triple fault (KVM_EXIT_SHUTDOWN)`;
    } else if (stop.kind === "unhandled") {
      code = stop.exit === "systemEvent" ? End.SYSTEM_EVENT : End.UNHANDLED;
      text = `vCPU ${this.id}: unhandled ${stop.exit} exit (${stop.detail})`;
    } else if (stop.kind === "hlt" || stop.kind === "handler") {
      code = End.OTHER;
      text = `vCPU ${this.id}: stopped (${stop.kind === "hlt" ? "hlt" : stop.reason})`;
    } else {
      return; // requested, by the server's reply, or another vCPU stopped the VM
    }
    const length = this.#box.setText(text);
    this.#call(Call.END, code, this.systemEventType, length, 0);
  }
}

/** `KVM_RUN` failed (not a handler's fault). */
class KvmRunFailure extends Error {
  constructor(cause: unknown) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
  }
}

/** A main-thread callback threw; the main thread holds the error. */
class CallbackFailure extends Error {}

/** An error as plain data that always survives postMessage. */
function plainError(error: unknown): PlainError {
  if (error instanceof Error) {
    const plain: PlainError = { name: error.name, message: error.message, stack: error.stack };
    if (error instanceof KvmError) {
      plain.errno = error.errno;
      plain.operation = error.operation;
    }
    return plain;
  }
  return { name: "Error", message: String(error) };
}

function describeExit(exit: VcpuExit): string {
  const fields: string[] = [];
  for (const [k, v] of Object.entries(exit)) {
    if (k === "reason" || typeof v === "object") continue;
    fields.push(`${k}=${typeof v === "bigint" ? `0x${v.toString(16)}` : String(v)}`);
  }
  return fields.join(" ");
}

let runner: Runner | undefined;
/** The init message's control block and index: the "exited" state is stored there even when init failed. */
let started: { control: Int32Array; index: number } | undefined;
/** Init in progress: an "exit" waits for it, so what init took is given back. */
let starting: Promise<void> = Promise.resolve();

async function init(msg: InitMessage): Promise<void> {
  started = { control: new Int32Array(msg.control), index: msg.index };
  await loadNative({ path: msg.libraryPath, lazySymbols: msg.lazySymbols });
  const vcpu = Vcpu.adopt(msg.fd, msg.vcpuId, msg.mmapSize, msg.kick);
  let r: Runner | undefined;
  try {
    r = new Runner(msg, vcpu);
    // The handshake: the owner may have stopped this vCPU before the worker got here.
    if (!claimThread(started.control, msg.index, native().kvm_thread_id())) {
      throw new KvmError(
        "start vCPU worker",
        Errno.EBADF,
        "its owner stopped it before it started",
      );
    }
    await r.loadDevices(msg);
  } catch (error) {
    // Give back what this worker holds: the owner will not see it exit with a runner.
    r?.memory.close();
    vcpu.close();
    throw error;
  }
  runner = r;
  scope.postMessage({ type: "ready", tid: native().kvm_thread_id() });
}

function runOnce(r: Runner): void {
  const counter = { exits: 0 };
  try {
    const stop = r.run(counter);
    r.reportEnd(stop, undefined);
    scope.postMessage({ type: "stopped", stop, exits: counter.exits });
  } catch (error) {
    try {
      r.reportEnd(undefined, error instanceof KvmRunFailure ? error.cause : error);
    } catch {
      // The report is best effort: the message below still goes out.
    }
    let regs: Record<string, bigint> | undefined;
    try {
      regs = { ...r.vcpu.getRegs().toJSON() };
    } catch {
      regs = undefined;
    }
    const callbackError = error instanceof CallbackFailure;
    const kvm = error instanceof KvmRunFailure;
    scope.postMessage({
      type: "failed",
      error: plainError(kvm ? (error as KvmRunFailure).cause : error),
      callbackError,
      kvmError: kvm,
      regs,
      exits: counter.exits,
    });
  }
}

function shutdown(): void {
  const r = runner;
  runner = undefined;
  if (r) {
    for (const d of r.devices) {
      try {
        d.close?.();
      } catch {
        // A device's close failing must not keep the worker alive.
      }
    }
    r.memory.close();
    r.vcpu.close();
  }
  if (started) {
    const at = ctl(started.index, Ctl.STATE);
    Atomics.store(started.control, at, State.EXITED);
    Atomics.notify(started.control, at);
  }
  scope.postMessage({ type: "exited" });
  scope.close();
}

scope.onmessage = (event) => {
  const msg = event.data;
  switch (msg.type) {
    case "init":
      starting = init(msg).catch((error) =>
        scope.postMessage({ type: "initFailed", error: plainError(error) })
      );
      break;
    case "run":
      if (runner) runOnce(runner);
      break;
    case "exit":
      starting.then(shutdown);
      break;
  }
};
