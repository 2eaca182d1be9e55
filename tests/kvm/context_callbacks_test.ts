// KvmContext's main-thread callbacks (libkvm's struct kvm_callbacks), answered
// through the SharedArrayBuffer mailbox: port I/O, MMIO in the VGA hole, HLT,
// a throwing callback, and the userspace-irqchip hooks (try_push_interrupts,
// io_window) delivering an interrupt. Also logs what a callback round trip
// costs next to the same exits handled by an in-worker device.

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { KvmContext, loadNative, stopVcpu, VcpuError } from "../../mod.ts";

// Loaded once for the file, not inside a test (the resource sanitizer would count it).
await loadNative();

const CODE = 0x1000;

function realMode(ctx: KvmContext, id = 0): void {
  const vcpu = ctx.vcpu(id);
  const sregs = vcpu.getSregs();
  for (const s of [sregs.cs, sregs.ds, sregs.es, sregs.ss]) {
    s.base = 0n;
    s.selector = 0;
  }
  vcpu.setSregs(sregs);
  vcpu.setRegs(vcpu.getRegs().clear().assign({ rip: CODE, rflags: 2n, rsp: 0x8000 }));
}

// deno-fmt-ignore
const ECHO_LOOP = (n: number) => [
  0xb9, n & 0xff, n >> 8,       // mov cx, n
  0xe4, 0x60,                   // again: in al, 0x60   ; the host's counter
  0xe6, 0x61,                   // out 0x61, al         ; echoed back
  0xe2, 0xfa,                   // loop again
];

// deno-fmt-ignore
const MMIO_AND_HALT = [
  0xb8, 0x00, 0xa0,             // mov ax, 0xa000
  0x8e, 0xc0,                   // mov es, ax           ; ES base 0xa0000: the VGA hole
  0x26, 0xc6, 0x06, 0x10, 0x00, 0xab, // mov byte [es:0x10], 0xab  ; MMIO write 0xa0010
  0x26, 0xa1, 0x20, 0x00,       // mov ax, [es:0x20]    ; MMIO read 0xa0020
  0xa3, 0x00, 0x05,             // mov [0x500], ax
  0xf4,                         // hlt
];

Deno.test("context callbacks: inb/outb, MMIO and halt answered on the main thread", async () => {
  const N = 200;
  const seen: string[] = [];
  let counter = 0;
  let badEchoes = 0;
  let loopStart = 0;
  let loopEnd = 0;
  await using ctx = await KvmContext.create({
    memory: 1 << 20,
    irqchip: false,
    callbacks: {
      // An async callback: the vCPU waits for the promise.
      inb: async (port, vcpuId) => {
        if (counter === 0) loopStart = performance.now();
        strictEqual(port, 0x60);
        strictEqual(vcpuId, 0);
        await Promise.resolve();
        return counter & 0xff;
      },
      outb: (port, value) => {
        if (port !== 0x61 || value !== (counter & 0xff)) badEchoes++;
        counter++;
        if (counter === N) loopEnd = performance.now();
      },
      mmioWrite: (address, data) => void seen.push(`write ${address.toString(16)} ${[...data]}`),
      mmioRead: (address, data) => {
        seen.push(`read ${address.toString(16)} ${data.length}`);
        data.set([0xef, 0xbe]);
      },
      halt: (vcpuId) => stopVcpu(`vCPU ${vcpuId} halted`),
    },
  });
  ctx.vm.writeGuest(CODE, [...ECHO_LOOP(N), ...MMIO_AND_HALT]);
  realMode(ctx);
  const result = await ctx.run();
  deepStrictEqual(result.vcpus[0].stop, { kind: "handler", reason: "vCPU 0 halted" });
  strictEqual(result.vcpus[0].exits, 2 * N + 3);
  strictEqual(counter, N, "every OUT reached outb");
  strictEqual(badEchoes, 0, "the guest echoed what inb returned");
  deepStrictEqual(seen, ["write a0010 171", "read a0020 2"]);
  strictEqual(new DataView(ctx.vm.readGuest(0x500, 2).buffer).getUint16(0, true), 0xbeef);
  const mailbox = (loopEnd - loopStart) * 1000 / (2 * N - 1);

  // The same loop with the handler inside the worker.
  const shared = new SharedArrayBuffer(8);
  await using fast = await KvmContext.create({
    memory: 1 << 20,
    irqchip: false,
    devices: [{ url: new URL("./context/echo_device.ts", import.meta.url), options: { shared } }],
  });
  fast.vm.writeGuest(CODE, [...ECHO_LOOP(N), 0xf4]);
  realMode(fast);
  const t0 = performance.now();
  const fastResult = await fast.run();
  const worker = (performance.now() - t0) * 1000 / (2 * N + 1);
  deepStrictEqual(fastResult.vcpus[0].stop, { kind: "handler", reason: "halted" });
  deepStrictEqual([...new Int32Array(shared)], [N, 0], "N reads, every echo right");
  console.log(
    `per exit: ${mailbox.toFixed(1)} µs with a main-thread callback (mailbox round trip), ` +
      `${worker.toFixed(1)} µs with the in-worker device (includes the run's start and stop)`,
  );
  ok(mailbox > 0 && worker > 0);
});

