// The virtio stall report's decoding (src/devices/virtio/stall.ts): the
// IOAPIC pin and vCPU 0's snapshot block read back as written, and the
// verdict names the stage where the interrupt stopped, for every stage.

import { deepStrictEqual, match, strictEqual } from "node:assert/strict";
import { encodeRedirection } from "../../src/abi/irqchip.ts";
import { KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE } from "../../src/abi/vcpu_state.ts";
import {
  decodeSnapshot,
  findInterruptFrames,
  formatIoapicPin,
  formatKvmStats,
  formatSnapshot,
  formatStack,
  formatThread,
  ioapicPin,
  parseTaskStat,
  Snap,
  SNAP_WORDS,
  stallVerdict,
  type VcpuSnapshot,
  vectorsOf,
} from "../../src/devices/virtio/stall.ts";

const VECTOR = 0x22;

function table(gsi: number, entry: Parameters<typeof encodeRedirection>[0], irr = 0) {
  const redirtbl = new Array<bigint>(24).fill(1n << 16n); // masked, as after reset
  redirtbl[gsi] = encodeRedirection(entry);
  return { irr, redirtbl };
}

function snapshot(over: Partial<VcpuSnapshot> = {}): VcpuSnapshot {
  return {
    rip: 0xffffffff81000000n,
    rflags: 0x246, // IF set
    mpState: KVM_MP_STATE_HALTED,
    tpr: 0,
    ppr: 0,
    spiv: 0x1ff,
    irr: [],
    isr: [],
    tmr: [],
    injecting: -1,
    shadow: 0,
    nmiPending: false,
    rsp: 0xffffc90000003f00n,
    stackText: [],
    frames: [],
    ...over,
  };
}

Deno.test("stall report: an IOAPIC pin decodes from the irr word and the redirection table", () => {
  const pin = ioapicPin(
    table(17, { vector: VECTOR, levelTriggered: true, remoteIrr: true, destination: 1 }, 1 << 17),
    17,
  );
  strictEqual(pin.irr, true);
  strictEqual(pin.entry.vector, VECTOR);
  strictEqual(pin.entry.levelTriggered, true);
  strictEqual(pin.entry.remoteIrr, true);
  strictEqual(pin.entry.masked, false);
  strictEqual(pin.entry.destination, 1);
  strictEqual(
    formatIoapicPin(pin),
    "IOAPIC pin 17: vector 0x22 level active-high unmasked remote-IRR 1 delivery 0 dest 0x01 physical, irr 1",
  );
  strictEqual(ioapicPin(table(17, { vector: VECTOR }), 16).entry.masked, true);
  strictEqual(ioapicPin(table(17, { vector: VECTOR }, 1 << 16), 17).irr, false);
});

Deno.test("stall report: the snapshot block round-trips (vectors from 8 words each)", () => {
  deepStrictEqual(vectorsOf([1, 0, 0, 0, 0, 0, 0, 0x80000000]), [0, 255]);
  deepStrictEqual(vectorsOf([0, 1 << 2 | 1 << 3, 0, 0, 0, 0, 0, 0]), [34, 35]);
  const block = new Int32Array(SNAP_WORDS);
  block[Snap.RIP_LO] = 0x81000000 | 0;
  block[Snap.RIP_HI] = 0xffffffff | 0;
  block[Snap.RFLAGS] = 0x46; // IF clear
  block[Snap.MP_STATE] = KVM_MP_STATE_RUNNABLE;
  block[Snap.TPR] = 0x10;
  block[Snap.PPR] = 0x20;
  block[Snap.SPIV] = 0x1ff;
  block[Snap.EVENTS] = 1 | VECTOR << 8 | 1 << 16 | 1 << 24;
  block[Snap.IRR + 1] = 1 << 2; // 0x22
  block[Snap.ISR + 7] = 1 << 31 | 0; // 0xff
  block[Snap.TMR + 1] = 1 << 2;
  const s = decodeSnapshot(block)!;
  deepStrictEqual(s, {
    rip: 0xffffffff81000000n,
    rflags: 0x46,
    mpState: KVM_MP_STATE_RUNNABLE,
    tpr: 0x10,
    ppr: 0x20,
    spiv: 0x1ff,
    irr: [VECTOR],
    isr: [0xff],
    tmr: [VECTOR],
    injecting: VECTOR,
    shadow: 1,
    nmiPending: true,
    rsp: 0n,
    stackText: [],
    frames: [],
  });
  strictEqual(
    formatSnapshot(s),
    "vCPU 0: RIP 0xffffffff81000000 RFLAGS 0x46 (IF 0) mp-state runnable injecting 0x22 shadow 1 " +
      "nmi-pending; LAPIC enabled TPR 0x10 PPR 0x20 IRR [0x22] ISR [0xff] TMR [0x22]",
  );
  block[Snap.ERRNO] = 4;
  strictEqual(decodeSnapshot(block), null, "a failed read is no snapshot");
});

