/**
 * The one vCPU-on-Worker protocol, shared by `KvmContext` and the machines'
 * application processors (`ApWorkers`): the layout of the control block and
 * of the mailbox SharedArrayBuffers, the mailbox codec ({@linkcode Mailbox}),
 * the thread handshake ({@linkcode claimThread} / {@linkcode forbidStart}),
 * the one stop/kick path ({@linkcode signalVcpu}) and the messages the
 * threads post (rare events only: ready, stopped, failed, exited; never one
 * per exit).
 *
 * Whoever owns the workers (the context on the event loop, `ApWorkers` from
 * a synchronous run loop) follows the lifetime rule of `lifetime.ts`: a
 * worker's hold on its vCPU is given back by the worker itself (state
 * {@linkcode State.EXITED}); a worker that never gets there keeps it, and
 * with it the memory it may touch.
 *
 * @module
 * @internal
 */

import { Errno, KvmError } from "../errors.ts";
import { type KickTarget, kickVcpu } from "../kvm/kick.ts";
import { Entry, VmLife } from "../kvm/lifetime.ts";

/** The worker module every vCPU runs on. */
export const VCPU_WORKER_URL: string = new URL("./vcpu_worker.ts", import.meta.url).href;

/** Control word values (main → worker): what the worker should do next. */
export const Control = { RUN: 0, PAUSE: 1, STOP: 2 } as const;

/**
 * Worker state values (worker → main). `EXITED`: the worker gave back its
 * vCPU and guest-RAM holds and will not touch them again (stored before its
 * "exited" message, so an owner that cannot take messages can wait for it).
 */
export const State = { IDLE: 0, RUNNING: 1, PAUSED: 2, EXITED: 3 } as const;

/**
 * Layout of the control SharedArrayBuffer, in Int32 words. Global words come
 * first, then one block per vCPU. Every worker sees every block, so a worker
 * can stop the whole VM itself (`stopVm`) without a round trip.
 */
export const Ctl = {
  /** Global: the vCPU id that asked to stop the VM, or -1. */
  STOP_BY: 0,
  /** Words before the first vCPU block. */
  HEADER: 4,
  /** Words per vCPU block. */
  BLOCK: 8,
  /** In a block: the control word ({@linkcode Control}). */
  CONTROL: 0,
  /** In a block: the worker's state ({@linkcode State}). */
  STATE: 1,
  /**
   * In a block: the kernel thread id of the worker, claimed with
   * {@linkcode claimThread} once it holds its vCPU (0 until then; -1 when
   * the owner stopped it first with {@linkcode forbidStart}).
   */
  TID: 2,
  /** In a block: the vCPU's entry in the VM's lifetime record (see `lifetime.ts`). */
  SLOT: 3,
} as const;

/** Bytes of the control buffer for `vcpus` vCPUs. */
export function controlBytes(vcpus: number): number {
  return (Ctl.HEADER + Ctl.BLOCK * vcpus) * 4;
}

/** Index of word `field` of vCPU `index`'s block. */
export function ctl(index: number, field: number): number {
  return Ctl.HEADER + Ctl.BLOCK * index + field;
}

/** What a mailbox request asks the main thread. */
export const Call = {
  IN: 1,
  OUT: 2,
  MMIO_READ: 3,
  MMIO_WRITE: 4,
  HALT: 5,
  SHUTDOWN: 6,
  DEBUG: 7,
  TPR_ACCESS: 8,
  PRE_RUN: 9,
  POST_RUN: 10,
  TRY_PUSH_INTERRUPTS: 11,
  PUSH_NMI: 12,
  IO_WINDOW: 13,
  /**
   * The run ended in a way the server did not ask for ({@linkcode End} in
   * A0, a system event's type in A1, a description as UTF-8 in the data
   * area, its length in SIZE). Sent only to a server that registered it: one
   * that polls the mailbox from a synchronous loop cannot receive the
   * worker's "stopped" or "failed" message.
   */
  END: 14,
} as const;

/** How a run ended, in a {@linkcode Call.END} request. */
export const End = {
  /** `KVM_EXIT_SHUTDOWN` (triple fault) that nothing handled. */
  SHUTDOWN: 1,
  /** A `KVM_EXIT_SYSTEM_EVENT` that nothing handled (its type in A1). */
  SYSTEM_EVENT: 2,
  /** Any other exit that nothing handled. */
  UNHANDLED: 3,
  /** `KVM_RUN` failed or a handler threw. */
  FAILED: 4,
  /** A device stopped the vCPU, or HLT without a handler. */
  OTHER: 5,
} as const;

