// A hostile guest on the VMM's own machines (issue 12): it scans every port
// (in and out, 1, 2 and 4 bytes), touches 100,000 distinct unbacked MMIO
// addresses, floods `rep outsb` / `rep insb` across the end of RAM and writes
// garbage to every device of the platform; then it says so on COM1 and leaves
// through the debug-exit port. The VMM must stay bounded (resident memory,
// reports of unknown accesses) and keep answering.
//
// The scan runs in a child process (this file, run with `--hostile-child`)
// so that its resident memory is the VMM's alone; the child reports what it
// measured as one JSON line and the test asserts on it. Exits are cheap on
// some KVMs and ten times dearer on others (nested), so the scan is sized
// from a measured exit round trip to stay within a few tens of seconds.
//
// Also here: the per-address report cap of both machines (a short MMIO scan
// on MultibootMachine and on LinuxMachine), and the boot CLI's stdin pump
// against a guest that never exits by itself (`--pump-child`).

import { ok as assert, strictEqual } from "node:assert/strict";
import { Kvm, KvmError, loadNative, setupProtectedMode, setupRealMode } from "../../mod.ts";
import { ConsoleInput } from "../../src/cli/console_input.ts";
import { LinuxMachine, MultibootMachine, setupPlatform } from "../../src/vmm.ts";
import { featureTest, lacksCap } from "./kvm_features.ts";

/** Where the Multiboot image loads (and where its header, parameters and code sit). */
const LOAD = 0x100000;
/** Guest RAM of the scanning machine: small, so touching all of it costs little. */
const RAM = 32 << 20;
/** The documented bound on per-address reports of unclaimed ports and MMIO addresses, per bus. */
const REPORT_CAP = 256;
/** What the VMM's resident memory may grow by across the whole scan. */
const RSS_BOUND = 64 << 20;
/** The debug-exit code the guest ends with; the machine reports `code << 1 | 1`. */
const EXIT_CODE = 0x2a;

/** The guest's parameters: u32 fields at these image offsets, filled by {@linkcode hostileImage}. */
const PARAM = {
  portEnd: 0x20, // ports scanned: 0, step, 2 * step, ... below this
  portStep: 0x24,
  mmioBase: 0x28, // first unbacked address read and written
  mmioCount: 0x2c, // distinct addresses
  mmioStride: 0x30,
  outsSource: 0x34, // rep outsb to COM1's THR from here ...
  outsCount: 0x38, // ... this many bytes (ECX)
  insDest: 0x3c, // rep insb from an unclaimed port to here ...
  insCount: 0x40, // ... this many bytes (ECX)
  rounds: 0x44, // garbage rounds over the device table
  warmup: 0x48, // port reads before the first marker (the VMM's code warms up)
} as const;
/** The device table: [first port u16, port count u16, value mask u32] entries, ended by a zero count. */
const TABLE = 0x400;

