/**
 * Where a virtio interrupt went when the driver never acknowledged it: the
 * device thread's stall report (`worker.ts`). When a device's
 * `InterruptStatus` stays set through two quiet sleeps, the thread looks at
 * every stage of the interrupt's path and says where it stopped:
 *
 * 1. the in-kernel IOAPIC's redirection entry for the device's GSI
 *    (`KVM_GET_IRQCHIP`, a VM ioctl: safe while a vCPU is in `KVM_RUN`);
 * 2. the vCPU thread, from the host (`/proc/self/task/<tid>`: state, wait
 *    channel, system call, CPU and guest time over half a second) and KVM's
 *    own counters where debugfs shows them (`/sys/kernel/debug/kvm/<pid>-<fd>`);
 * 3. vCPU 0's local APIC (IRR, ISR, TPR, PPR), RIP, RFLAGS, pending
 *    injection and MP state. vCPU ioctls block on the vCPU's mutex while it
 *    is in `KVM_RUN`, so they are not made here: the thread kicks vCPU 0 out
 *    of `KVM_RUN` and its run loop answers ({@linkcode answerVcpuSnapshot},
 *    called after every exit) into a shared block. A vCPU that does not
 *    answer the kick is itself the finding (its thread is stuck in the host).
 *
 * The decoding and the verdict are pure functions over those numbers
 * (unit-tested); the reads are small and only run when a stall is seen.
 *
 * @module
 */

import { KVM_GET_IRQCHIP } from "../../abi/ioctls.ts";
import {
  decodeRedirection,
  type IoapicRedirection,
  KVM_IRQCHIP_IOAPIC,
  KvmIrqchip,
} from "../../abi/irqchip.ts";
import { ApicReg } from "../../abi/lapic.ts";
import { KVM_MP_STATE_HALTED } from "../../abi/vcpu_state.ts";
import { native } from "../../ffi/library.ts";
import { type KickTarget, kickVcpu } from "../../kvm/kick.ts";
import { Entry, vcpuWord } from "../../kvm/lifetime.ts";
import type { Vcpu } from "../../kvm/vcpu.ts";

/** Word offsets of the shared block vCPU 0's run loop answers a snapshot request in. */
export const Snap = {
  /** Requests made (the device thread bumps it, then kicks vCPU 0). */
  REQUEST: 0,
  /** The request last answered (the run loop copies `REQUEST` here once the words below are set). */
  ANSWER: 1,
  /** RIP, low and high halves. */
  RIP_LO: 2,
  RIP_HI: 3,
  /** RFLAGS (low 32 bits). */
  RFLAGS: 4,
  /** `KVM_MP_STATE_*`. */
  MP_STATE: 5,
  /** Task and processor priority, spurious-vector register. */
  TPR: 6,
  PPR: 7,
  SPIV: 8,
  /** `kvm_vcpu_events`: interrupt.injected | nr << 8 | shadow << 16 | nmi.pending << 24. */
  EVENTS: 9,
  /** IRR, ISR and TMR, 8 words each (bit v of the 256 is vector v). */
  IRR: 10,
  ISR: 18,
  TMR: 26,
  /** A failed read's errno (0: the words above are valid). */
  ERRNO: 34,
  /** RSP, low and high halves. */
  RSP_LO: 35,
  RSP_HI: 36,
  /** Kernel-text words found on the stack from RSP up ({@linkcode STACK_TEXT} at most), then pairs of halves. */
  TEXT_COUNT: 37,
  TEXT: 38,
  /** Interrupt frames found on the stacks ({@linkcode STACK_FRAMES} at most), then (RIP halves, RFLAGS) each. */
  FRAME_COUNT: 38 + 2 * 12,
  FRAMES: 39 + 2 * 12,
} as const;

/** Kernel-text words of the stack a snapshot keeps. */
export const STACK_TEXT = 12;
/** Interrupt frames a snapshot keeps. */
export const STACK_FRAMES = 2;
/** Int32 words of a snapshot block. */
export const SNAP_WORDS = Snap.FRAMES + 3 * STACK_FRAMES;

