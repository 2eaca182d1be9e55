/**
 * What the main thread and the vCPU workers share: the layout of the control
 * and mailbox SharedArrayBuffers, and the messages they post (rare events
 * only: ready, stopped, failed; never one per exit).
 *
 * @module
 * @internal
 */

import type { KickTarget } from "../kvm/kick.ts";

/** Control word values (main → worker): what the worker should do next. */
export const Control = { RUN: 0, PAUSE: 1, STOP: 2 } as const;

/** Worker state values (worker → main). */
export const State = { IDLE: 0, RUNNING: 1, PAUSED: 2 } as const;

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
  /** In a block: the kernel thread id of the worker (0 until ready). */
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
 * `Atomics.wait` on `ACK`; the main thread waits with `Atomics.waitAsync` on
 * `REQ`, answers, and stores the same sequence number in `ACK`.
 */
export const Mb = {
  /** Request sequence number (worker writes). -1 tells the main thread's listener to quit. */
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

/** Bytes of one vCPU's mailbox. */
export const MAILBOX_BYTES = Mb.DATA + Mb.DATA_SIZE;

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
  slots: SlotInfo[];
  control: SharedArrayBuffer;
  mailbox: SharedArrayBuffer;
  devices: DeviceSpec[];
  /** Which main-thread callbacks exist, by {@linkcode Call} code. */
  callbacks: number[];
  irqchipInKernel: boolean;
  ignoreUnhandledIo: boolean;
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