// The program, 32-bit protected mode as Multiboot enters it (paging off, flat
// segments, interrupts off). Each phase ends with mark(): COM1 back to
// normal (8N1, loopback off) and the marker 02 'H' 'G' <phase> 03, which the
// scan's own serial bytes cannot form. Offsets are from LOAD.
// deno-fmt-ignore
const CODE: [number, number[]][] = [
  [0x50, [0xbc, 0x00, 0x00, 0x09, 0x00]],         // mov esp, 0x90000
  [0x55, [0x8b, 0x0d, 0x48, 0x00, 0x10, 0x00]],   // mov ecx, [warmup]
  [0x5b, [0xba, 0x80, 0x00, 0x00, 0x00]],         // mov edx, 0x80          ; POST port
  [0x60, [0xec]],                                 // w: in al, dx
  [0x61, [0x49]],                                 // dec ecx
  [0x62, [0x75, 0xfc]],                           // jnz w
  [0x64, [0xb0, 0x31]],                           // mov al, '1'
  [0x66, [0xe8, 0x04, 0x01, 0x00, 0x00]],         // call mark              ; 1: warmed up
  // Phase 1: every port below portEnd (step portStep) but the debug-exit's 0xf4-0xf7.
  [0x6b, [0x31, 0xdb]],                           // xor ebx, ebx           ; ebx = port
  [0x6d, [0x3b, 0x1d, 0x20, 0x00, 0x10, 0x00]],   // scan: cmp ebx, [portEnd]
  [0x73, [0x73, 0x2c]],                           // jae scandone
  [0x75, [0x89, 0xda]],                           // mov edx, ebx
  [0x77, [0x8d, 0x83, 0x0c, 0xff, 0xff, 0xff]],   // lea eax, [ebx - 0xf4]
  [0x7d, [0x83, 0xf8, 0x04]],                     // cmp eax, 4
  [0x80, [0x72, 0x17]],                           // jb next                ; 0xf4..0xf7: skip
  [0x82, [0xb8, 0x5a, 0x5a, 0x5a, 0x5a]],         // mov eax, 0x5a5a5a5a    ; no reset, no SLP_EN
  [0x87, [0xee]],                                 // out dx, al
  [0x88, [0xec]],                                 // in al, dx
  [0x89, [0xb8, 0x5a, 0x5a, 0x5a, 0x5a]],         // mov eax, 0x5a5a5a5a
  [0x8e, [0x66, 0xef]],                           // out dx, ax
  [0x90, [0x66, 0xed]],                           // in ax, dx
  [0x92, [0xb8, 0x5a, 0x5a, 0x5a, 0x5a]],         // mov eax, 0x5a5a5a5a
  [0x97, [0xef]],                                 // out dx, eax
  [0x98, [0xed]],                                 // in eax, dx
  [0x99, [0x03, 0x1d, 0x24, 0x00, 0x10, 0x00]],   // next: add ebx, [portStep]
  [0x9f, [0xeb, 0xcc]],                           // jmp scan
  [0xa1, [0xb0, 0x32]],                           // scandone: mov al, '2'
  [0xa3, [0xe8, 0xc7, 0x00, 0x00, 0x00]],         // call mark
  // Phase 2: mmioCount distinct unbacked addresses, a 4-byte read and a 1-byte write each.
  [0xa8, [0x8b, 0x35, 0x28, 0x00, 0x10, 0x00]],   // mov esi, [mmioBase]
  [0xae, [0x8b, 0x0d, 0x2c, 0x00, 0x10, 0x00]],   // mov ecx, [mmioCount]
  [0xb4, [0x8b, 0x2d, 0x30, 0x00, 0x10, 0x00]],   // mov ebp, [mmioStride]
  [0xba, [0x85, 0xc9]],                           // test ecx, ecx
  [0xbc, [0x74, 0x09]],                           // jz mmiodone
  [0xbe, [0x8b, 0x06]],                           // m: mov eax, [esi]      ; MMIO read exit
  [0xc0, [0x88, 0x06]],                           // mov [esi], al          ; MMIO write exit
  [0xc2, [0x01, 0xee]],                           // add esi, ebp
  [0xc4, [0x49]],                                 // dec ecx
  [0xc5, [0x75, 0xf7]],                           // jnz m
  [0xc7, [0xb0, 0x33]],                           // mmiodone: mov al, '3'
  [0xc9, [0xe8, 0xa1, 0x00, 0x00, 0x00]],         // call mark
  // Phase 3: string I/O at large counts, each running off the end of RAM.
  [0xce, [0xfc]],                                 // cld
  [0xcf, [0x8b, 0x35, 0x34, 0x00, 0x10, 0x00]],   // mov esi, [outsSource]
  [0xd5, [0x8b, 0x0d, 0x38, 0x00, 0x10, 0x00]],   // mov ecx, [outsCount]
  [0xdb, [0xba, 0xf8, 0x03, 0x00, 0x00]],         // mov edx, 0x3f8         ; COM1 THR
  [0xe0, [0xf3, 0x6e]],                           // rep outsb              ; RAM, then MMIO reads
  [0xe2, [0x8b, 0x3d, 0x3c, 0x00, 0x10, 0x00]],   // mov edi, [insDest]
  [0xe8, [0x8b, 0x0d, 0x40, 0x00, 0x10, 0x00]],   // mov ecx, [insCount]
  [0xee, [0xba, 0xf0, 0x02, 0x00, 0x00]],         // mov edx, 0x2f0         ; nothing there
  [0xf3, [0xf3, 0x6c]],                           // rep insb               ; RAM, then MMIO writes
  [0xf5, [0xb0, 0x34]],                           // mov al, '4'
  [0xf7, [0xe8, 0x73, 0x00, 0x00, 0x00]],         // call mark
  // Phase 4: garbage (a linear congruential generator) to every port of the device table,
  // 1/2/4 bytes, each value ANDed with the device's mask (entries: port, count, mask).
  [0xfc, [0xbf, 0x78, 0x56, 0x34, 0x12]],         // mov edi, 0x12345678    ; the LCG's state
  [0x101, [0x8b, 0x2d, 0x44, 0x00, 0x10, 0x00]],  // mov ebp, [rounds]
  [0x107, [0x85, 0xed]],                          // test ebp, ebp
  [0x109, [0x74, 0x3c]],                          // jz gdone
  [0x10b, [0xbe, 0x00, 0x04, 0x10, 0x00]],        // round: mov esi, TABLE
  [0x110, [0x0f, 0xb7, 0x16]],                    // dev: movzx edx, word [esi]      ; first port
  [0x113, [0x0f, 0xb7, 0x4e, 0x02]],              // movzx ecx, word [esi + 2]       ; count
  [0x117, [0x85, 0xc9]],                          // test ecx, ecx
  [0x119, [0x74, 0x29]],                          // jz rdone
  [0x11b, [0xe8, 0x3a, 0x00, 0x00, 0x00]],        // port: call rnd
  [0x120, [0x23, 0x46, 0x04]],                    // and eax, [esi + 4]     ; the device's mask
  [0x123, [0xee]],                                // out dx, al
  [0x124, [0xec]],                                // in al, dx
  [0x125, [0xe8, 0x30, 0x00, 0x00, 0x00]],        // call rnd
  [0x12a, [0x23, 0x46, 0x04]],                    // and eax, [esi + 4]     ; the device's mask
  [0x12d, [0x66, 0xef]],                          // out dx, ax
  [0x12f, [0x66, 0xed]],                          // in ax, dx
  [0x131, [0xe8, 0x24, 0x00, 0x00, 0x00]],        // call rnd
  [0x136, [0x23, 0x46, 0x04]],                    // and eax, [esi + 4]     ; the device's mask
  [0x139, [0xef]],                                // out dx, eax
  [0x13a, [0xed]],                                // in eax, dx
  [0x13b, [0x42]],                                // inc edx
  [0x13c, [0x49]],                                // dec ecx
  [0x13d, [0x75, 0xdc]],                          // jnz port
  [0x13f, [0x83, 0xc6, 0x08]],                    // add esi, 8
  [0x142, [0xeb, 0xcc]],                          // jmp dev
  [0x144, [0x4d]],                                // rdone: dec ebp
  [0x145, [0x75, 0xc4]],                          // jnz round
  [0x147, [0xb0, 0x35]],                          // gdone: mov al, '5'
  [0x149, [0xe8, 0x21, 0x00, 0x00, 0x00]],        // call mark              ; 5: COM1 still answers
  [0x14e, [0xba, 0xf4, 0x00, 0x00, 0x00]],        // mov edx, 0xf4          ; isa-debug-exit
  [0x153, [0xb8, EXIT_CODE, 0x00, 0x00, 0x00]],  // mov eax, EXIT_CODE
  [0x158, [0xef]],                                // out dx, eax            ; ends the run
  [0x159, [0xf4]],                                // hlt
  // rnd: eax = the LCG's next value; a low byte of 0xf0+ gets bit 0 set, so that no
  // write to the i8042's 0x64 pulses the reset line (0xfe, 0xf0-0xff even).
  [0x15a, [0x69, 0xff, 0x6d, 0x4e, 0xc6, 0x41]],  // rnd: imul edi, edi, 1103515245
  [0x160, [0x81, 0xc7, 0x39, 0x30, 0x00, 0x00]],  // add edi, 12345
  [0x166, [0x89, 0xf8]],                          // mov eax, edi
  [0x168, [0x3c, 0xf0]],                          // cmp al, 0xf0
  [0x16a, [0x72, 0x02]],                          // jb .ret
  [0x16c, [0x0c, 0x01]],                          // or al, 1
  [0x16e, [0xc3]],                                // .ret: ret
  // mark: al = the phase; COM1 to 8N1 without loopback or interrupts, then the marker.
  [0x16f, [0x50]],                                // mark: push eax
  [0x170, [0xba, 0xfb, 0x03, 0x00, 0x00]],        // mov edx, 0x3fb         ; LCR
  [0x175, [0xb0, 0x03]],                          // mov al, 3              ; 8N1, DLAB off
  [0x177, [0xee]],                                // out dx, al
  [0x178, [0xba, 0xfc, 0x03, 0x00, 0x00]],        // mov edx, 0x3fc         ; MCR
  [0x17d, [0x31, 0xc0]],                          // xor eax, eax
  [0x17f, [0xee]],                                // out dx, al             ; loopback off
  [0x180, [0xba, 0xf9, 0x03, 0x00, 0x00]],        // mov edx, 0x3f9         ; IER
  [0x185, [0xee]],                                // out dx, al             ; no interrupts
  [0x186, [0xba, 0xf8, 0x03, 0x00, 0x00]],        // mov edx, 0x3f8         ; THR
  [0x18b, [0xb0, 0x02]],                          // mov al, 0x02
  [0x18d, [0xee]],                                // out dx, al
  [0x18e, [0xb0, 0x48]],                          // mov al, 'H'
  [0x190, [0xee]],                                // out dx, al
  [0x191, [0xb0, 0x47]],                          // mov al, 'G'
  [0x193, [0xee]],                                // out dx, al
  [0x194, [0x58]],                                // pop eax
  [0x195, [0xee]],                                // out dx, al             ; the phase
  [0x196, [0xb0, 0x03]],                          // mov al, 0x03
  [0x198, [0xee]],                                // out dx, al
  [0x199, [0xc3]],                                // ret
];