/** vCPU 0's interrupt state, as answered into a snapshot block. */
export interface VcpuSnapshot {
  rip: bigint;
  rflags: number;
  mpState: number;
  tpr: number;
  ppr: number;
  /** Spurious-vector register: bit 8 enables the APIC. */
  spiv: number;
  /** Vectors pending in the IRR, in-service in the ISR, level-triggered in the TMR. */
  irr: number[];
  isr: number[];
  tmr: number[];
  /** The vector KVM is injecting (`interrupt.injected`), or -1. */
  injecting: number;
  /** `interrupt.shadow` (STI or MOV SS shadow). */
  shadow: number;
  nmiPending: boolean;
  rsp: bigint;
  /** Words of the stack that look like kernel text addresses (return addresses, mostly), from RSP up. */
  stackText: bigint[];
  /**
   * Interrupt frames (RIP, CS 0x10, RFLAGS, as the CPU pushes them on an
   * interrupt in kernel code) found on the stack and on the stack it came
   * from: where the kernel was interrupted, with its RFLAGS then.
   */
  frames: { rip: bigint; rflags: number }[];
}

/** Where x86-64 Linux maps its text and modules (and nothing that is data). */
const KERNEL_TEXT = 0xffffffff80000000n;
/** Linux's kernel code segment selector (`__KERNEL_CS`). */
const KERNEL_CS = 0x10n;
const PAGE = 4096;

/** Reads `qwords` 64-bit words of guest virtual memory at `gva`, page by page; stops at an unmapped page. */
function readVirtual(
  vcpu: Vcpu,
  memory: (gpa: number, length: number) => Uint8Array | null,
  gva: bigint,
  qwords: number,
): bigint[] {
  const out: bigint[] = [];
  let at = gva & ~7n;
  while (out.length < qwords) {
    const t = vcpu.translate(at);
    if (!t.valid) break;
    const inPage = PAGE - Number(at & BigInt(PAGE - 1));
    const n = Math.min(inPage >> 3, qwords - out.length);
    const bytes = memory(Number(t.physicalAddress), n * 8);
    if (!bytes) break;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) out.push(view.getBigUint64(8 * i, true));
    at += BigInt(n * 8);
  }
  return out;
}

/**
 * Interrupt frames in `words`: a kernel-text RIP, then `__KERNEL_CS`, then a
 * plausible RFLAGS (bit 1 set, nothing above bit 21).
 */
export function findInterruptFrames(words: readonly bigint[]): { rip: bigint; rflags: number }[] {
  const out: { rip: bigint; rflags: number }[] = [];
  for (let i = 0; i + 2 < words.length; i++) {
    const rflags = words[i + 2];
    if (
      words[i] >= KERNEL_TEXT && words[i + 1] === KERNEL_CS && (rflags & 2n) !== 0n &&
      rflags < 0x400000n
    ) out.push({ rip: words[i], rflags: Number(rflags) });
  }
  return out;
}

/**
 * The stack from RSP up to its end (an unmapped guard page, or 4 pages),
 * then the stack it was switched from: Linux's IRQ stack keeps the previous
 * RSP in its top word (`call_on_stack`), where the interrupted code's
 * registers are. Kernel-text words and interrupt frames of both.
 */
function walkStack(
  vcpu: Vcpu,
  memory: (gpa: number, length: number) => Uint8Array | null,
  rsp: bigint,
): { text: bigint[]; frames: { rip: bigint; rflags: number }[] } {
  const words = readVirtual(vcpu, memory, rsp, 4 * PAGE / 8);
  const text = words.filter((w) => w >= KERNEL_TEXT);
  const frames = findInterruptFrames(words);
  const previous = words.at(-1);
  if (previous !== undefined && previous >= 0xffff800000000000n && previous < KERNEL_TEXT) {
    frames.push(...findInterruptFrames(readVirtual(vcpu, memory, previous, 512 / 8)));
  }
  return { text, frames };
}

