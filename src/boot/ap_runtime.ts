/**
 * The application processors of a machine whose devices live on the calling
 * thread (`LinuxMachine`, `MultibootMachine`), on the library's one
 * vCPU-on-Worker runtime: the worker module, control block, mailbox codec,
 * handshake and stop/kick path of `KvmContext` (`src/context/protocol.ts`).
 * Internal to the machines.
 *
 * Each AP's worker (with `ap_device.ts` as its only device) posts its port
 * I/O and MMIO exits, and how its run ended, in its mailbox and kicks the
 * bootstrap vCPU out of `KVM_RUN`; the machine's run loop, which runs the
 * bootstrap vCPU synchronously and turns no event loop, then calls
 * {@linkcode ApWorkers.serve}, which hands each waiting request to the
 * machine's handlers and answers it. The machine keeps its device wiring and
 * its exit policy; this module owns the workers' lifetime, and follows the
 * lifetime rule (`lifetime.ts`): an AP whose thread cannot be stopped keeps
 * its hold on its vCPU, so its run area stays mapped (reported, leaked).
 *
 * @module
 */

import {
  Call,
  Control,
  controlBytes,
  Ctl,
  ctl,
  type DeviceSpec,
  End,
  forbidStart,
  heldBy,
  type InitMessage,
  Mailbox,
  Mb,
  releaseHolds,
  Reply,
  signalVcpu,
  State,
  threadExists,
  VCPU_WORKER_URL,
  waitForState,
  type WorkerMessage,
} from "../context/protocol.ts";
import { Errno, KvmError } from "../errors.ts";
import { nativePath } from "../ffi/library.ts";
import type { KickTarget, Vcpu } from "../kvm/vcpu.ts";

/**
 * What the machine does with the APs' requests, on the bootstrap vCPU's
 * thread. Made once per machine: serving allocates nothing per request.
 */
export interface ApHandlers {
  /** A port access; for `"in"` fill `data` (`size * count` bytes). */
  io(
    vcpu: number,
    direction: "in" | "out",
    port: number,
    size: number,
    count: number,
    data: Uint8Array,
  ): void;
  /** An MMIO access; for a read fill `data`. */
  mmio(vcpu: number, address: number, isWrite: boolean, data: Uint8Array): void;
  /** The AP triple-faulted (`KVM_EXIT_SHUTDOWN`); `detail` has its register dump. */
  tripleFault(vcpu: number, detail: string): void;
  /** The AP reported a system event of `type`. */
  systemEvent(vcpu: number, type: number, detail: string): void;
  /** The AP cannot go on (internal error, unexpected exit, a failing ioctl). */
  error(vcpu: number, detail: string): void;
}

/** The main-thread requests an AP's worker sends: its exits go to the machine's devices. */
const AP_CALLS = [Call.IN, Call.OUT, Call.MMIO_READ, Call.MMIO_WRITE, Call.HALT, Call.END];
const AP_DEVICE_URL = new URL("./ap_device.ts", import.meta.url).href;
/** How long {@linkcode ApWorkers.stop} waits, by default, for the APs' workers to give their vCPUs back. */
const STOP_TIMEOUT_MS = 5_000;

/** Options of {@linkcode ApWorkers.start} (the machines pass none). */
export interface ApStartOptions {
  /** Device modules each AP's worker loads after its own (as `KvmContext`'s `devices`). */
  devices?: DeviceSpec[];
  /** How long {@linkcode ApWorkers.stop} waits for the workers (ms, default 5000). */
  stopTimeoutMs?: number;
}

interface Ap {
  vcpu: Vcpu;
  index: number;
  /** The vCPU's entry in the VM's lifetime record. */
  entry: number;
  box: Mailbox;
  worker?: Worker;
  /** The worker loaded its vCPU and devices ("ready"). */
  ready: boolean;
  /** Why the worker failed to start, if it did. */
  error?: string;
  /** Whether the worker never gave its vCPU back when stopped (its memory is kept). */
  stuck?: boolean;
}

/** One Worker per application processor, and the mailboxes they share with the bootstrap thread. */
export class ApWorkers {
  #aps: Ap[] = [];
  #control: Int32Array<ArrayBufferLike> = new Int32Array(0);
  #life: Int32Array | undefined;
  #running = false;
  #stopped = false;
  #stopTimeoutMs = STOP_TIMEOUT_MS;
  /** Wakes {@linkcode waitReady} when a worker reports (ready, failed, or an error). */
  #wake: () => void = () => {};

  /** How many APs there are. */
  get count(): number {
    return this.#aps.length;
  }