/**
 * Every device of the Multiboot machine's platform, ports the VMM serves and
 * ports KVM serves in the kernel alike (plus a few empty neighbours):
 * [first port, count, mask of the values written]. Left out or masked is only
 * what would end or suspend the run, which a guest may ask for: the
 * debug-exit port (the guest's last write there is that device's test), an
 * i8042 reset pulse (see rnd) and ACPI sleep (PM1a control's SLP_EN, bit 13
 * at 0x604: bit 5 of every byte is cleared for the PM1 block).
 */
// deno-fmt-ignore
const DEVICES: [number, number, number?][] = [
  [0x3f8, 8],              // COM1 (16550A)
  [0x2f8, 8],              // COM2: nothing
  [0x60, 1],               // i8042 data
  [0x64, 1],               // i8042 command/status
  [0x70, 2],               // CMOS/RTC index, data
  [0x40, 4],               // PIT (in-kernel)
  [0x61, 1],               // PIT gate / speaker (in-kernel)
  [0x20, 2],               // master PIC (in-kernel)
  [0xa0, 2],               // slave PIC (in-kernel)
  [0x4d0, 2],              // ELCR (in-kernel)
  [0x80, 1],               // POST codes / I/O delay
  [0xed, 1],               // alternative I/O delay
  [0xe9, 1],               // Bochs debug console: nothing
  [0x92, 1],               // system control port A
  [0xcf8, 8],              // PCI configuration mechanism #1
  [0x00, 16],              // DMA controller 1
  [0xc0, 32],              // DMA controller 2
  [0x81, 15],              // DMA page registers
  [0x600, 6, 0xdfdfdfdf],  // ACPI PM1a event (status, enable) and control: no SLP_EN
  [0x606, 10],             // the rest of the PM block, the PM timer at 0x608
  [0xe0, 4],               // pc-testdev scratch register
  [0x2000, 24],            // pc-testdev IRQ lines (drive the in-kernel IOAPIC/PIC)
];

