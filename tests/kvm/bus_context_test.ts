// The VMM's devices inside a KvmContext worker: a real-mode guest writes to
// three 16550A UARTs (one model at COM1, at COM2 and in MMIO space, each
// seeing only its register offsets) served on the vCPU's own thread by
// busVcpuDevice, with single OUTs, a `rep outsb`, an IN and MMIO loads and
// stores. The test reads back what each UART sent.

import { deepStrictEqual } from "node:assert/strict";
import { KvmContext, loadNative } from "../../mod.ts";
import { MMIO_UART } from "./context/uart_bus_device.ts";

await loadNative();

const DEVICE = new URL("./context/uart_bus_device.ts", import.meta.url);
const CODE = 0x1000;
const TEXT = 0x1100;

// deno-fmt-ignore
const GUEST = [
  0xba, 0xf8, 0x03,             // mov dx, 0x3f8          ; COM1's THR
  0xb0, 0x41,                   // mov al, 'A'
  0xee,                         // out dx, al             ; COM1 sends "A"
  0xba, 0xf8, 0x02,             // mov dx, 0x2f8          ; COM2's THR
  0xb0, 0x42,                   // mov al, 'B'
  0xee,                         // out dx, al             ; COM2 sends "B"
  0xbe, TEXT & 0xff, TEXT >> 8, // mov si, TEXT           ; "CD"
  0xb9, 0x02, 0x00,             // mov cx, 2
  0xba, 0xf8, 0x03,             // mov dx, 0x3f8
  0xfc,                         // cld
  0xf3, 0x6e,                   // rep outsb              ; COM1 sends "CD" (string I/O)
  0xba, 0xfd, 0x03,             // mov dx, 0x3fd          ; COM1's LSR
  0xec,                         // in al, dx              ; 0x60: THR and transmitter empty
  0xba, 0xf8, 0x02,             // mov dx, 0x2f8
  0xee,                         // out dx, al             ; COM2 sends the LSR it read
  0xb8, MMIO_UART >> 4 & 0xff, MMIO_UART >> 12, // mov ax, MMIO_UART >> 4
  0x8e, 0xc0,                   // mov es, ax             ; ES:0 is the MMIO UART
  0x26, 0xc6, 0x06, 0x00, 0x00, 0x45, // mov byte [es:0], 'E' ; its THR: it sends "E"
  0x26, 0xa0, 0x05, 0x00,       // mov al, [es:5]         ; its LSR: 0x60
  0x26, 0xa2, 0x00, 0x00,       // mov [es:0], al         ; it sends the LSR it read
  0xf4,                         // hlt                    ; no irqchip: HLT exits, the run ends
];

Deno.test("bus in a KvmContext worker: a guest's writes to UARTs at 0x3f8, 0x2f8 and MMIO 0x20000 arrive", async () => {
  const shared = new SharedArrayBuffer(4 + 64);
  await using ctx = await KvmContext.create({
    memory: 64 * 1024,
    irqchip: false,
    devices: [{ url: DEVICE, options: { shared } }],
  });
  ctx.vm.writeGuest(CODE, GUEST);
  ctx.vm.writeGuest(TEXT, new TextEncoder().encode("CD"));
  const vcpu = ctx.vcpu(0);
  const sregs = vcpu.getSregs();
  for (const seg of [sregs.cs, sregs.ds, sregs.es, sregs.ss]) {
    seg.base = 0n;
    seg.selector = 0;
  }
  vcpu.setSregs(sregs);
  vcpu.setRegs(vcpu.getRegs().clear().assign({ rip: CODE, rflags: 2n, rsp: 0x8000 }));
  const result = await ctx.run({ timeoutMs: 30_000 });
  deepStrictEqual(result.vcpus[0].stop, { kind: "hlt" }, "the guest got to its HLT");
  const n = new Int32Array(shared, 0, 1)[0];
  const log = new Uint8Array(shared, 4, 2 * n);
  const sent = (uart: number) =>
    [...log].flatMap((b, i) => i % 2 === 0 && b === uart ? [log[i + 1]] : []);
  deepStrictEqual(sent(1), [0x41, 0x43, 0x44], "COM1: 'A', then 'CD' from rep outsb");
  deepStrictEqual(sent(2), [0x42, 0x60], "COM2: 'B', then COM1's LSR (THR empty, idle)");
  deepStrictEqual(sent(3), [0x45, 0x60], "the MMIO UART: 'E', then its own LSR");
});
