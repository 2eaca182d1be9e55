/**
 * The vCPU worker: one per vCPU, started by `KvmContext`. It loads the shim
 * itself, adopts the vCPU fd (the main thread keeps owning it), imports the
 * device modules, and runs the `KVM_RUN` loop synchronously, handling exits
 * right here: no message and no allocation per exit. The main thread steers
 * it through a control word in a SharedArrayBuffer plus a kick (immediate_exit
 * and a signal), and answers main-thread callbacks through a mailbox.
 *
 * @module
 * @internal
 */

import { Errno, KvmError } from "../errors.ts";
import { loadNative, native } from "../ffi/library.ts";
import type { VcpuExit } from "../kvm/exit.ts";
import { Vcpu } from "../kvm/vcpu.ts";
import { GuestRam } from "./guest_ram.ts";
import {
  Call,
  Control,
  Ctl,
  ctl,
  type InitMessage,
  type MainMessage,
  Mb,
  type PlainError,
  type PostedStop,
  Reply,
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
  readonly #mb: Int32Array;
  readonly #mbData: Uint8Array;
  readonly #mbData64: BigUint64Array;
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
  #seq = 0;
  #pendingStop: VcpuStop | undefined;

  constructor(msg: InitMessage, vcpu: Vcpu) {
    this.id = msg.vcpuId;
    this.index = msg.index;
    this.vcpu = vcpu;
    this.memory = new GuestRam(msg.slots, msg.kick);
    this.#life = msg.kick.life!;
    this.#control = new Int32Array(msg.control);
    this.#mb = new Int32Array(msg.mailbox, 0, Mb.DATA / 4);
    this.#mbData = new Uint8Array(msg.mailbox, Mb.DATA, Mb.DATA_SIZE);
    this.#mbData64 = new BigUint64Array(msg.mailbox, Mb.DATA, 4);
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

  /** A device asked to stop the VM: every control word to STOP, then kick every vCPU. */
  stopVm(reason: string): void {
    this.#pendingStop = new VcpuStop(reason);
    const c = this.#control;
    Atomics.compareExchange(c, Ctl.STOP_BY, -1, this.id);
    for (let i = 0; i < this.#vcpuCount; i++) {
      Atomics.store(c, ctl(i, Ctl.CONTROL), Control.STOP);
      Atomics.notify(c, ctl(i, Ctl.CONTROL));
      if (i === this.index) continue;
      const tid = Atomics.load(c, ctl(i, Ctl.TID));
      const slot = c[ctl(i, Ctl.SLOT)];
      // A closed vCPU's kick is a no-op; runAddress is only informative.
      if (tid > 0) Vcpu.kick({ threadId: tid, runAddress: 0n, life: this.#life, slot });
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
        exit = vcpu.run();
      } catch (error) {
        // An AP woken from UNINITIALIZED by INIT returns EAGAIN: run again.
        if (error instanceof KvmError && error.errno === Errno.EAGAIN) continue;
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
    switch (exit.reason) {
      case "io": {
        const out = exit.direction === "out";
        const port = exit.port;
        const list = out ? this.#portOut[port] : this.#portIn[port];
        if (list !== undefined) {
          for (let i = 0; i < list.length; i++) {
            const d = list[i];
            const r = this.#result(
              out
                ? d.ioOut!(port, exit.size, exit.data, this.id)
                : d.ioIn!(port, exit.size, exit.data, this.id),
            );
            if (r !== NOT_HANDLED) return r;
          }
        }
        const any = out ? this.#anyOut : this.#anyIn;
        for (let i = 0; i < any.length; i++) {
          const d = any[i];
          const r = this.#result(
            out
              ? d.ioOut!(port, exit.size, exit.data, this.id)
              : d.ioIn!(port, exit.size, exit.data, this.id),
          );
          if (r !== NOT_HANDLED) return r;
        }
        if (this.#callbacks.has(out ? Call.OUT : Call.IN)) {
          const data = exit.data;
          if (out) this.#mbData.set(data);
          const reply = this.#call(out ? Call.OUT : Call.IN, port, 0, exit.size, exit.count);
          if (!out && reply === Reply.CONTINUE) data.set(this.#mbData.subarray(0, data.length));
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
          detail: `${exit.direction} port 0x${
            port.toString(16)
          } size ${exit.size} count ${exit.count}`,
        };
      }
      case "mmio": {
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
          if (!write && reply === Reply.CONTINUE) data.set(this.#mbData.subarray(0, data.length));
          const r = this.#reply(reply);
          if (r !== NOT_HANDLED) return r;
        }
        return {
          kind: "unhandled",
          exit: "mmio",
          detail: `${write ? "write" : "read"} of ${exit.length} bytes at 0x${
            address.toString(16)
          }`,
        };
      }
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

  /**
   * One main-thread round trip: write the request, bump REQ, wake the main
   * thread, block until it stores the same number in ACK.
   */
  #call(code: number, a0: number, a1: number, size: number, count: number): number {
    const mb = this.#mb;
    mb[Mb.CALL] = code;
    mb[Mb.A0] = a0;
    mb[Mb.A1] = a1;
    mb[Mb.SIZE] = size;
    mb[Mb.COUNT] = count;
    const seq = this.#seq = (this.#seq + 1) & 0x3fffffff;
    Atomics.store(mb, Mb.REQ, seq);
    Atomics.notify(mb, Mb.REQ);
    for (let ack = Atomics.load(mb, Mb.ACK); ack !== seq; ack = Atomics.load(mb, Mb.ACK)) {
      Atomics.wait(mb, Mb.ACK, ack);
    }
    return mb[Mb.RESULT];
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

async function init(msg: InitMessage): Promise<void> {
  await loadNative({ path: msg.libraryPath });
  const vcpu = Vcpu.adopt(msg.fd, msg.vcpuId, msg.mmapSize, msg.kick);
  let r: Runner | undefined;
  try {
    r = new Runner(msg, vcpu);
    const tid = native().kvm_thread_id();
    Atomics.store(new Int32Array(msg.control), ctl(msg.index, Ctl.TID), tid);
    await r.loadDevices(msg);
  } catch (error) {
    // Give back what this worker holds: the context will not see it exit with a runner.
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
    scope.postMessage({ type: "stopped", stop, exits: counter.exits });
  } catch (error) {
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
  scope.postMessage({ type: "exited" });
  scope.close();
}

scope.onmessage = (event) => {
  const msg = event.data;
  switch (msg.type) {
    case "init":
      init(msg).catch((error) =>
        scope.postMessage({ type: "initFailed", error: plainError(error) })
      );
      break;
    case "run":
      if (runner) runOnce(runner);
      break;
    case "exit":
      shutdown();
      break;
  }
};