/** How big each phase is. */
interface ScanPlan {
  portEnd: number;
  portStep: number;
  mmioBase: number;
  mmioCount: number;
  mmioStride: number;
  outsSource: number;
  outsCount: number;
  insDest: number;
  insCount: number;
  rounds: number;
  warmup: number;
}

/** The Multiboot image: header (a.out kludge: the file loads at LOAD as it is), parameters, code, table. */
function hostileImage(plan: ScanPlan): Uint8Array {
  const image = new Uint8Array(TABLE + 8 * (DEVICES.length + 1));
  const view = new DataView(image.buffer);
  const flags = 1 << 16; // the a.out-kludge address fields are valid
  const magic = 0x1badb002;
  [magic, flags, -(magic + flags) >>> 0, LOAD, LOAD, 0, 0, LOAD + 0x50].forEach((v, i) =>
    view.setUint32(4 * i, v, true)
  );
  for (const [name, offset] of Object.entries(PARAM)) {
    view.setUint32(offset, plan[name as keyof ScanPlan], true);
  }
  for (const [offset, bytes] of CODE) image.set(bytes, offset);
  DEVICES.forEach(([port, count, mask = 0xffffffff], i) => {
    view.setUint16(TABLE + 8 * i, port, true);
    view.setUint16(TABLE + 8 * i + 2, count, true);
    view.setUint32(TABLE + 8 * i + 4, mask, true);
  });
  return image;
}

/** Exits each phase costs, roughly, at full size (for sizing and the report). */
function plannedExits(p: ScanPlan): number {
  const ports = Math.ceil(p.portEnd / p.portStep) * 6;
  const mmio = p.mmioCount * 2;
  const inRam = Math.max(0, Math.min(p.outsCount, RAM - p.outsSource));
  const outs = inRam + 2 * (p.outsCount - inRam); // past RAM: an MMIO read, then the port write
  const ins = Math.ceil(p.insCount / 1024) + (p.insDest + p.insCount - RAM) / 8;
  const garbage = p.rounds * DEVICES.reduce((n, [, c]) => n + c, 0) * 6;
  return p.warmup + ports + mmio + outs + ins + garbage;
}