/**
 * Called by vCPU 0's run loop after each exit: answers a pending snapshot
 * request (two atomic loads when there is none; nothing allocated). Reads
 * are vCPU ioctls, made here because this thread owns the vCPU and it is
 * out of `KVM_RUN`.
 */
export function answerVcpuSnapshot(
  block: Int32Array,
  vcpu: Vcpu,
  memory?: (gpa: number, length: number) => Uint8Array | null,
): void {
  const request = Atomics.load(block, Snap.REQUEST);
  if (request === Atomics.load(block, Snap.ANSWER)) return;
  try {
    const regs = vcpu.getRegs();
    const rip = regs.rip;
    const rsp = regs.rsp;
    block[Snap.RIP_LO] = Number(rip & 0xffffffffn);
    block[Snap.RIP_HI] = Number(rip >> 32n);
    block[Snap.RSP_LO] = Number(rsp & 0xffffffffn);
    block[Snap.RSP_HI] = Number(rsp >> 32n);
    block[Snap.RFLAGS] = Number(regs.rflags & 0xffffffffn);
    block[Snap.TEXT_COUNT] = 0;
    block[Snap.FRAME_COUNT] = 0;
    if (memory && rip >= KERNEL_TEXT) {
      // A stall in kernel code: the stack says where it came from (best effort: an unmapped
      // page ends the walk).
      try {
        const { text, frames } = walkStack(vcpu, memory, rsp);
        const t = text.slice(0, STACK_TEXT);
        t.forEach((w, i) => {
          block[Snap.TEXT + 2 * i] = Number(w & 0xffffffffn);
          block[Snap.TEXT + 2 * i + 1] = Number(w >> 32n);
        });
        block[Snap.TEXT_COUNT] = t.length;
        const f = frames.slice(0, STACK_FRAMES);
        f.forEach((fr, i) => {
          block[Snap.FRAMES + 3 * i] = Number(fr.rip & 0xffffffffn);
          block[Snap.FRAMES + 3 * i + 1] = Number(fr.rip >> 32n);
          block[Snap.FRAMES + 3 * i + 2] = fr.rflags;
        });
        block[Snap.FRAME_COUNT] = f.length;
      } catch {
        // The registers above stand without the stack.
      }
    }
    const events = vcpu.getVcpuEvents();
    block[Snap.EVENTS] = events.interruptInjected | events.interruptNr << 8 |
      events.interruptShadow << 16 | events.nmiPending << 24;
    block[Snap.MP_STATE] = vcpu.getMpState();
    const lapic = vcpu.getLapic();
    block[Snap.TPR] = lapic.read(ApicReg.TPR);
    block[Snap.PPR] = lapic.read(ApicReg.PPR);
    block[Snap.SPIV] = lapic.read(ApicReg.SPIV);
    for (let i = 0; i < 8; i++) {
      block[Snap.IRR + i] = lapic.read(ApicReg.IRR + 0x10 * i);
      block[Snap.ISR + i] = lapic.read(ApicReg.ISR + 0x10 * i);
      block[Snap.TMR + i] = lapic.read(ApicReg.TMR + 0x10 * i);
    }
    block[Snap.ERRNO] = 0;
  } catch (e) {
    block[Snap.ERRNO] = (e as { errno?: number }).errno ?? -1;
  }
  Atomics.store(block, Snap.ANSWER, request);
  Atomics.notify(block, Snap.ANSWER);
}

/** The vectors whose bits are set in 8 words of a 256-bit APIC register, ascending. */
export function vectorsOf(words: ArrayLike<number>, first = 0): number[] {
  const out: number[] = [];
  for (let i = 0; i < 8; i++) {
    const w = words[first + i] >>> 0;
    for (let b = 0; b < 32; b++) if ((w >>> b) & 1) out.push(32 * i + b);
  }
  return out;
}