/** The main thread's answer. */
export const Reply = {
  /** Continue running the vCPU. */
  CONTINUE: 0,
  /** Stop this vCPU (the reason stays on the main thread). */
  STOP: 1,
  /** The callback threw: stop the VM (the error stays on the main thread). */
  ERROR: 2,
  /** No callback for this request: apply the default. */
  UNHANDLED: 3,
} as const;

/**
 * Layout of a vCPU's mailbox SharedArrayBuffer: a header of Int32 words, then
 * a data area. The worker writes the request, bumps `REQ` and blocks in
 * `Atomics.wait` on `ACK`; the server (the context's main thread waiting with
 * `Atomics.waitAsync` on `REQ`, or a synchronous loop polling
 * {@linkcode Mailbox.pending} after the worker kicked it) answers and stores
 * the same sequence number in `ACK`.
 */
export const Mb = {
  /** Request sequence number (worker writes). */
  REQ: 0,
  /** Sequence number answered (main writes). */
  ACK: 1,
  /** {@linkcode Call} code. */
  CALL: 2,
  /** Port, or address low 32 bits, or RIP low. */
  A0: 3,
  /** Address high 32 bits, or RIP high. */
  A1: 4,
  /** Size (port I/O element size, MMIO length), or a flag. */
  SIZE: 5,
  /** Element count (string port I/O), or a second value. */
  COUNT: 6,
  /** {@linkcode Reply} code, or a returned number. */
  RESULT: 7,
  /** Second returned value. */
  RESULT2: 8,
  /** Byte offset of the data area. */
  DATA: 64,
  /** Bytes of the data area: a page, the most one port I/O exit can carry. */
  DATA_SIZE: 4096,
} as const;

/**
 * How long one side of a mailbox round trip polls for the other's answer
 * before it sleeps, in ms. A sleeping thread's wake-up (futex, or the event
 * loop for `Atomics.waitAsync`) costs 10-15 us on the machines measured, more
 * than a whole exit: a callback that answers within this window costs no
 * wake-up, and a slow one costs this much CPU time once.
 */
export const MAILBOX_SPIN_MS = 0.03;

/**
 * Polls `words[index]` until it holds `value` or {@linkcode MAILBOX_SPIN_MS}
 * passed; returns the last value read.
 */
export function spinUntil(words: Int32Array, index: number, value: number): number {
  let seen = Atomics.load(words, index);
  if (seen === value) return seen;
  // After a poll that timed out, the next ones are skipped: on a machine with
  // no core to spare, the other side cannot run while this one polls, and
  // polling would add its whole window to every round trip.
  if (spinsSkipped > 0) {
    spinsSkipped--;
    return seen;
  }
  const deadline = performance.now() + MAILBOX_SPIN_MS;
  for (let i = 1; seen !== value; i++) {
    // The clock is read every 64 polls: a read costs as much as many polls.
    if ((i & 63) === 0 && performance.now() >= deadline) {
      spinsSkipped = SPINS_SKIPPED;
      return seen;
    }
    seen = Atomics.load(words, index);
  }
  return seen;
}

/**
 * Polls skipped after one timed out, per thread (each has its own module
 * instance). Measured for case 4 of `deno task bench` at load 3-4 on 2 cores:
 * skipping 64 after each timeout 19-20 us per round trip, 16 after four in a
 * row 27-70, never skipping 73-102, never polling 26-41; 9.3 us on a quiet
 * machine, against 28-30 without polling.
 */
const SPINS_SKIPPED = 64;
let spinsSkipped = 0;

/** Bytes of one vCPU's mailbox. */
export const MAILBOX_BYTES: number = Mb.DATA + Mb.DATA_SIZE;

/**
 * The mailbox codec: the one way both sides read and write a vCPU's mailbox.
 * Views are made once; {@linkcode bytes} keeps one view per length, so
 * neither side allocates per request.
 */
export class Mailbox {
  /** The shared buffer, to post to the worker. */
  readonly buffer: SharedArrayBuffer;
  /** The header words ({@linkcode Mb}). */
  readonly words: Int32Array;
  /** The data area. */
  readonly data: Uint8Array;
  /** The data area's first four 64-bit words (debug and TPR requests). */
  readonly data64: BigUint64Array;
  #views: (Uint8Array | undefined)[] = [];
  #seq = 0;

  /** Wraps `buffer` (a worker's side), or a new one (the owner's side). */
  constructor(buffer: SharedArrayBuffer = new SharedArrayBuffer(MAILBOX_BYTES)) {
    this.buffer = buffer;
    this.words = new Int32Array(buffer, 0, Mb.DATA / 4);
    this.data = new Uint8Array(buffer, Mb.DATA, Mb.DATA_SIZE);
    this.data64 = new BigUint64Array(buffer, Mb.DATA, 4);
  }