/**
 * The scan at full size (`scale` 1): all ports, 100,000 MMIO addresses,
 * 128 KiB of outsb, all RAM by insb, 64 garbage rounds. Smaller `scale`
 * shrinks every phase, down to floors that still pass the report caps many
 * times over (1024 MMIO addresses, every 256th port) and still run the
 * string I/O off the end of RAM.
 */
function planScan(scale: number): ScanPlan {
  const s = Math.min(1, Math.max(scale, 1 / 256));
  const outsCount = Math.max(2048, 2 * Math.round(65536 * s));
  const past = Math.max(8192, 1024 * Math.round(64 * s)); // bytes insb writes past RAM
  const insCount = Math.max(256 << 10, Math.round((RAM - (2 << 20)) * s)) + past;
  return {
    portEnd: 0x10000,
    portStep: Math.max(1, Math.round(1 / s)),
    mmioBase: 0x10000000, // 256 MiB: far above RAM, far below the APICs at 0xfec00000
    mmioCount: Math.max(1024, Math.round(100_000 * s)),
    mmioStride: 0x1008, // a new page and a new offset in it each time
    outsSource: RAM - outsCount / 2, // the second half reads unbacked memory
    outsCount,
    insDest: RAM + past - insCount,
    insCount,
    rounds: Math.max(2, Math.round(64 * s)),
    warmup: Math.max(2000, Math.round(20_000 * s)),
  };
}

/** What the child measured. */
interface ChildReport {
  exit: { reason: string; status?: number; detail?: string };
  /** The phase markers seen on COM1, in order. */
  markers: string;
  /** Resident memory (bytes) at each marker, then after the run. */
  rss: number[];
  /** VmHWM after the run (bytes): the peak, including setup before the first marker. */
  peak: number;
  /** Milliseconds from the first marker to each later one. */
  phaseMs: number[];
  portReports: number;
  distinctPortReports: number;
  portSummaries: number;
  mmioReports: number;
  mmioSummaries: number;
  otherReports: string[];
  serialBytes: number;
  exits: number;
}

/** The child: one machine, one scan, one JSON line. */
async function child(plan: ScanPlan): Promise<void> {
  await loadNative();
  const markers: number[] = [];
  const rss: number[] = [];
  const times: number[] = [];
  const window = new Uint8Array(5);
  let serialBytes = 0;
  const portSeen = new Uint8Array(0x10000);
  let portReports = 0, distinctPortReports = 0, portSummaries = 0;
  let mmioReports = 0, mmioSummaries = 0;
  const otherReports: string[] = [];
  using machine = MultibootMachine.create({
    kernel: hostileImage(plan),
    cmdline: "hostile",
    memorySize: RAM,
    serialOutput: (byte) => {
      serialBytes++;
      window.copyWithin(0, 1);
      window[4] = byte;
      if (window[0] === 0x02 && window[1] === 0x48 && window[2] === 0x47 && window[4] === 0x03) {
        markers.push(window[3]);
        rss.push(Deno.memoryUsage().rss);
        times.push(performance.now());
      }
    },
    onUnhandled: (what) => {
      const port = /^port (0x[0-9a-f]+)/i.exec(what);
      if (port) {
        portReports++;
        const p = Number(port[1]) & 0xffff;
        if (!portSeen[p]) distinctPortReports++;
        portSeen[p] = 1;
      } else if (/^\d+ port accesses/.test(what)) portSummaries++;
      else if (/^MMIO (read|write) at 0x[0-9a-f]+$/i.test(what)) mmioReports++;
      else if (/^\d+ MMIO accesses/.test(what)) mmioSummaries++;
      else if (otherReports.length < 20) otherReports.push(what);
    },
  });
  // Touch the RAM the string I/O writes now, so that guest pages do not count as growth.
  machine.vm.writeGuest(2 << 20, new Uint8Array(RAM - (2 << 20)));
  const exit = await machine.run({ timeoutMs: 240_000 });
  rss.push(Deno.memoryUsage().rss);
  const status = Deno.readTextFileSync("/proc/self/status");
  const peak = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
  const report: ChildReport = {
    exit: { reason: exit.reason, status: exit.status, detail: exit.detail },
    markers: String.fromCharCode(...markers),
    rss,
    peak,
    phaseMs: times.map((t) => Math.round(t - times[0])),
    portReports,
    distinctPortReports,
    portSummaries,
    mmioReports,
    mmioSummaries,
    otherReports,
    serialBytes,
    exits: Math.round(plannedExits(plan)),
  };
  console.log(`HOSTILE ${JSON.stringify(report)}`);
}

