/**
 * Boots a Linux kernel with a serial console on this terminal.
 *
 * `deno task boot:linux -- --kernel PATH [--initrd PATH] [--cmdline "..."] [--memory 512M]
 * [--cpus N] [--timeout SEC] [--guest-decompress] [--trace]`
 *
 * The kernel is a bzImage or an uncompressed ELF `vmlinux`. An xz-compressed
 * bzImage (most distributions' kernels) is decompressed on the host once and
 * kept in the per-user cache, and the guest enters the uncompressed kernel
 * directly: its decompressor takes seconds on a nested or emulated host.
 * `--guest-decompress` boots the bzImage the classic way instead. `--trace`
 * prints when each phase ended (ms since the process started) on stderr.
 *
 * Without `--initrd`, a busybox initramfs is built on the fly when
 * `/bin/busybox` is a static binary (see `initramfs.ts`). Keyboard input goes
 * to the guest (raw mode on a terminal); Ctrl-A x quits, Ctrl-A Ctrl-A sends
 * Ctrl-A. Exits 0 when the guest reboots or powers off (Linux on this
 * machine reboots through the keyboard controller: use `reboot`), 1 with a
 * register dump on a triple fault or a KVM error, 2 for bad arguments or a
 * kernel that cannot boot, 124 on `--timeout`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { LinuxMachine } from "../src/boot/linux.ts";
import { KvmError } from "../src/errors.ts";
import { buildInitramfs } from "./initramfs.ts";
import { bzImagePayload, type CachedVmlinux, cachedVmlinux } from "../src/boot/vmlinux.ts";
import { isElf } from "../src/boot/elf.ts";

const USAGE = "usage: boot_linux.ts --kernel PATH [--initrd PATH] [--cmdline TEXT] " +
  "[--memory SIZE] [--cpus N] [--timeout SEC] [--guest-decompress] [--trace]";
const DEFAULT_CMDLINE = "console=ttyS0 panic=-1 pci=off acpi=off";

/** Parses `512M`, `1G`, `262144K` or a plain number of MiB into bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+)\s*([KMG]?)i?B?$/i.exec(text.trim());
  if (!m) throw new Error(`bad memory size ${JSON.stringify(text)} (try 512M or 2G)`);
  const unit = { "": 2 ** 20, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 }[m[2].toUpperCase()]!;
  return Number(m[1]) * unit;
}

/** The stdin pump: a Worker reads stdin into a shared ring and kicks the vCPU thread. */
const STDIN_WORKER = `
import { kickVcpu } from ${JSON.stringify(new URL("../src/kvm/kick.ts", import.meta.url).href)};
self.onmessage = async (e) => {
  const { ring, kick } = e.data;
  const head = new Int32Array(ring, 0, 2); // [0] write index, [1] read index
  const bytes = new Uint8Array(ring, 8);
  for await (const chunk of Deno.stdin.readable) {
    for (const b of chunk) {
      while (Atomics.load(head, 0) - Atomics.load(head, 1) >= bytes.length) {
        await new Promise((r) => setTimeout(r, 5));
      }
      const w = Atomics.load(head, 0);
      bytes[w % bytes.length] = b;
      Atomics.store(head, 0, w + 1);
    }
    kickVcpu(kick);
  }
};
`;