Deno.test("context callbacks: a throwing callback rejects run() with a callback VcpuError", async () => {
  await using ctx = await KvmContext.create({
    memory: 1 << 20,
    irqchip: false,
    callbacks: {
      outb: (port) => {
        throw new RangeError(`no device at port ${port}`);
      },
    },
  });
  ctx.vm.writeGuest(CODE, [0xe6, 0x66]); // out 0x66, al
  realMode(ctx);
  const error = await ctx.run().then(() => undefined, (e) => e);
  ok(error instanceof VcpuError, `a VcpuError, not ${error}`);
  strictEqual(error.kind, "callback");
  ok(error.cause instanceof RangeError, "the callback's own error is the cause");
  strictEqual((error.cause as Error).message, "no device at port 102");
  // The registers are those of the exit: RIP at the 2-byte OUT, or past it on
  // a KVM that completes port I/O before returning (kvm_pvm).
  ok([BigInt(CODE), BigInt(CODE + 2)].includes(error.regs?.rip ?? -1n), `RIP ${error.regs?.rip}`);
});

Deno.test("context callbacks: userspace irqchip hooks inject an interrupt when the guest is ready", async () => {
  const hooks: string[] = [];
  let pending = true;
  await using ctx = await KvmContext.create({
    memory: 1 << 20,
    irqchip: false,
    callbacks: {
      tryPushInterrupts: (id) => {
        const vcpu = ctx.vcpu(id);
        if (pending && vcpu.readyForInterruptInjection) {
          vcpu.interrupt(0x20); // KVM_INTERRUPT while the worker waits for this answer
          pending = false;
          hooks.push("injected");
        }
        return pending; // ask for an interrupt-window exit while one is pending
      },
      ioWindow: () => void hooks.push("window"),
      outb: (port, value) => port === 0x70 ? stopVcpu(`irq 0x${value.toString(16)}`) : false,
    },
  });
  ctx.vm.writeGuest(CODE, [0xfb, 0xeb, 0xfe]); // sti; jmp $
  ctx.vm.writeGuest(0x20 * 4, [0x00, 0x11, 0x00, 0x00]); // IVT[0x20] = 0000:1100
  ctx.vm.writeGuest(0x1100, [0xb0, 0x20, 0xe6, 0x70, 0xcf]); // mov al, 0x20; out 0x70, al; iret
  realMode(ctx);
  const result = await ctx.run();
  deepStrictEqual(result.vcpus[0].stop, { kind: "handler", reason: "irq 0x20" });
  deepStrictEqual(hooks, ["window", "injected"], "window exit first, then the injection");
});