  /** The first `length` bytes of the data area, as a view made once per length. */
  bytes(length: number): Uint8Array {
    return this.#views[length] ??= this.data.subarray(0, length);
  }

  /**
   * Worker side: one round trip. Writes the request, bumps `REQ`, wakes a
   * server waiting on it, kicks `server` (a thread that polls between its own
   * vCPU's exits) and blocks until the same number is in `ACK`. Returns the
   * {@linkcode Reply}.
   */
  call(
    code: number,
    a0: number,
    a1: number,
    size: number,
    count: number,
    server: KickTarget | undefined,
  ): number {
    const w = this.words;
    w[Mb.CALL] = code;
    w[Mb.A0] = a0;
    w[Mb.A1] = a1;
    w[Mb.SIZE] = size;
    w[Mb.COUNT] = count;
    const seq = this.#seq = (this.#seq + 1) & 0x3fffffff;
    Atomics.store(w, Mb.REQ, seq);
    Atomics.notify(w, Mb.REQ);
    if (server !== undefined) kickQuietly(server);
    let ack = spinUntil(w, Mb.ACK, seq);
    for (; ack !== seq; ack = Atomics.load(w, Mb.ACK)) Atomics.wait(w, Mb.ACK, ack);
    return w[Mb.RESULT];
  }

  /** Server side: whether a request waits for its answer. */
  get pending(): boolean {
    return Atomics.load(this.words, Mb.REQ) !== Atomics.load(this.words, Mb.ACK);
  }

  /** Server side: answers the waiting request with `reply` ({@linkcode Reply}) and wakes the worker. */
  answer(reply: number): void {
    const w = this.words;
    w[Mb.RESULT] = reply;
    Atomics.store(w, Mb.ACK, Atomics.load(w, Mb.REQ));
    Atomics.notify(w, Mb.ACK);
  }

  /** Stores `text` as UTF-8 in the data area (truncated to it); returns the bytes written. */
  setText(text: string): number {
    return new TextEncoder().encodeInto(text, this.data).written;
  }

  /** The UTF-8 text of the first `length` bytes of the data area. */
  text(length: number): string {
    return new TextDecoder().decode(this.data.slice(0, length));
  }
}

/**
 * The one stop/kick path: sets vCPU `index`'s control word to `command`,
 * wakes it if it waits on it (paused), and kicks its thread out of
 * `KVM_RUN` through the VM's lifetime record `life` (a closed vCPU's kick is
 * a no-op) when `kick` is true and it claimed a thread. Used by the owner
 * (stop, pause, timeout, close) and by a worker stopping the whole VM.
 */
export function signalVcpu(
  control: Int32Array,
  life: Int32Array,
  index: number,
  command: number,
  kick = true,
): void {
  const at = ctl(index, Ctl.CONTROL);
  Atomics.store(control, at, command);
  Atomics.notify(control, at);
  if (kick) kickVcpuThread(control, life, index);
}

/** Kicks vCPU `index`'s thread (if it claimed one) out of `KVM_RUN`; a gone thread is no error. */
export function kickVcpuThread(control: Int32Array, life: Int32Array, index: number): void {
  const threadId = Atomics.load(control, ctl(index, Ctl.TID));
  if (threadId <= 0) return;
  // runAddress is informative only: the kick writes where the lifetime record says.
  kickQuietly({ threadId, runAddress: 0n, life, slot: control[ctl(index, Ctl.SLOT)] });
}

function kickQuietly(target: KickTarget): void {
  try {
    kickVcpu(target);
  } catch (error) {
    // ESRCH: the thread is already gone, so it is not in KVM_RUN either.
    if (!(error instanceof KvmError && error.errno === Errno.ESRCH)) throw error;
  }
}

/**
 * Worker side of the thread handshake: claims vCPU `index` for thread `tid`
 * once the worker holds the vCPU. False when the owner forbade the start
 * first ({@linkcode forbidStart}): the worker must then give the vCPU back
 * without running it.
 */
export function claimThread(control: Int32Array, index: number, tid: number): boolean {
  const at = ctl(index, Ctl.TID);
  const previous = Atomics.compareExchange(control, at, 0, tid);
  Atomics.notify(control, at);
  return previous === 0;
}

/**
 * Owner side of the thread handshake: a worker that has not claimed vCPU
 * `index` yet never will (nor run it). Returns the thread id of a worker
 * that already claimed it, else 0.
 */
export function forbidStart(control: Int32Array, index: number): number {
  const previous = Atomics.compareExchange(control, ctl(index, Ctl.TID), 0, -1);
  return previous > 0 ? previous : 0;
}