Deno.test("stall report: the verdict names the stage the interrupt stopped at", () => {
  const open = ioapicPin(table(16, { vector: VECTOR }), 16);
  const verdict = (s: Partial<VcpuSnapshot>) => stallVerdict(open, snapshot(s));
  match(stallVerdict(ioapicPin(table(16, { vector: VECTOR, masked: true }), 16), null), /masked/);
  match(
    stallVerdict(
      ioapicPin(table(16, { vector: VECTOR, levelTriggered: true, remoteIrr: true }), 16),
      snapshot(),
    ),
    /remote IRR/,
  );
  // An edge pin ignores remote IRR (it is only meaningful for level pins).
  strictEqual(
    stallVerdict(ioapicPin(table(16, { vector: VECTOR, remoteIrr: true }), 16), snapshot()),
    verdict({}),
  );
  match(stallVerdict(open, undefined), /not examined/);
  match(stallVerdict(open, null), /did not leave KVM_RUN/);
  match(verdict({ spiv: 0xff, irr: [VECTOR] }), /software-disabled/);
  match(verdict({ injecting: VECTOR, isr: [VECTOR] }), /injection did not complete/);
  match(verdict({ irr: [VECTOR], isr: [0xef], ppr: 0xe0 }), /blocked by priority: PPR 0xe0.*0xef/);
  match(verdict({ irr: [VECTOR], tpr: 0x20, ppr: 0x20 }), /blocked by priority/);
  match(verdict({ irr: [VECTOR], rflags: 0x46 }), /interrupts off/);
  match(verdict({ irr: [VECTOR], shadow: 1 }), /shadow/);
  match(verdict({ irr: [VECTOR] }), /halted: not woken/);
  match(verdict({ irr: [VECTOR], mpState: KVM_MP_STATE_RUNNABLE }), /runnable: not injected/);
  strictEqual(
    verdict({ isr: [VECTOR] }),
    "in service (ISR): the guest took it and has not sent its EOI",
  );
  strictEqual(
    verdict({
      isr: [VECTOR],
      rflags: 0x2,
      mpState: KVM_MP_STATE_RUNNABLE,
      frames: [{ rip: 0xffffffff81000010n, rflags: 0x246 }, {
        rip: 0xffffffff81a4f739n,
        rflags: 0x46,
      }],
    }),
    "in service (ISR): the guest took it and has not sent its EOI; vCPU 0 runs with " +
      "interrupts off (IF 0), before the EOI; its stack holds a frame interrupted with IF 0 at " +
      "0xffffffff81a4f739 (an interrupt taken with interrupts off, or an exception there)",
  );
  match(verdict({ irr: [0x30], isr: [0x31] }), /neither IRR nor ISR/);
});