/** Decodes an answered snapshot block (`null` when its read failed). */
export function decodeSnapshot(block: Int32Array): VcpuSnapshot | null {
  if (block[Snap.ERRNO] !== 0) return null;
  const events = block[Snap.EVENTS];
  return {
    rip: BigInt(block[Snap.RIP_LO] >>> 0) | BigInt(block[Snap.RIP_HI] >>> 0) << 32n,
    rflags: block[Snap.RFLAGS] >>> 0,
    mpState: block[Snap.MP_STATE],
    tpr: block[Snap.TPR] & 0xff,
    ppr: block[Snap.PPR] & 0xff,
    spiv: block[Snap.SPIV] >>> 0,
    irr: vectorsOf(block, Snap.IRR),
    isr: vectorsOf(block, Snap.ISR),
    tmr: vectorsOf(block, Snap.TMR),
    injecting: events & 1 ? (events >>> 8) & 0xff : -1,
    shadow: (events >>> 16) & 0xff,
    nmiPending: ((events >>> 24) & 0xff) !== 0,
    rsp: BigInt(block[Snap.RSP_LO] >>> 0) | BigInt(block[Snap.RSP_HI] >>> 0) << 32n,
    stackText: Array.from(
      { length: Math.min(block[Snap.TEXT_COUNT], STACK_TEXT) },
      (_, i) =>
        BigInt(block[Snap.TEXT + 2 * i] >>> 0) | BigInt(block[Snap.TEXT + 2 * i + 1] >>> 0) << 32n,
    ),
    frames: Array.from({ length: Math.min(block[Snap.FRAME_COUNT], STACK_FRAMES) }, (_, i) => ({
      rip: BigInt(block[Snap.FRAMES + 3 * i] >>> 0) |
        BigInt(block[Snap.FRAMES + 3 * i + 1] >>> 0) << 32n,
      rflags: block[Snap.FRAMES + 3 * i + 2] >>> 0,
    })),
  };
}

/** The IOAPIC's view of one pin. */
export interface IoapicPin {
  gsi: number;
  /** The pin's bit in the IOAPIC's `irr` word (the line is high now). */
  irr: boolean;
  entry: IoapicRedirection;
}

/** One pin of a `KVM_GET_IRQCHIP` IOAPIC state (`irr` word and `redirtbl`). */
export function ioapicPin(
  ioapic: { irr: number; redirtbl: ArrayLike<bigint> },
  gsi: number,
): IoapicPin {
  return {
    gsi,
    irr: ((ioapic.irr >>> gsi) & 1) === 1,
    entry: decodeRedirection(ioapic.redirtbl[gsi]),
  };
}

const hex = (n: number | bigint, width = 2) => `0x${n.toString(16).padStart(width, "0")}`;
const vectors = (vs: number[]) => `[${vs.map((v) => hex(v)).join(" ")}]`;
const MP_STATES = ["runnable", "uninitialized", "init-received", "halted", "sipi-received"];

/** One line for an IOAPIC pin: vector, trigger, polarity, mask, remote IRR, destination, irr. */
export function formatIoapicPin(pin: IoapicPin): string {
  const e = pin.entry;
  return `IOAPIC pin ${pin.gsi}: vector ${hex(e.vector)} ${e.levelTriggered ? "level" : "edge"} ` +
    `active-${e.activeLow ? "low" : "high"} ${e.masked ? "MASKED" : "unmasked"} ` +
    `remote-IRR ${e.remoteIrr ? 1 : 0} delivery ${e.deliveryMode}${
      e.deliveryPending ? " pending" : ""
    } dest ${hex(e.destination)} ${e.logicalDestination ? "logical" : "physical"}, ` +
    `irr ${pin.irr ? 1 : 0}`;
}

/** One line for the stack of vCPU 0's snapshot ("" when it has none). */
export function formatStack(s: VcpuSnapshot): string {
  if (s.stackText.length === 0 && s.frames.length === 0) return "";
  const frames = s.frames.map((f) =>
    `RIP ${hex(f.rip, 1)} RFLAGS ${hex(f.rflags, 1)} (IF ${(f.rflags >>> 9) & 1})`
  );
  return `vCPU 0 stack at RSP ${hex(s.rsp, 1)}: text ${
    s.stackText.map((w) => hex(w, 1)).join(" ") || "-"
  }; interrupted at ${frames.join(", ") || "-"}`;
}