/**
 * Waits (blocking the calling thread, at most until `deadline`, a
 * `performance.now()` time) until vCPU `index`'s worker stored `state`;
 * `tick` runs every `stepMs` meanwhile (answering a request, kicking
 * again) and ends the wait early by returning true. Returns whether the
 * state was reached.
 */
export function waitForState(
  control: Int32Array,
  index: number,
  state: number,
  deadline: number,
  stepMs: number,
  tick: () => boolean | void,
): boolean {
  const at = ctl(index, Ctl.STATE);
  for (let s = Atomics.load(control, at); s !== state; s = Atomics.load(control, at)) {
    if (performance.now() >= deadline || tick() === true) return false;
    Atomics.wait(control, at, s, stepMs);
  }
  return true;
}

/** Whether kernel thread `tid` of this process still exists. */
export function threadExists(tid: number): boolean {
  try {
    Deno.statSync(`/proc/self/task/${tid}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * The lifetime rule for a worker that did not report
 * {@linkcode State.EXITED}: what it may still hold of vCPU `index` (its
 * adopted vCPU, its guest-RAM views; `entry` is the vCPU's entry in the
 * VM's record `life`). Returns 0 when it holds nothing, the thread whose end
 * proves it is done (then {@linkcode releaseHolds} for it), or -1 when
 * nothing can prove it (the hold was taken but the thread never claimed the
 * vCPU): the holds stay, and with them the memory (a leak, not a crash).
 */
export function heldBy(
  control: Int32Array,
  life: Int32Array,
  entry: number,
  index: number,
): number {
  const record = new VmLife(life);
  if (!record.leaseHeld(entry, Entry.ADOPTED) && !record.leaseHeld(entry, Entry.RAM)) return 0;
  const tid = record.runner(entry);
  return tid > 0 && tid === Atomics.load(control, ctl(index, Ctl.TID)) ? tid : -1;
}

/** Gives back, for a worker whose thread is gone ({@linkcode heldBy}), the holds it left. */
export function releaseHolds(life: Int32Array, entry: number): void {
  const record = new VmLife(life);
  record.releaseLease(entry, Entry.ADOPTED);
  record.releaseLease(entry, Entry.RAM);
}

/** A guest RAM slot as posted to a worker (addresses as bigints: pointers cannot be posted). */
export interface SlotInfo {
  /** Guest physical address. */
  guestPhysAddr: number;
  /** Bytes. */
  size: number;
  /** Host virtual address. */
  hostAddress: bigint;
}

/** A device module for the workers, as posted. */
export interface DeviceSpec {
  /** Module URL (its default export is the factory). */
  url: string;
  /** Structured-cloneable options, SharedArrayBuffers included. */
  options: unknown;
}

/** First message to a worker. */
export interface InitMessage {
  type: "init";
  vcpuId: number;
  index: number;
  vcpuCount: number;
  fd: number;
  mmapSize: number;
  /** The owner's kick target: the worker adopts the vCPU through its lifetime record. */
  kick: KickTarget;
  libraryPath: string | undefined;
  /** Load the shim with `lazySymbols` (a machine's AP: its run loop needs only the core). */
  lazySymbols?: boolean;
  slots: SlotInfo[];
  control: SharedArrayBuffer;
  mailbox: SharedArrayBuffer;
  devices: DeviceSpec[];
  /** Which main-thread callbacks exist, by {@linkcode Call} code. */
  callbacks: number[];
  irqchipInKernel: boolean;
  ignoreUnhandledIo: boolean;
  /**
   * A thread to kick after each mailbox request: a server that polls the
   * mailbox between its own vCPU's exits (the machines' bootstrap vCPU),
   * rather than waiting on it.
   */
  server?: KickTarget;
}

/** Main → worker after init. */
export type MainMessage = InitMessage | { type: "run" } | { type: "exit" };

/** Plain form of a per-vCPU stop, as posted by a worker. */
export type PostedStop =
  | { kind: "requested" }
  | { kind: "handler"; reason: string }
  | { kind: "callback" }
  | { kind: "hlt" }
  | { kind: "shutdown" }
  | { kind: "unhandled"; exit: string; detail: string }
  | { kind: "vmStopped"; by: number };

/** An error as posted by a worker. */
export interface PlainError {
  name: string;
  message: string;
  stack?: string;
  errno?: number;
  operation?: string;
}

/** Worker → main. */
export type WorkerMessage =
  | { type: "ready"; tid: number }
  | { type: "initFailed"; error: PlainError }
  | { type: "stopped"; stop: PostedStop; exits: number }
  | {
    type: "failed";
    error: PlainError;
    callbackError: boolean;
    kvmError: boolean;
    regs?: Record<string, bigint>;
    exits: number;
  }
  | { type: "exited" };