Deno.test("stall report: /proc task lines and KVM counters", () => {
  // The command name may hold spaces and parentheses: fields count from the last ')'.
  const fields = ["S", ...Array.from({ length: 39 }, (_, i) => String(i + 4)), "123", "0"];
  deepStrictEqual(parseTaskStat(`4242 (deno (x) y) ${fields.join(" ")}\n`), {
    state: "S",
    guestTicks: 123,
  });
  deepStrictEqual(parseTaskStat(""), { state: "?", guestTicks: -1 });
  strictEqual(
    formatThread(
      {
        tid: 7,
        state: "S",
        wchan: "kvm_vcpu_block",
        syscall: "16 0x9 0xae80",
        runNs: 1e6,
        guestTicks: 5,
      },
      {
        tid: 7,
        state: "S",
        wchan: "kvm_vcpu_block",
        syscall: "16 0x9 0xae80",
        runNs: 3.5e6,
        guestTicks: 5,
      },
      500,
    ),
    "vCPU 0 thread 7: S/S wchan kvm_vcpu_block/kvm_vcpu_block syscall 16 0x9 0xae80; on CPU 2.5 ms of 500, guest ~0 ms",
  );
  strictEqual(
    formatKvmStats(
      new Map([["exits", 10], ["halt_exits", 2]]),
      new Map([["exits", 15], ["halt_exits", 2]]),
      500,
    ),
    "KVM over 500 ms: exits +5 halt_exits +0",
  );
  strictEqual(formatKvmStats(new Map(), new Map(), 500), "");
});

Deno.test("stall report: interrupt frames and kernel text on the stack", () => {
  const rip = 0xffffffff81a4f739n;
  // ... a return address, then a frame as the CPU pushes it: RIP, CS 0x10, RFLAGS (IF 0), RSP, SS.
  const words = [0x1234n, 0xffffffff81066f00n, rip, 0x10n, 0x46n, 0xffffc90000003f00n, 0x18n];
  deepStrictEqual(findInterruptFrames(words), [{ rip, rflags: 0x46 }]);
  // User mode (CS 0x33), a selector-looking value without RFLAGS' bit 1, data below kernel text.
  deepStrictEqual(findInterruptFrames([0x401000n, 0x33n, 0x246n]), []);
  deepStrictEqual(findInterruptFrames([rip, 0x10n, 0x1000000n]), []);
  deepStrictEqual(findInterruptFrames([rip, 0x10n, 0x44n]), []);
  deepStrictEqual(findInterruptFrames([0xffff888000000000n, 0x10n, 0x46n]), []);
  strictEqual(formatStack(snapshot()), "");
  strictEqual(
    formatStack(
      snapshot({ stackText: [0xffffffff81066f00n], frames: [{ rip, rflags: 0x46 }] }),
    ),
    "vCPU 0 stack at RSP 0xffffc90000003f00: text 0xffffffff81066f00; " +
      "interrupted at RIP 0xffffffff81a4f739 RFLAGS 0x46 (IF 0)",
  );
  const block = new Int32Array(SNAP_WORDS);
  block[Snap.SPIV] = 0x1ff;
  block[Snap.RSP_LO] = 0x3f00;
  block[Snap.RSP_HI] = 0xffffc900 | 0;
  block[Snap.TEXT_COUNT] = 1;
  block[Snap.TEXT] = 0x81066f00 | 0;
  block[Snap.TEXT + 1] = -1;
  block[Snap.FRAME_COUNT] = 1;
  block[Snap.FRAMES] = 0x81a4f739 | 0;
  block[Snap.FRAMES + 1] = -1;
  block[Snap.FRAMES + 2] = 0x46;
  const s = decodeSnapshot(block)!;
  deepStrictEqual(
    { rsp: s.rsp, text: s.stackText, frames: s.frames },
    { rsp: 0xffffc90000003f00n, text: [0xffffffff81066f00n], frames: [{ rip, rflags: 0x46 }] },
  );
});