/** One line for vCPU 0's snapshot. */
export function formatSnapshot(s: VcpuSnapshot): string {
  return `vCPU 0: RIP ${hex(s.rip, 1)} RFLAGS ${hex(s.rflags, 1)} (IF ${
    (s.rflags >>> 9) & 1
  }) mp-state ${MP_STATES[s.mpState] ?? s.mpState} injecting ${
    s.injecting < 0 ? "-" : hex(s.injecting)
  } shadow ${s.shadow}${s.nmiPending ? " nmi-pending" : ""}; LAPIC ${
    s.spiv & 0x100 ? "enabled" : "SOFT-DISABLED"
  } TPR ${hex(s.tpr)} PPR ${hex(s.ppr)} IRR ${vectors(s.irr)} ISR ${vectors(s.isr)} TMR ${
    vectors(s.tmr)
  }`;
}

/** A thread as `/proc/self/task/<tid>` shows it. */
export interface ThreadSample {
  tid: number;
  /** `R` running, `S` sleeping, `D` uninterruptible... (`stat` field 3). */
  state: string;
  /** The kernel function it sleeps in (`wchan`; "" when hidden or running). */
  wchan: string;
  /** Its system call (`syscall`: number and arguments; "" when unreadable). */
  syscall: string;
  /** CPU time on the CPU so far, ns (`schedstat`; -1 when unreadable). */
  runNs: number;
  /** Guest time so far, clock ticks (`stat` field 43). */
  guestTicks: number;
}

/** Parses a `stat` line's state and guest time (the command name may hold spaces and parentheses). */
export function parseTaskStat(text: string): { state: string; guestTicks: number } {
  const close = text.lastIndexOf(")");
  if (close < 0) return { state: "?", guestTicks: -1 };
  const f = text.slice(close + 2).trim().split(" ");
  // f[0] is field 3 (state); field 43 (guest_time) is f[40].
  return { state: f[0] || "?", guestTicks: f.length > 40 ? Number(f[40]) : -1 };
}

function readText(path: string): string {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch {
    return "";
  }
}

/** Samples thread `tid` of this process (best effort: unreadable parts are empty or -1). */
export function sampleThread(tid: number): ThreadSample {
  const base = `/proc/self/task/${tid}`;
  const stat = parseTaskStat(readText(`${base}/stat`));
  const sched = readText(`${base}/schedstat`).split(" ");
  const wchan = readText(`${base}/wchan`);
  return {
    tid,
    state: stat.state,
    wchan: wchan === "0" ? "" : wchan,
    syscall: readText(`${base}/syscall`).split(" ").slice(0, 3).join(" "),
    runNs: sched.length >= 1 && sched[0] !== "" ? Number(sched[0]) : -1,
    guestTicks: stat.guestTicks,
  };
}

/** One line for a thread's two samples `ms` apart: state, wait channel, CPU and guest time used. */
export function formatThread(a: ThreadSample, b: ThreadSample, ms: number): string {
  const run = a.runNs >= 0 && b.runNs >= 0 ? `${((b.runNs - a.runNs) / 1e6).toFixed(1)}` : "?";
  const guest = a.guestTicks >= 0 && b.guestTicks >= 0
    ? `${((b.guestTicks - a.guestTicks) * 10).toFixed(0)}`
    : "?";
  return `vCPU 0 thread ${a.tid}: ${a.state}/${b.state} wchan ${a.wchan || "-"}/${
    b.wchan || "-"
  } syscall ${a.syscall || "?"}; on CPU ${run} ms of ${ms}, guest ~${guest} ms`;
}

/** KVM's counters this report reads from debugfs (summed over the VM's vCPUs). */
export const KVM_STATS = [
  "exits",
  "halt_exits",
  "halt_wakeup",
  "irq_injections",
  "irq_window_exits",
  "irq_exits",
  "signal_exits",
  "req_event",
] as const;