  /**
   * Starts one Worker per AP without waiting for them (a worker takes about a
   * second to load); {@linkcode waitReady} waits until each has claimed its
   * vCPU and sets them running. `vcpus` are the APs (not the bootstrap vCPU);
   * `bsp` is the thread they kick when a request waits. Call once.
   */
  start(
    vcpus: readonly Vcpu[],
    bsp: KickTarget,
    mmapSize: number,
    options: ApStartOptions = {},
  ): void {
    this.#stopTimeoutMs = options.stopTimeoutMs ?? STOP_TIMEOUT_MS;
    const devices = [{ url: AP_DEVICE_URL, options: undefined }, ...options.devices ?? []];
    const control = new Int32Array(new SharedArrayBuffer(controlBytes(vcpus.length)));
    control[Ctl.STOP_BY] = -1;
    this.#control = control;
    this.#aps = vcpus.map((vcpu, index) => ({
      vcpu,
      index,
      entry: vcpu.kickTarget.slot!,
      box: new Mailbox(),
      ready: false,
    }));
    for (const ap of this.#aps) {
      const kick = ap.vcpu.kickTarget;
      this.#life = kick.life;
      control[ctl(ap.index, Ctl.SLOT)] = kick.slot!;
      const worker = new Worker(VCPU_WORKER_URL, { type: "module", name: `AP ${ap.vcpu.id}` });
      ap.worker = worker;
      worker.onerror = (event) => {
        event.preventDefault();
        ap.error = `AP worker for vCPU ${ap.vcpu.id}: ${event.message}`;
        this.#wake();
      };
      worker.onmessage = (event: MessageEvent<WorkerMessage>) => {
        const msg = event.data;
        if (msg.type === "ready") ap.ready = true;
        else if (msg.type === "initFailed") {
          ap.error = `AP worker for vCPU ${ap.vcpu.id}: ${msg.error.message}`;
        }
        this.#wake();
        // How a run ended reaches the machine through the mailbox (Call.END), not here.
      };
      const init: InitMessage = {
        type: "init",
        vcpuId: ap.vcpu.id,
        index: ap.index,
        vcpuCount: vcpus.length,
        fd: ap.vcpu.unsafeFd,
        mmapSize,
        kick,
        libraryPath: nativePath,
        lazySymbols: true,
        slots: [],
        control: control.buffer as SharedArrayBuffer,
        mailbox: ap.box.buffer,
        devices,
        callbacks: AP_CALLS,
        irqchipInKernel: true,
        ignoreUnhandledIo: false,
        server: bsp,
      };
      worker.postMessage(init);
    }
  }

  /**
   * Waits on the event loop until every AP's worker has claimed its vCPU,
   * then sets them running. A worker that fails to load rejects at once with
   * a `KvmError` (EIO) saying why; past `deadline` (a `performance.now()`
   * time) it rejects with ETIMEDOUT. `operation` names the caller's
   * operation in the error.
   */
  async waitReady(operation: string, deadline: number): Promise<void> {
    while (!this.#aps.every((ap) => ap.ready)) {
      const error = this.#aps.find((ap) => ap.error)?.error;
      if (error || performance.now() > deadline) {
        throw new KvmError(
          operation,
          error ? Errno.EIO : Errno.ETIMEDOUT,
          error ?? "the vCPU workers did not start in time",
        );
      }
      // Woken by the workers' messages, not by polling: on a host with one CPU (the sandbox's
      // emulator) a 2 ms timer loop took CPU time from the workers it waited for.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - performance.now()) + 1);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = () => {};
    }
    if (this.#running || this.#stopped) return;
    this.#running = true;
    const c = this.#control;
    for (const ap of this.#aps) {
      Atomics.store(c, ctl(ap.index, Ctl.CONTROL), Control.RUN);
      Atomics.store(c, ctl(ap.index, Ctl.STATE), State.RUNNING);
      ap.worker!.postMessage({ type: "run" });
    }
  }

  /**
   * Serves every AP whose request waits, then answers it: call from the
   * bootstrap vCPU's loop after each of its exits (a waiting AP kicks it).
   */
  serve(handlers: ApHandlers): void {
    // Indexed, not for-of: this runs after every exit of the bootstrap vCPU.
    for (let i = 0; i < this.#aps.length; i++) {
      const ap = this.#aps[i];
      const box = ap.box;
      if (!box.pending) continue;
      const w = box.words;
      const id = ap.vcpu.id;
      switch (w[Mb.CALL]) {
        case Call.IN:
        case Call.OUT: {
          const size = w[Mb.SIZE];
          const count = w[Mb.COUNT];
          const out = w[Mb.CALL] === Call.OUT;
          handlers.io(id, out ? "out" : "in", w[Mb.A0], size, count, box.bytes(size * count));
          break;
        }
        case Call.MMIO_READ:
        case Call.MMIO_WRITE: {
          const address = (w[Mb.A0] >>> 0) + (w[Mb.A1] >>> 0) * 0x1_0000_0000;
          handlers.mmio(id, address, w[Mb.CALL] === Call.MMIO_WRITE, box.bytes(w[Mb.SIZE]));
          break;
        }
        case Call.HALT:
          // The in-kernel LAPIC handles HLT; should one come out, the AP just goes on.
          break;
        case Call.END:
          this.#ended(ap, handlers);
          break;
      }
      box.answer(Reply.CONTINUE);
    }
  }

  /** An AP's run ended on its own: tell the machine, with the AP's registers. */
  #ended(ap: Ap, handlers: ApHandlers): void {
    const w = ap.box.words;
    // The AP waits for this answer, out of KVM_RUN: its registers can be read.
    const detail = `${ap.box.text(w[Mb.SIZE])}\n${describeVcpu(ap.vcpu)}`;
    const id = ap.vcpu.id;
    switch (w[Mb.A0]) {
      case End.SHUTDOWN:
        return handlers.tripleFault(id, detail);
      case End.SYSTEM_EVENT:
        return handlers.systemEvent(id, w[Mb.A1], detail);
      default:
        return handlers.error(id, detail);
    }
  }

  /**
   * Stops every AP and ends its worker: synchronous, for a caller that turns
   * no event loop. A started AP is kicked out of `KVM_RUN` (its waiting
   * requests answered) until its worker reports it gave its vCPU back (5 s
   * at most, {@linkcode ApStartOptions.stopTimeoutMs}). A worker that died
   * has its holds given back once its thread is gone. One whose thread stays
   * is stuck: its registers are not read ({@linkcode describeStopped}), it is
   * listed in {@linkcode errors} and {@linkcode leakedVcpus}, and its hold on
   * the vCPU's lifetime record keeps the run area mapped (a leak instead of a
   * crash). A worker that had not claimed its vCPU yet never runs it.
   * Idempotent.
   */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    const c = this.#control;
    const life = this.#life;
    if (!life) return;
    const deadline = performance.now() + this.#stopTimeoutMs;
    for (const ap of this.#aps) {
      signalVcpu(c, life, ap.index, Control.STOP);
      if (forbidStart(c, ap.index) === 0) {
        // Never claimed: it gives the vCPU back itself if it gets that far, or holds nothing.
        ap.worker?.terminate();
        ap.worker = undefined;
        continue;
      }
      ap.worker?.postMessage({ type: "exit" });
    }
    for (const ap of this.#aps) {
      if (!ap.worker) continue;
      const tid = Atomics.load(c, ctl(ap.index, Ctl.TID));
      const exited = waitForState(c, ap.index, State.EXITED, deadline, 10, () => {
        // A request posted before the stop: answered without the machine (it has finished).
        if (ap.box.pending) ap.box.answer(Reply.STOP);
        signalVcpu(c, life, ap.index, Control.STOP);
        return !threadExists(tid); // the worker died (an uncaught error): nothing more will come
      });
      ap.worker.terminate();
      ap.worker = undefined;
      if (exited) continue;
      // The lifetime rule (protocol.ts): its holds are given back for it only once its thread
      // is provably gone; a thread that stays keeps them, and the memory it may touch.
      const holder = heldBy(c, life, ap.entry, ap.index);
      if (holder === 0) continue;
      if (holder > 0 && threadGoneWithin(holder, 500)) releaseHolds(life, ap.entry);
      else ap.stuck = true;
    }
  }

  /**
   * After {@linkcode stop}: a register dump of each AP that stopped (not the
   * stuck ones), each on a new line.
   */
  describeStopped(): string {
    let text = "";
    for (const ap of this.#aps) if (!ap.stuck) text += `\n${describeVcpu(ap.vcpu)}`;
    return text;
  }

  /** After {@linkcode stop}: the APs whose thread could not be stopped (their memory is kept). */
  get leakedVcpus(): number[] {
    return this.#aps.flatMap((ap) => ap.stuck ? [ap.vcpu.id] : []);
  }

  /** Why workers failed to start or stop (one line each; empty when none did). */
  get errors(): string[] {
    return this.#aps.flatMap((ap) => [
      ...ap.error ? [ap.error] : [],
      ...ap.stuck
        ? [
          `AP worker for vCPU ${ap.vcpu.id} could not be stopped: its memory stays mapped (leaked, not freed under it)`,
        ]
        : [],
    ]);
  }
}

/** Whether kernel thread `tid` ends within `ms` (blocking: the machines turn no event loop here). */
function threadGoneWithin(tid: number, ms: number): boolean {
  const sleep = new Int32Array(new SharedArrayBuffer(4));
  for (const end = performance.now() + ms; performance.now() < end; Atomics.wait(sleep, 0, 0, 10)) {
    if (!threadExists(tid)) return true;
  }
  return !threadExists(tid);
}

/**
 * A register dump for a vCPU that stopped unexpectedly (`vcpu.dump()`).
 * Never throws (a failing read is reported inline). Call only while the
 * vCPU is not in `KVM_RUN` (the read would wait for it).
 */
export function describeVcpu(vcpu: Vcpu): string {
  try {
    return vcpu.dump();
  } catch (e) {
    return `vCPU ${vcpu.id}: registers unreadable: ${(e as Error).message}`;
  }
}