/**
 * The other child: the boot CLI's stdin pump feeding a guest that never exits
 * on its own (`cli; hlt` with the in-kernel LAPIC: KVM_RUN sleeps in the
 * kernel). The run loop moves ring bytes on only after an exit, so the bytes
 * arrive only if the pump kicks the vCPU, also when its ring fills in the
 * middle of a chunk. Prints how many bytes the "UART" got.
 */
async function pumpChild(expected: number): Promise<void> {
  await loadNative();
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  setupPlatform(vm);
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0x10000, memory: ram });
  // deno-fmt-ignore
  ram.bytes.set([
    0xfa,       // cli
    0xf4,       // hlt            ; with IF=0 only a kick ends KVM_RUN
    0xeb, 0xfd, // jmp $-3        ; back to cli
  ], 0x1000);
  const vcpu = vm.createVcpu(0);
  setupRealMode(vcpu, { entry: 0x1000, stack: 0x8000 });
  let got = 0;
  const input = new ConsoleInput({
    receive: (bytes) => (got += bytes.length, bytes.length),
    quit: () => {},
  });
  const pump = new Worker(new URL("../../src/cli/stdin_pump.ts", import.meta.url), {
    type: "module",
  });
  vcpu.adoptThread();
  pump.postMessage({ ring: input.ring, kick: vcpu.kickTarget });
  vcpu.setWatchdog(20_000);
  let outcome = "all bytes";
  try {
    while (got < expected) {
      vcpu.run();
      input.poll();
    }
  } catch (e) {
    outcome = e instanceof KvmError && e.code === "ETIMEDOUT"
      ? "the vCPU was never kicked"
      : `${e}`;
  }
  vcpu.setWatchdog(null);
  console.log(`PUMP ${JSON.stringify({ got, outcome })}`);
  Deno.exit(0); // the pump may still sit in a read of stdin
}

if (Deno.args[0] === "--hostile-child") {
  await child(JSON.parse(Deno.args[1]) as ScanPlan);
  Deno.exit(0);
}
if (Deno.args[0] === "--pump-child") await pumpChild(Number(Deno.args[1]));

/**
 * Microseconds per port-I/O exit round trip here, guest loop included: a
 * 32-bit guest reads port 0x80 `n` times (`in al, dx; dec ecx; jnz`), in the
 * same mode as the scan (some KVMs are much slower in real mode).
 */
function exitCostUs(n = 20_000): number {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0x10000, memory: ram });
  // deno-fmt-ignore
  ram.bytes.set([
    0xb9, n & 0xff, (n >> 8) & 0xff, n >> 16, 0x00, // mov ecx, n
    0xba, 0x80, 0x00, 0x00, 0x00,                   // mov edx, 0x80
    0xec,                                           // in al, dx
    0x49,                                           // dec ecx
    0x75, 0xfc,                                     // jnz $-2
    0xf4,                                           // hlt
  ], 0x1000);
  const vcpu = vm.createVcpu(0);
  setupProtectedMode(vm, vcpu, { entry: 0x1000, stack: 0x8000 });
  vcpu.setWatchdog(60_000);
  // The first exits warm the run loop up; only the rest are timed.
  const untimed = n / 10;
  let start = 0;
  let exits = 0;
  for (;;) {
    const exit = vcpu.run();
    if (exit.reason !== "io") break;
    if (++exits === untimed) start = performance.now();
  }
  vcpu.setWatchdog(null);
  return ((performance.now() - start) * 1000) / Math.max(exits - untimed, 1);
}

/** Guest time the full scan may take (the measured cost per exit decides its size). */
const SCAN_BUDGET_US = 25e6;
/**
 * MMIO and string-I/O exits cost more than the calibration's plain `in`
 * (instruction emulation, two exits per element past RAM): measured about
 * 1.5 times as much on average over the scan.
 */
const SCAN_EXIT_WEIGHT = 1.5;

const noIrqchip = lacksCap("IRQCHIP");