/** KVM's debugfs counters of VM `vmFd` of this process; empty when debugfs is not readable. */
export function readKvmStats(pid: number, vmFd: number): Map<string, number> {
  const out = new Map<string, number>();
  const dir = `/sys/kernel/debug/kvm/${pid}-${vmFd}`;
  for (const name of KVM_STATS) {
    const v = readText(`${dir}/${name}`);
    if (v !== "") out.set(name, Number(v));
  }
  return out;
}

/** The counters' growth between two reads, one line ("" when there were none). */
export function formatKvmStats(a: Map<string, number>, b: Map<string, number>, ms: number): string {
  if (a.size === 0 || b.size === 0) return "";
  const parts = [...b].map(([k, v]) => `${k} +${v - (a.get(k) ?? 0)}`);
  return `KVM over ${ms} ms: ${parts.join(" ")}`;
}

/**
 * Where the interrupt stopped, from the pin and vCPU 0's snapshot (`null`:
 * vCPU 0 did not answer a kick, `undefined`: no snapshot was asked for).
 */
export function stallVerdict(pin: IoapicPin, vcpu: VcpuSnapshot | null | undefined): string {
  const e = pin.entry;
  if (e.masked) return "lost in the IOAPIC: the pin is masked";
  if (e.levelTriggered && e.remoteIrr) {
    return "lost in the IOAPIC: remote IRR set (a level interrupt never EOIed)";
  }
  if (vcpu === undefined) return "IOAPIC pin open; vCPU 0 not examined";
  if (vcpu === null) {
    return "vCPU 0 did not leave KVM_RUN after a kick: its thread is stuck in the host kernel";
  }
  const v = e.vector;
  const inIrr = vcpu.irr.includes(v);
  const inIsr = vcpu.isr.includes(v);
  if (!(vcpu.spiv & 0x100)) return "the LAPIC is software-disabled: fixed interrupts are dropped";
  if (vcpu.injecting === v) {
    return `KVM is injecting vector ${hex(v)} (interrupt.injected): the injection did not complete`;
  }
  if (inIrr) {
    const highestIsr = vcpu.isr.length > 0 ? vcpu.isr[vcpu.isr.length - 1] : -1;
    if ((v >> 4) <= (vcpu.ppr >> 4)) {
      return `pending in the LAPIC (IRR), blocked by priority: PPR ${hex(vcpu.ppr)}, TPR ${
        hex(vcpu.tpr)
      }, highest in service ${highestIsr < 0 ? "-" : hex(highestIsr)}`;
    }
    if (!((vcpu.rflags >>> 9) & 1)) {
      return "pending in the LAPIC (IRR), the guest runs with interrupts off (IF 0)";
    }
    if (vcpu.shadow) return "pending in the LAPIC (IRR), in an interrupt shadow";
    return vcpu.mpState === KVM_MP_STATE_HALTED
      ? "pending in the LAPIC (IRR) and deliverable, vCPU halted: not woken (hypervisor)"
      : "pending in the LAPIC (IRR) and deliverable, vCPU runnable: not injected (hypervisor)";
  }
  if (inIsr) {
    const running = vcpu.mpState !== KVM_MP_STATE_HALTED && !((vcpu.rflags >>> 9) & 1);
    const masked = vcpu.frames.find((f) => !((f.rflags >>> 9) & 1));
    return "in service (ISR): the guest took it and has not sent its EOI" +
      (running ? "; vCPU 0 runs with interrupts off (IF 0), before the EOI" : "") +
      (masked
        ? `; its stack holds a frame interrupted with IF 0 at ${
          hex(masked.rip, 1)
        } (an interrupt taken with interrupts off, or an exception there)`
        : "");
  }
  return "not in the LAPIC (neither IRR nor ISR): the edge never reached it, or it was taken and " +
    "the handler did not read the status";
}

