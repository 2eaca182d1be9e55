/**
 * The shared-memory mailbox through which an AP worker hands its exits to the
 * main thread's device models, and a register dump for fatal exits. Internal
 * to the machines' AP runtime (`ap_runtime.ts`).
 *
 * @module
 */

import type { Vcpu } from "../kvm/vcpu.ts";

/** Mailbox states (word 0). */
export const MailboxState = {
  /** Word index. */
  INDEX: 0,
  /** Nothing pending. */
  IDLE: 0,
  /** The AP posted a request and waits. */
  REQUEST: 1,
  /** The main thread answered. */
  REPLY: 2,
} as const;

/** Request kinds (word 1). */
export const MailboxKind = {
  /** Word index. */
  INDEX: 1,
  /** Port I/O. */
  IO: 1,
  /** MMIO. */
  MMIO: 2,
  /** The AP cannot continue; the text says why. */
  FATAL: 3,
} as const;

const DATA_OFFSET = 64;
const DATA_SIZE = 8192;

/** Words and data of one AP's mailbox, over a SharedArrayBuffer. */
export class Mailbox {
  /** Word: direction (0 in, 1 out) or MMIO is-write. */
  static readonly DIRECTION = 2;
  /** Word: port, or MMIO address bits 0-31. */
  static readonly PORT = 3;
  /** Word: access size or MMIO length; text length for FATAL. */
  static readonly SIZE = 4;
  /** Word: element count, or the FATAL code. */
  static readonly COUNT = 5;
  /** Word: MMIO address bits 32-63. */
  static readonly ADDRESS_HIGH = 6;
  /** Word: set by the main thread to stop the AP. */
  static readonly STOP = 7;
  /** Word: set by the worker when its loop has ended. */
  static readonly DONE = 8;
  /** Word: extra data of a FATAL report (the system event type). */
  static readonly EXTRA = 9;
  /**
   * Word: the AP thread's kernel thread id, claimed by the worker before its
   * first `KVM_RUN`; the main thread stores -1 to keep a worker that has not
   * claimed it yet from ever running.
   */
  static readonly THREAD_ID = 10;
  /** Word alias for the FATAL code. */
  static readonly CODE = 5;
  /** FATAL code: triple fault. */
  static readonly FATAL_SHUTDOWN = 1;
  /** FATAL code: KVM internal error. */
  static readonly FATAL_INTERNAL = 2;
  /** FATAL code: a system event (EXTRA holds its type). */
  static readonly FATAL_SYSTEM_EVENT = 3;
  /** FATAL code: anything else. */
  static readonly FATAL_OTHER = 4;

  /** The control words. */
  readonly words: Int32Array;
  /** The data area (I/O bytes, MMIO bytes, FATAL text). */
  readonly data: Uint8Array;
  /** The shared buffer, to post to the worker. */
  readonly buffer: SharedArrayBuffer;

  /** Wraps `buffer`, or a new one. */
  constructor(buffer = new SharedArrayBuffer(DATA_OFFSET + DATA_SIZE)) {
    this.buffer = buffer;
    this.words = new Int32Array(buffer, 0, DATA_OFFSET / 4);
    this.data = new Uint8Array(buffer, DATA_OFFSET, DATA_SIZE);
  }

  /** Whether the main thread asked the AP to stop. */
  get stopping(): boolean {
    return Atomics.load(this.words, Mailbox.STOP) !== 0;
  }

  /** Sets a word. */
  set(index: number, value: number): void {
    this.words[index] = value;
  }

  /** Fills an I/O request. */
  setIo(direction: "in" | "out", port: number, size: number, count: number, data: Uint8Array) {
    this.words[Mailbox.DIRECTION] = direction === "out" ? 1 : 0;
    this.words[Mailbox.PORT] = port;
    this.words[Mailbox.SIZE] = size;
    this.words[Mailbox.COUNT] = count;
    if (direction === "out") this.data.set(data);
  }

  /** Fills an MMIO request. */
  setMmio(address: number, isWrite: boolean, data: Uint8Array) {
    this.words[Mailbox.DIRECTION] = isWrite ? 1 : 0;
    this.words[Mailbox.PORT] = address % 0x1_0000_0000;
    this.words[Mailbox.ADDRESS_HIGH] = Math.floor(address / 0x1_0000_0000);
    this.words[Mailbox.SIZE] = data.length;
    if (isWrite) this.data.set(data);
  }

  /** Stores a UTF-8 text (truncated to the data area). */
  setText(text: string): void {
    const { written } = new TextEncoder().encodeInto(text, this.data);
    this.words[Mailbox.SIZE] = written;
  }

  /** Reads the text stored by {@linkcode setText}. */
  text(): string {
    return new TextDecoder().decode(this.data.slice(0, this.words[Mailbox.SIZE]));
  }
}

function h(value: bigint): string {
  return value.toString(16).padStart(16, "0");
}

/**
 * A register dump for a vCPU that stopped unexpectedly: `vcpu.dump()` when the
 * Vcpu class has one, else the general registers, segments and control
 * registers read here. Never throws (a failing read is reported inline).
 */
export function describeVcpu(vcpu: Vcpu): string {
  const withDump = vcpu as unknown as { dump?: () => string };
  try {
    if (typeof withDump.dump === "function") return withDump.dump();
  } catch (e) {
    return `vCPU ${vcpu.id}: dump failed: ${(e as Error).message}`;
  }
  try {
    const r = vcpu.getRegs();
    const s = vcpu.getSregs();
    return [
      `vCPU ${vcpu.id} registers:`,
      ` rip ${h(r.rip)} rsp ${h(r.rsp)} rflags ${h(r.rflags)}`,
      ` rax ${h(r.rax)} rbx ${h(r.rbx)} rcx ${h(r.rcx)} rdx ${h(r.rdx)}`,
      ` rsi ${h(r.rsi)} rdi ${h(r.rdi)} rbp ${h(r.rbp)}`,
      ` cs ${s.cs.selector.toString(16)} base ${h(s.cs.base)} l ${s.cs.l} db ${s.cs.db}`,
      ` cr0 ${h(s.cr0)} cr2 ${h(s.cr2)} cr3 ${h(s.cr3)} cr4 ${h(s.cr4)} efer ${h(s.efer)}`,
      ` gdt ${h(s.gdt.base)}/${s.gdt.limit.toString(16)} idt ${h(s.idt.base)}/${
        s.idt.limit.toString(16)
      }`,
    ].join("\n");
  } catch (e) {
    return `vCPU ${vcpu.id}: registers unreadable: ${(e as Error).message}`;
  }
}