featureTest(
  "hostile guest: port scan, MMIO scan, rep outsb/insb floods and device garbage leave the VMM bounded and answering",
  noIrqchip,
  async () => {
    const perExit = exitCostUs();
    const full = planScan(1);
    const plan = planScan(SCAN_BUDGET_US / (plannedExits(full) * perExit * SCAN_EXIT_WEIGHT));
    const command = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", import.meta.filename!, "--hostile-child", JSON.stringify(plan)],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(300_000),
    });
    const started = performance.now();
    const out = await command.output();
    const seconds = (performance.now() - started) / 1000;
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    const line = stdout.split("\n").find((l) => l.startsWith("HOSTILE "));
    assert(
      out.success && line,
      `the child failed (${out.code}${out.signal ? `, ${out.signal}` : ""}):\n${stdout}\n${stderr}`,
    );
    const r = JSON.parse(line.slice(8)) as ChildReport;
    const MiB = (n: number) => (n / 2 ** 20).toFixed(1);
    console.log(
      `hostile scan: ${perExit.toFixed(1)} µs/exit measured, ports step ${plan.portStep}, ` +
        `${plan.mmioCount} MMIO addresses, outsb ${plan.outsCount}, insb ${plan.insCount}, ` +
        `${plan.rounds} garbage rounds: ~${r.exits} exits in ${seconds.toFixed(1)} s ` +
        `(phases at ${r.phaseMs.join("/")} ms); RSS ${r.rss.map(MiB).join(" → ")} MiB, peak ${
          MiB(r.peak)
        } MiB; reports: ${r.distinctPortReports} ports, ` +
        `${r.portSummaries} summaries, ${r.mmioReports} MMIO addresses + ${r.mmioSummaries} ` +
        `summaries; ${r.serialBytes} serial bytes`,
    );

    // Still answering: every phase's marker on COM1, then the debug-exit status.
    strictEqual(r.markers, "12345", `phase markers seen on COM1 (exit ${r.exit.reason})`);
    strictEqual(
      r.exit.reason,
      "debugExit",
      `the guest ended through the debug-exit port: ${r.exit.detail ?? ""}`,
    );
    strictEqual(r.exit.status, (EXIT_CODE << 1) | 1);
    // Bounded memory: from the first marker (machine built, code warm) to the end.
    const growth = Math.max(...r.rss) - r.rss[0];
    assert(growth < RSS_BOUND, `the VMM grew by ${MiB(growth)} MiB (bound ${MiB(RSS_BOUND)})`);
    // Bounded reports: on each bus (ports, MMIO) the first 256 distinct addresses
    // one by one, each once, then only counted.
    strictEqual(r.portReports, r.distinctPortReports, "a port reported more than once");
    assert(
      r.portReports <= REPORT_CAP,
      `${r.portReports} ports reported one by one (cap ${REPORT_CAP})`,
    );
    // Summaries at powers of two of the unreported accesses: at most 33 for 2^32 of them.
    assert(r.portSummaries <= 33, `${r.portSummaries} port summaries`);
    assert(
      r.mmioReports <= REPORT_CAP,
      `${r.mmioReports} MMIO addresses reported one by one (cap ${REPORT_CAP})`,
    );
    assert(r.mmioSummaries <= 33, `${r.mmioSummaries} MMIO summaries`);
    strictEqual(r.otherReports.length, 0, `unexpected reports: ${r.otherReports.join("; ")}`);
  },
);

// The MMIO report cap on both machines: a guest touches 1000 distinct unbacked
// addresses (a 4-byte read and a 1-byte write each), then pulses the i8042's
// reset line. The same bytes run in 32-bit protected mode (Multiboot) and in
// 64-bit mode (Linux's ELF entry, identity-mapped 4 GiB): `sub ecx, 1` rather
// than `dec ecx` (a REX prefix in 64-bit mode), 32-bit registers zero-extend.
const CAP_ADDRESSES = 1000;
// deno-fmt-ignore
const CAP_SCAN = [
  0xbe, 0x00, 0x00, 0x00, 0x10, // mov esi, 0x10000000   ; unbacked (RAM is 64 MiB)
  0xb9, CAP_ADDRESSES & 0xff, CAP_ADDRESSES >> 8, 0x00, 0x00, // mov ecx, CAP_ADDRESSES
  0xbd, 0x08, 0x10, 0x00, 0x00, // mov ebp, 0x1008
  0x8b, 0x06,                   // m: mov eax, [esi]     ; MMIO read
  0x88, 0x06,                   // mov [esi], al         ; MMIO write, same address
  0x01, 0xee,                   // add esi, ebp
  0x83, 0xe9, 0x01,             // sub ecx, 1
  0x75, 0xf5,                   // jnz m
  0xb0, 0xfe,                   // mov al, 0xfe
  0xe6, 0x64,                   // out 0x64, al          ; i8042: pulse reset
  0xf4,                         // hlt
];