function stdinIsDevNull(): boolean {
  try {
    const a = Deno.statSync("/dev/stdin");
    const b = Deno.statSync("/dev/null");
    return a.dev === b.dev && a.ino === b.ino;
  } catch {
    return false;
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      kernel: { type: "string" },
      initrd: { type: "string" },
      cmdline: { type: "string", default: DEFAULT_CMDLINE },
      memory: { type: "string", default: "512M" },
      cpus: { type: "string", default: "1" },
      timeout: { type: "string" },
      "guest-decompress": { type: "boolean" },
      trace: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || !values.kernel) {
    console.error(USAGE);
    return values.help ? 0 : 2;
  }
  const cpus = Number(values.cpus);
  const memorySize = parseSize(values.memory!);
  // --trace: when each phase ended, in ms since the process started (on stderr).
  const trace = values.trace
    ? (what: string) => console.error(`boot_linux: ${Math.round(performance.now())} ms ${what}`)
    : () => {};
  trace("arguments parsed (runtime started, modules loaded)");
  const kernel = await Deno.readFile(values.kernel);
  let initrd: Uint8Array | undefined;
  if (values.initrd) {
    initrd = await Deno.readFile(values.initrd);
  } else {
    try {
      initrd = await buildInitramfs({ busybox: await Deno.readFile("/bin/busybox") });
    } catch {
      console.error("boot_linux: no --initrd and no /bin/busybox: booting without an initrd");
    }
  }

  const out = new Uint8Array(1);
  let machine: LinuxMachine;
  let found: CachedVmlinux | undefined;
  try {
    trace("kernel and initrd read");
    if (!values["guest-decompress"] && !isElf(kernel) && bzImagePayload(kernel).format === "xz") {
      // Mapped, not read: the machine copies the segments into guest RAM once.
      found = cachedVmlinux(kernel, { map: true });
      if (found.source === "extracted") {
        console.error(
          `boot_linux: decompressed the kernel on the host${
            found.path ? ` (cached in ${found.path})` : ""
          }`,
        );
      }
    }
    if (found) trace(`uncompressed kernel ready (${found.source})`);
    let quiet = true;
    machine = LinuxMachine.create({
      kernel,
      vmlinux: found?.vmlinux,
      initrd,
      cmdline: values.cmdline,
      memorySize,
      cpus,
      serialOutput: (byte) => {
        if (quiet) {
          quiet = false;
          trace("first byte on the serial port");
        }
        out[0] = byte;
        Deno.stdout.writeSync(out);
      },
    });
  } catch (e) {
    console.error(`boot_linux: ${(e as Error).message}`);
    return e instanceof KvmError && e.operation === "load kernel" ? 2 : 1;
  } finally {
    found?.close(); // the machine has its copy in guest RAM
  }

  // Input: a Worker pumps stdin into a ring; the run loop's poll drains it into the UART.
  const ring = new SharedArrayBuffer(8 + 4096);
  const head = new Int32Array(ring, 0, 2);
  const ringBytes = new Uint8Array(ring, 8);
  const raw = Deno.stdin.isTerminal();
  if (raw) Deno.stdin.setRaw(true);
  // No pump (a Worker costs CPU time the guest could use) when stdin is /dev/null.
  const pump = stdinIsDevNull() ? undefined : new Worker(
    URL.createObjectURL(new Blob([STDIN_WORKER], { type: "text/javascript" })),
    { type: "module" },
  );
  pump?.postMessage({ ring, kick: machine.kickTarget });
  let escape = false;
  const poll = () => {
    const w = Atomics.load(head, 0);
    let r = Atomics.load(head, 1);
    if (r === w) return;
    const input: number[] = [];
    for (; r !== w; r++) {
      const b = ringBytes[r % ringBytes.length];
      if (escape) {
        escape = false;
        if (b === 0x78 /* x */) {
          machine.stop();
          break;
        }
        if (b === 0x01) input.push(0x01);
        continue;
      }
      if (b === 0x01 /* Ctrl-A */) escape = true;
      else input.push(b);
    }
    Atomics.store(head, 1, r);
    if (input.length > 0) machine.serial.receive(new Uint8Array(input));
  };

  const probe = machine.cpuProbe;
  if (probe && probe.unusable.length > 0) {
    const cmdline = new TextDecoder().decode(machine.plan.cmdline).replace(/\0$/, "");
    trace(
      `CPU probe (${probe.ms.toFixed(0)} ms): hidden from the guest: ${probe.unusable.join(", ")}` +
        (cmdline !== values.cmdline ? `; command line now "${cmdline}"` : ""),
    );
  }
  let code: number;
  try {
    const timeoutMs = values.timeout ? Number(values.timeout) * 1000 : undefined;
    trace("machine created");
    const exit = await machine.run({ poll, timeoutMs });
    trace(`run ended: ${exit.reason}`);
    if (raw) Deno.stdin.setRaw(false);
    switch (exit.reason) {
      case "reset":
      case "poweroff":
        console.error(
          `\r\nboot_linux: the guest ${exit.reason === "reset" ? "rebooted" : "powered off"}`,
        );
        code = 0;
        break;
      case "stopped":
        console.error("\r\nboot_linux: quit (Ctrl-A x)");
        code = 0;
        break;
      case "timeout":
        console.error(`\r\nboot_linux: timed out after ${values.timeout} s`);
        code = 124;
        break;
      default:
        console.error(`\r\nboot_linux: ${exit.reason}\n${exit.detail ?? ""}`);
        code = 1;
    }
  } finally {
    if (raw) Deno.stdin.setRaw(false);
    pump?.terminate();
    machine.close();
  }
  return code;
}

if (import.meta.main) {
  try {
    // Deno.exit: the stdin pump may still sit in a read.
    Deno.exit(await main());
  } catch (e) {
    console.error(`boot_linux: ${(e as Error).message}`);
    Deno.exit(2);
  }
}