/** What {@linkcode probeStall} needs from the device thread. */
export interface StallProbeContext {
  /** The VM's fd (for `KVM_GET_IRQCHIP`). */
  vmFd: number;
  /** vCPU 0, to kick for its snapshot (absent: no snapshot, no thread sample). */
  vcpu?: KickTarget;
  /** The block vCPU 0's run loop answers in ({@linkcode SNAP_WORDS} words). */
  snapshot?: Int32Array;
}

/** How long the probe watches the vCPU thread, and waits for the kick's answer. */
const SAMPLE_MS = 500;
const ANSWER_MS = 2000;

/** The thread that runs the vCPU of `target` now (its lifetime record's runner), else its tid. */
function runnerOf(target: KickTarget): number {
  if (target.life === undefined) return target.threadId;
  return target.life[vcpuWord(target.slot ?? 0, Entry.RUNNER)] || target.threadId;
}

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Looks at the path of the interrupt of the device on `gsi` (see the module
 * doc; -1 for a virtio-pci device, whose MSI-X messages pass no IOAPIC pin): the IOAPIC pin, the vCPU thread over {@linkcode SAMPLE_MS} and KVM's
 * counters, then vCPU 0's snapshot through a kick. Blocks the calling thread
 * about a second; returns the report's lines, the verdict last (without
 * `verdict`: no interrupt is pending, only the state is wanted). Reading
 * failures are reported in the lines, never thrown.
 */
export function probeStall(ctx: StallProbeContext, gsi: number, verdict = true): string[] {
  const lines: string[] = [];
  let pin: IoapicPin | undefined;
  const chip = new KvmIrqchip();
  chip.chipId = KVM_IRQCHIP_IOAPIC;
  if (gsi < 0 || gsi >= 24) {
    lines.push("MSI-X: the interrupts go straight to the LAPIC (no IOAPIC pin)");
  } else {
    const r = native().kvm_ioctl_ptr(ctx.vmFd, KVM_GET_IRQCHIP, Deno.UnsafePointer.of(chip.bytes));
    if (r < 0) lines.push(`KVM_GET_IRQCHIP failed: errno ${-r}`);
    else {
      pin = ioapicPin(chip.ioapic, gsi);
      lines.push(formatIoapicPin(pin));
    }
  }
  let snapshot: VcpuSnapshot | null | undefined;
  if (ctx.vcpu) {
    const tid = runnerOf(ctx.vcpu);
    const kvmA = readKvmStats(Deno.pid, ctx.vmFd);
    const a = sampleThread(tid);
    sleep(SAMPLE_MS);
    const b = sampleThread(tid);
    const kvmB = readKvmStats(Deno.pid, ctx.vmFd);
    lines.push(formatThread(a, b, SAMPLE_MS));
    const stats = formatKvmStats(kvmA, kvmB, SAMPLE_MS);
    if (stats) lines.push(stats);
    if (ctx.snapshot) {
      const block = ctx.snapshot;
      const request = Atomics.add(block, Snap.REQUEST, 1) + 1;
      kickVcpu(ctx.vcpu);
      const deadline = performance.now() + ANSWER_MS;
      while (Atomics.load(block, Snap.ANSWER) !== request && performance.now() < deadline) {
        Atomics.wait(block, Snap.ANSWER, Atomics.load(block, Snap.ANSWER), 50);
      }
      if (Atomics.load(block, Snap.ANSWER) !== request) {
        snapshot = null;
        lines.push(`vCPU 0: no answer to a kick in ${ANSWER_MS} ms`);
      } else {
        // A failed read leaves the verdict without the vCPU (undefined), not "no answer" (null).
        snapshot = decodeSnapshot(block) ?? undefined;
        lines.push(
          snapshot
            ? formatSnapshot(snapshot)
            : `vCPU 0: reading its state failed: errno ${block[Snap.ERRNO]}`,
        );
        const stack = snapshot ? formatStack(snapshot) : "";
        if (stack) lines.push(stack);
      }
    }
  }
  if (pin && verdict) lines.push(`verdict: ${stallVerdict(pin, snapshot)}`);
  return lines;
}