/** Counts a machine's reports: per-address MMIO reports, distinct addresses, summaries. */
function reportCounter() {
  const addresses = new Set<string>();
  const counts = { perAddress: 0, summaries: 0, other: 0 };
  return {
    counts,
    addresses,
    onUnhandled: (what: string) => {
      const m = /^MMIO (?:read|write) at (0x[0-9a-f]+)$/i.exec(what);
      if (m) {
        counts.perAddress++;
        addresses.add(m[1]);
      } else if (/MMIO/i.test(what)) counts.summaries++;
      else counts.other++;
    },
  };
}

function assertCapped(counter: ReturnType<typeof reportCounter>, machine: string): void {
  const { counts, addresses } = counter;
  strictEqual(
    counts.perAddress,
    REPORT_CAP,
    `${machine}: ${counts.perAddress} MMIO reports one by one for ${CAP_ADDRESSES} addresses`,
  );
  strictEqual(addresses.size, REPORT_CAP, `${machine}: each address reported once`);
  // (1000 - 256) addresses x 2 accesses = 1488 counted: summaries at 1, 2, 4, ... 1024.
  assert(
    counts.summaries >= 1 && counts.summaries <= 11,
    `${machine}: ${counts.summaries} summaries of the unreported accesses`,
  );
}

featureTest(
  "MultibootMachine reports 256 distinct MMIO addresses, then only counts",
  noIrqchip,
  async () => {
    const header = new Uint8Array(32);
    const view = new DataView(header.buffer);
    const magic = 0x1badb002, flags = 1 << 16;
    [magic, flags, -(magic + flags) >>> 0, LOAD, LOAD, 0, 0, LOAD + 32].forEach((v, i) =>
      view.setUint32(4 * i, v, true)
    );
    const counter = reportCounter();
    using machine = MultibootMachine.create({
      kernel: new Uint8Array([...header, ...CAP_SCAN]),
      memorySize: 64 << 20,
      onUnhandled: counter.onUnhandled,
    });
    const exit = await machine.run({ timeoutMs: 120_000 });
    strictEqual(exit.reason, "reset", exit.detail);
    assertCapped(counter, "MultibootMachine");
  },
);

featureTest(
  "LinuxMachine reports 256 distinct MMIO addresses, then only counts",
  noIrqchip,
  async () => {
    // A minimal ELF64 "vmlinux": one PT_LOAD of the scan at 2 MiB, entered there in 64-bit mode.
    const elf = new Uint8Array(0x100 + CAP_SCAN.length);
    const v = new DataView(elf.buffer);
    elf.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0); // ELF, 64-bit, little-endian, version 1
    v.setUint16(16, 2, true); // ET_EXEC
    v.setUint16(18, 62, true); // EM_X86_64
    v.setBigUint64(24, 0x200000n, true); // e_entry
    v.setBigUint64(32, 64n, true); // e_phoff
    v.setUint16(54, 56, true); // e_phentsize
    v.setUint16(56, 1, true); // e_phnum
    v.setUint32(64, 1, true); // PT_LOAD
    v.setBigUint64(64 + 8, 0x100n, true); // p_offset
    v.setBigUint64(64 + 16, 0x200000n, true); // p_vaddr
    v.setBigUint64(64 + 24, 0x200000n, true); // p_paddr
    v.setBigUint64(64 + 32, BigInt(CAP_SCAN.length), true); // p_filesz
    v.setBigUint64(64 + 40, BigInt(CAP_SCAN.length), true); // p_memsz
    elf.set(CAP_SCAN, 0x100);
    const counter = reportCounter();
    using machine = LinuxMachine.create({
      kernel: elf,
      memorySize: 64 << 20,
      probeCpu: false,
      onUnhandled: counter.onUnhandled,
    });
    const exit = await machine.run({ timeoutMs: 120_000 });
    strictEqual(exit.reason, "reset", exit.detail);
    assertCapped(counter, "LinuxMachine");
  },
);

featureTest(
  "boot CLI: the stdin pump kicks an idle guest when a chunk is larger than its ring",
  noIrqchip,
  async () => {
    const bytes = 20_000; // five rings' worth, written at once: one chunk or a few
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", import.meta.filename!, "--pump-child", String(bytes)],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(120_000),
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new Uint8Array(bytes).fill(0x61));
    await writer.close();
    const out = await child.output();
    const stdout = new TextDecoder().decode(out.stdout);
    const line = stdout.split("\n").find((l) => l.startsWith("PUMP "));
    assert(
      line,
      `the child failed (${out.code}):\n${stdout}\n${new TextDecoder().decode(out.stderr)}`,
    );
    const r = JSON.parse(line.slice(5)) as { got: number; outcome: string };
    strictEqual(r.outcome, "all bytes", `${r.got} of ${bytes} bytes reached the UART`);
    strictEqual(r.got, bytes);
  },
);
