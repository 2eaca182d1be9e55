/**
 * The `boot_linux` command line: boots a Linux kernel (bzImage or ELF
 * `vmlinux`) or a Multiboot kernel with its serial console on this terminal,
 * with the conventions of QEMU and Firecracker: `--help` on stdout with every
 * option and its default, `--version`, arguments checked before any heavy
 * work, and documented exit codes ({@linkcode ExitCode}).
 *
 * ```sh
 * deno run -A jsr:@deno-kvm/kvm/cli --kernel /boot/vmlinuz --memory 512M --cpus 2
 * deno task boot:linux -- --kernel /boot/vmlinuz     # in this repository
 * ```
 *
 * An xz-compressed bzImage (most distributions' kernels) is decompressed on
 * the host once and kept in the per-user cache, and the guest enters the
 * uncompressed kernel directly (the first boot of a kernel on a hardware-speed
 * KVM boots the bzImage itself and fills the cache after the run). Without `--initrd`, a busybox initramfs is
 * built on the fly when `/bin/busybox` is a static binary. Keyboard input goes
 * to the guest (raw mode on a terminal); Ctrl-A x quits, Ctrl-A Ctrl-A sends
 * Ctrl-A.
 *
 * @module
 */

import denoJson from "../../deno.json" with { type: "json" };
import { KvmError } from "../errors.ts";
import { Kvm } from "../kvm/kvm.ts";
import { loadNative } from "../ffi/library.ts";
import { parseBzImage } from "../boot/bzimage.ts";
import { isElf, parseElfKernel } from "../boot/elf.ts";
import { probeHostAsync } from "../boot/host_probe.ts";
import { cmdlineDisablesPci, LinuxMachine } from "../boot/linux.ts";
import { isMultiboot } from "../boot/multiboot.ts";
import type { MultibootMachine } from "../boot/multiboot_machine.ts";
import { MAX_IMAGE_FILE_SIZE, readImageFileWithInfo } from "../boot/read_image.ts";
import { MAX_OUTPUT } from "../boot/xz.ts";
import {
  bzImagePayload,
  lookupVmlinuxAsync,
  type PendingCachedVmlinux,
  type VmlinuxLookup,
} from "../boot/vmlinux.ts";
import { ConsoleInput } from "./console_input.ts";

/** The exit codes of {@linkcode main}. */
export const ExitCode = {
  /** The guest rebooted or powered off, or Ctrl-A x. */
  ok: 0,
  /** A runtime failure: no usable KVM, a triple fault, a KVM error. */
  failure: 1,
  /** Bad usage or bad input (arguments, an unreadable or unbootable kernel or initrd). */
  usage: 2,
  /** `--timeout` passed. */
  timeout: 124,
} as const;

/** The command line used when `--cmdline` is not given (Linux kernels). */
export const DEFAULT_CMDLINE = "console=ttyS0 panic=-1 pci=off acpi=off";
/** Guest RAM when `--memory` is not given. */
export const DEFAULT_MEMORY = "512M";
/** The most vCPUs the machines here start. */
export const MAX_CPUS = 64;

const NAME = "boot_linux";
const MiB = 2 ** 20;

const HELP = `usage: ${NAME} [--] --kernel PATH [options]

Boots a Linux kernel (bzImage or ELF vmlinux) or a Multiboot kernel on /dev/kvm,
its serial console (COM1) on this terminal. Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A.

options:
  --kernel PATH        the kernel: bzImage, ELF vmlinux, or Multiboot image (required)
  --initrd PATH        the initrd (Linux) or first module (Multiboot)
                       (default: for Linux, a busybox initramfs built from /bin/busybox
                       when it is static; otherwise none)
  --cmdline TEXT       the kernel command line
                       (default: "${DEFAULT_CMDLINE}" for Linux, "" for Multiboot)
  --memory SIZE        guest RAM: 512M, 2G, 262144K or a number of MiB; a multiple of
                       2 MiB, at most this host's RAM (default: ${DEFAULT_MEMORY})
  --cpus N             vCPUs, 1 to ${MAX_CPUS} and the KVM's limit (default: 1)
  --timeout SEC        stop the guest after SEC seconds and exit 124 (default: none)
  --disk PATH[,ro]     a virtio-blk disk on a raw image file, read-only with ",ro"; repeat
                       for more (/dev/vda, /dev/vdb...; the guest needs virtio_blk and its
                       transport's module, virtio_pci by default)
  --rng                a virtio entropy device (/dev/hwrng; module virtio-rng)
  --net TAP            a virtio-net card on the host's tap interface TAP (created when
                       missing, as root); repeat for more (eth0, eth1...; module virtio_net)
  --console KIND       serial (COM1, default) or virtio (hvc0, module virtio_console):
                       the terminal is connected to that console
                       (with virtio devices the default command line leaves out acpi=off,
                       and with --console virtio it adds console=hvc0)
  --virtio-transport T pci (default: virtio-pci functions with MSI-X behind a PCI root
                       bridge, module virtio_pci; with virtio devices the default command
                       line leaves out pci=off, and a --cmdline with pci=off is refused) or
                       mmio (virtio-mmio windows in ACPI, module virtio_mmio, for guests
                       without PCI; the default command line keeps pci=off)
  --guest-decompress   let the guest decompress an xz bzImage (default: off, the host
                       decompresses it once and caches the result; on a KVM running guest
                       code at hardware speed the first boot of a kernel lets the guest
                       decompress it and caches it after the run)
  --trace              print when each boot phase ended, on stderr (default: off)
  -h, --help           print this help and exit 0
  --version            print the version and exit 0

exit status:
  0    the guest rebooted or powered off, or Ctrl-A x
  N    a Multiboot kernel's isa-debug-exit status (port 0xf4; status & 0xff, as QEMU)
  1    runtime failure (no usable /dev/kvm, a triple fault, a KVM error)
  2    usage error or bad input (arguments, kernel, initrd)
  124  --timeout passed
`;

/** A refusal of the arguments or input: exit code 2, the message on stderr. */
export class UsageError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** The checked arguments of {@linkcode main}. */
export interface BootConfig {
  /** `--kernel`. */
  kernel: string;
  /** `--initrd`. */
  initrd?: string;
  /** `--cmdline`; undefined when not given. */
  cmdline?: string;
  /** Guest RAM, bytes. */
  memorySize: number;
  /** vCPUs. */
  cpus: number;
  /** `--timeout` in ms. */
  timeoutMs?: number;
  /** `--guest-decompress`. */
  guestDecompress: boolean;
  /** `--trace`. */
  trace: boolean;
  /** `--disk`, in order. */
  disks: { path: string; readOnly: boolean }[];
  /** `--rng`. */
  rng: boolean;
  /** `--net`: tap interface names, in order. */
  net: string[];
  /** `--console`. */
  console: "serial" | "virtio";
  /** `--virtio-transport` (default `"pci"`). */
  virtioTransport?: "mmio" | "pci";
}

/**
 * The command line when none is given: ACPI on where virtio devices are
 * described in it, and PCI on where they are on it (`virtioTransport`
 * `"pci"`, the default).
 */
export function defaultCmdline(
  config: Pick<BootConfig, "disks" | "rng" | "console"> & {
    net?: string[];
    virtioTransport?: "mmio" | "pci";
  },
): string {
  const virtio = config.disks.length > 0 || config.rng || config.console === "virtio" ||
    (config.net?.length ?? 0) > 0;
  if (!virtio) return DEFAULT_CMDLINE;
  let base = DEFAULT_CMDLINE.replace(/\s*acpi=off/, "");
  if ((config.virtioTransport ?? "pci") === "pci") base = base.replace(/\s*pci=off/, "");
  return config.console === "virtio" ? `${base} console=hvc0` : base;
}

/** Parses `512M`, `1G`, `262144K` or a plain number of MiB into bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+)\s*([KMG]?)i?B?$/i.exec(text.trim());
  if (!m) throw new UsageError(`--memory: bad size ${JSON.stringify(text)} (try 512M or 2G)`);
  const unit = { "": MiB, K: 2 ** 10, M: MiB, G: 2 ** 30 }[m[2].toUpperCase()]!;
  return Number(m[1]) * unit;
}

/** This host's RAM (`MemTotal` of `/proc/meminfo`) in bytes, or undefined when unknown. */
export function hostMemory(): number | undefined {
  try {
    const m = /^MemTotal:\s+(\d+)\s+kB/m.exec(Deno.readTextFileSync("/proc/meminfo"));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** The options of the command line: strings (some repeatable) and flags. */
const STRING_OPTIONS = [
  "kernel",
  "initrd",
  "cmdline",
  "memory",
  "cpus",
  "timeout",
  "console",
  "virtio-transport",
];
const REPEATED_OPTIONS = ["disk", "net"];
const FLAGS = ["guest-decompress", "trace", "rng", "help", "version"];

interface ParsedOptions {
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  memory: string;
  cpus: string;
  timeout?: string;
  console: string;
  "virtio-transport": string;
  disk: string[];
  net: string[];
  "guest-decompress": boolean;
  trace: boolean;
  rng: boolean;
  help: boolean;
  version: boolean;
}

/**
 * The options as `node:util`'s strict `parseArgs` reads them (`--name value`,
 * `--name=value`, flags without a value, `-h`, nothing positional), written
 * here because loading `node:util` costs every boot Node's compatibility
 * layer (10-20 ms natively, far more under an emulator; `bench/RESULTS.md`,
 * issue 17).
 */
function parseOptions(args: readonly string[]): ParsedOptions {
  const values: ParsedOptions = {
    memory: DEFAULT_MEMORY,
    cpus: "1",
    console: "serial",
    "virtio-transport": "pci",
    disk: [],
    net: [],
    "guest-decompress": false,
    trace: false,
    rng: false,
    help: false,
    version: false,
  };
  const record = values as unknown as Record<string, string | string[] | boolean | undefined>;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "-h") {
      values.help = true;
      continue;
    }
    if (arg === "--" && i === args.length - 1) break; // an end of options with nothing after
    if (!arg.startsWith("--") || arg === "--") {
      if (arg.startsWith("-") && arg !== "-" && arg !== "--") {
        throw new UsageError(`Unknown option '${arg}'`);
      }
      throw new UsageError(
        `Unexpected argument '${arg === "--" ? args[i + 1] : arg}'. ` +
          "This command does not take positional arguments",
      );
    }
    const eq = arg.indexOf("=");
    const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    if (FLAGS.includes(name)) {
      if (eq >= 0) throw new UsageError(`Option '--${name}' does not take an argument`);
      record[name] = true;
      continue;
    }
    const repeated = REPEATED_OPTIONS.includes(name);
    if (!repeated && !STRING_OPTIONS.includes(name)) {
      throw new UsageError(`Unknown option '--${name}'`);
    }
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      const next = args[i + 1];
      if (next === undefined) throw new UsageError(`Option '--${name} <value>' argument missing`);
      if (next.startsWith("-")) {
        throw new UsageError(
          `Option '--${name}' argument is ambiguous. Did you forget to specify the option ` +
            `argument for '--${name}'? To specify an option argument starting with a dash use ` +
            `'--${name}=-XYZ'.`,
        );
      }
      value = next;
      i++;
    }
    if (repeated) (record[name] as string[]).push(value);
    else record[name] = value;
  }
  return values;
}

/**
 * Parses and checks the arguments, needing neither KVM nor the files: throws
 * {@linkcode UsageError}. A first `--` (as `deno task x -- args` passes it on)
 * is skipped. Returns `"help"` or `"version"` for those flags.
 */
export function parseBootArgs(argv: readonly string[]): BootConfig | "help" | "version" {
  const args = argv[0] === "--" ? argv.slice(1) : [...argv];
  const values = parseOptions(args);
  if (values.help) return "help";
  if (values.version) return "version";
  if (!values.kernel) throw new UsageError("--kernel PATH is required");
  if (!/^\d+$/.test(values.cpus) || Number(values.cpus) < 1 || Number(values.cpus) > MAX_CPUS) {
    throw new UsageError(
      `--cpus: ${JSON.stringify(values.cpus)} is not a count from 1 to ${MAX_CPUS}`,
    );
  }
  let timeoutMs: number | undefined;
  if (values.timeout !== undefined) {
    const seconds = /^\d+(\.\d+)?$/.test(values.timeout) ? Number(values.timeout) : NaN;
    if (!(seconds > 0)) {
      throw new UsageError(
        `--timeout: ${JSON.stringify(values.timeout)} is not a positive number of seconds`,
      );
    }
    timeoutMs = seconds * 1000;
  }
  const memorySize = parseSize(values.memory);
  if (memorySize === 0 || memorySize % (2 * MiB) !== 0) {
    throw new UsageError(`--memory: ${values.memory} is not a positive multiple of 2 MiB`);
  }
  const host = hostMemory();
  if (host !== undefined && memorySize > host) {
    throw new UsageError(
      `--memory: ${values.memory} is more than this host's RAM (${Math.floor(host / MiB)} MiB)`,
    );
  }
  if (values.console !== "serial" && values.console !== "virtio") {
    throw new UsageError(`--console: ${JSON.stringify(values.console)} is not serial or virtio`);
  }
  const transport = values["virtio-transport"];
  if (transport !== "mmio" && transport !== "pci") {
    throw new UsageError(`--virtio-transport: ${JSON.stringify(transport)} is not mmio or pci`);
  }
  const disks = values.disk.map((d) => {
    const readOnly = d.endsWith(",ro");
    const path = readOnly ? d.slice(0, -3) : d;
    if (path === "") throw new UsageError(`--disk: ${JSON.stringify(d)} is not PATH[,ro]`);
    return { path, readOnly };
  });
  for (const tap of values.net) {
    if (!/^[\w.-]{1,15}$/.test(tap)) {
      throw new UsageError(
        `--net: ${JSON.stringify(tap)} is not an interface name (1-15 characters)`,
      );
    }
  }
  const count = disks.length + values.net.length + (values.rng ? 1 : 0) +
    (values.console === "virtio" ? 1 : 0);
  if (count > 8) {
    throw new UsageError("at most 8 virtio devices (--disk, --net, --rng, --console virtio)");
  }
  // What LinuxMachine.create would refuse, said in the command line's terms before any work.
  if (count > 0 && transport === "pci" && cmdlineDisablesPci(values.cmdline ?? "")) {
    throw new UsageError(
      "--cmdline has pci=off, but the virtio devices are on PCI (--virtio-transport pci, the " +
        "default): the kernel would find none of them; drop pci=off or add " +
        "--virtio-transport mmio",
    );
  }
  return {
    disks,
    rng: values.rng,
    net: values.net,
    console: values.console,
    virtioTransport: transport,
    kernel: values.kernel,
    initrd: values.initrd,
    cmdline: values.cmdline,
    memorySize,
    cpus: Number(values.cpus),
    timeoutMs,
    guestDecompress: values["guest-decompress"],
    trace: values.trace,
  };
}

/**
 * Whether stdin is `/dev/null`. Through `/proc/self/fd/0` first: a minimal
 * system (the sandbox's busybox image) has no `/dev/stdin`, and a pump
 * Worker started there for nothing cost every boot 1.3 s of its emulated CPU
 * (`bench/RESULTS.md`, issue 17).
 */
function stdinIsDevNull(): boolean {
  for (const path of ["/proc/self/fd/0", "/dev/stdin"]) {
    try {
      const a = Deno.statSync(path);
      const b = Deno.statSync("/dev/null");
      return a.dev === b.dev && a.ino === b.ino;
    } catch {
      // Not there: the next way, or not known.
    }
  }
  return false;
}

const say = (text: string) => console.error(`${NAME}: ${text}`);
/** After the guest's output, which may have left the cursor mid-line in raw mode. */
const sayAfter = (text: string) => console.error(`\r\n${NAME}: ${text}`);

/**
 * Reads a kernel or initrd; a refusal is bad input (exit 2). Neither can be
 * larger than the guest's RAM (both are placed in it), so a larger file is
 * refused from its size, before it is read.
 */
function readInput(
  path: string,
  what: string,
  memorySize: number,
): { bytes: Uint8Array; info?: Deno.FileInfo } {
  try {
    return readImageFileWithInfo(path, {
      what,
      maxBytes: Math.min(memorySize, MAX_IMAGE_FILE_SIZE),
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Opens /dev/kvm and checks `cpus` against its limit; closes it again. */
function checkKvm(cpus: number): void {
  let kvm: Kvm;
  try {
    kvm = Kvm.open();
  } catch (e) {
    throw new Error(
      `cannot use /dev/kvm: ${(e as Error).message}` +
        " (without one, run it in the sandbox: deno task sandbox -- deno task boot:linux ...)",
    );
  }
  try {
    const max = kvm.getMaxVcpus();
    if (cpus > max) throw new UsageError(`--cpus: ${cpus} is more than this KVM's ${max}`);
  } finally {
    kvm.close();
  }
}

/**
 * Runs the command line; returns the exit code ({@linkcode ExitCode}, or a
 * Multiboot kernel's debug-exit status). Messages go to stderr, `--help` and
 * `--version` to stdout.
 */
export async function main(argv: readonly string[]): Promise<number> {
  let config: BootConfig;
  try {
    const parsed = parseBootArgs(argv);
    if (parsed === "help") {
      console.log(HELP);
      return ExitCode.ok;
    }
    if (parsed === "version") {
      console.log(`${NAME} (${denoJson.name}) ${denoJson.version}`);
      return ExitCode.ok;
    }
    config = parsed;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    say(`${e.message}\n${HELP.split("\n")[0]} (--help lists the options)`);
    return ExitCode.usage;
  }
  try {
    return await boot(config);
  } catch (e) {
    say((e as Error).message);
    return e instanceof UsageError ? ExitCode.usage : ExitCode.failure;
  }
}

/** A disk image must be a file of at least one sector, writable unless read-only (exit 2). */
function checkDisk(disk: { path: string; readOnly: boolean }): void {
  try {
    const file = Deno.openSync(disk.path, { read: true, write: !disk.readOnly });
    try {
      const stat = file.statSync();
      if (!stat.isFile || stat.size < 512) {
        throw new Error("not a regular file of at least one 512-byte sector");
      }
    } finally {
      file.close();
    }
  } catch (e) {
    throw new UsageError(`--disk ${disk.path}: ${(e as Error).message}`);
  }
}

async function boot(config: BootConfig): Promise<number> {
  // --trace: when each phase ended, in ms since the process started (on stderr).
  const trace = config.trace
    ? (what: string) => say(`${Math.round(performance.now())} ms ${what}`)
    : () => {};
  trace("arguments parsed (runtime started, modules loaded)");
  // Where the clock above starts (the runtime's time origin, after the process started): lets a
  // benchmark that spawned this process place the phases on its own clock.
  if (config.trace) say(`clock origin ${performance.timeOrigin.toFixed(1)} ms after the epoch`);
  const { bytes: kernel, info: kernelInfo } = readInput(
    config.kernel,
    "kernel",
    config.memorySize,
  );
  const initrd = config.initrd
    ? readInput(config.initrd, "initrd", config.memorySize).bytes
    : undefined;
  let multiboot: boolean;
  try {
    multiboot = isMultiboot(kernel);
    // Refuse a file that is no kernel now, not after the initramfs and the KVM.
    if (!multiboot) isElf(kernel) ? parseElfKernel(kernel) : parseBzImage(kernel);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  for (const disk of config.disks) checkDisk(disk);
  if (
    multiboot &&
    (config.disks.length > 0 || config.net.length > 0 || config.rng || config.console === "virtio")
  ) {
    throw new UsageError("--disk, --net, --rng and --console virtio are for Linux kernels");
  }
  trace("kernel and initrd read");
  // Imported from JSR, the shim's source is fetched (once per process) and compiled (once).
  await loadNative({ lazySymbols: true });
  // The cache is looked up from now on (the bzImage's SHA-256 on another thread) while /dev/kvm
  // is checked and the host probed on this one; what a miss does depends on the probe.
  const vmlinux = multiboot || config.guestDecompress || !xzBzImage(kernel)
    ? undefined
    : lookupVmlinuxAsync(kernel, {
      // Read into memory of its own (MappedFile), MD5-checked here (once: after that its unchanged
      // status vouches for it), and copied into guest RAM by the machine. Reading it from its
      // file straight into guest RAM (`direct`) saves 30 ms natively
      // but took 1-2 s longer in the sandbox, whose emulator runs the kernel's copy
      // (copy_to_user) far slower than user space's (bench/RESULTS.md, issue 17).
      map: true,
      // An unchanged kernel file's SHA-256 (the key) is remembered, not computed on every boot.
      imageInfo: kernelInfo,
      // A kernel larger than the guest's RAM could not boot: nothing larger is decoded.
      maxOutput: Math.min(config.memorySize, MAX_OUTPUT),
      onPhase: trace,
    });
  // Handled here too, so a failure before it is awaited is not an unhandled rejection.
  vmlinux?.catch(() => {});
  checkKvm(config.cpus);
  trace("/dev/kvm checked");
  return multiboot
    ? await bootMultiboot(config, kernel, initrd)
    : await bootLinux(config, kernel, initrd, vmlinux, trace);
}

/** Whether `kernel` is a bzImage with an xz payload (a bzImage the loader refuses is bad input). */
function xzBzImage(kernel: Uint8Array): boolean {
  if (isElf(kernel)) return false;
  try {
    return bzImagePayload(kernel).format === "xz";
  } catch (e) {
    throw badKernel(e);
  }
}

const out = new Uint8Array(1);
function serialOutput(byte: number): void {
  out[0] = byte;
  Deno.stdout.writeSync(out);
}

async function bootMultiboot(
  config: BootConfig,
  kernel: Uint8Array,
  initrd: Uint8Array | undefined,
): Promise<number> {
  say(
    `booting the Multiboot kernel ${config.kernel} with ${config.cpus} vCPU(s), ` +
      `${config.memorySize / MiB} MiB (Ctrl-C quits)`,
  );
  // Imported here: a Linux boot (nearly every boot) does not load the Multiboot machine.
  const { MultibootMachine: Machine } = await import("../boot/multiboot_machine.ts");
  let machine: MultibootMachine;
  try {
    machine = Machine.create({
      kernel,
      cmdline: `${config.kernel} ${config.cmdline ?? ""}`.trimEnd(),
      modules: initrd ? [{ data: initrd, cmdline: config.initrd }] : [],
      memorySize: config.memorySize,
      cpus: config.cpus,
      serialOutput,
    });
  } catch (e) {
    throw badKernel(e);
  }
  try {
    const exit = await machine.run({ timeoutMs: config.timeoutMs });
    switch (exit.reason) {
      case "debugExit":
        say(`the guest exited through isa-debug-exit with status ${exit.status}`);
        return exit.status! & 0xff;
      case "timeout":
        say(`timed out after ${config.timeoutMs! / 1000} s`);
        return ExitCode.timeout;
      case "reset":
      case "poweroff":
      case "stopped":
        say(`the guest ended: ${exit.reason}`);
        return ExitCode.ok;
      default:
        say(`${exit.reason}\n${exit.detail ?? ""}`);
        return ExitCode.failure;
    }
  } finally {
    machine.close();
  }
}

/**
 * A loader's refusal of the kernel, or the machine's of its options (`EINVAL`
 * from `create Linux machine`, such as virtio devices on PCI with `pci=off`),
 * is bad input; anything else a runtime failure.
 */
function badKernel(e: unknown): Error {
  if (
    e instanceof KvmError &&
    (/^load /.test(e.operation) || (e.operation === "create Linux machine" && e.code === "EINVAL"))
  ) {
    return new UsageError(e.message);
  }
  return e as Error;
}

async function bootLinux(
  config: BootConfig,
  kernel: Uint8Array,
  givenInitrd: Uint8Array | undefined,
  pendingVmlinux: Promise<VmlinuxLookup> | undefined,
  trace: (what: string) => void,
): Promise<number> {
  let initrd = givenInitrd;
  if (!initrd) {
    try {
      // Imported here: a boot given its --initrd does not load the cpio writer.
      const { buildInitramfs } = await import("../boot/initramfs.ts");
      initrd = await buildInitramfs({ busybox: await Deno.readFile("/bin/busybox") });
      say("no --initrd: built a busybox initramfs from /bin/busybox");
    } catch {
      say("no --initrd and no /bin/busybox: booting without an initrd");
    }
  }
  // One Kvm for the speed probe, the CPU probe and the machine (the CPU probe is cached per Kvm).
  const kvm = Kvm.open();
  try {
    return await bootLinuxOn(kvm, config, kernel, initrd, pendingVmlinux, trace);
  } finally {
    kvm.close();
  }
}

async function bootLinuxOn(
  kvm: Kvm,
  config: BootConfig,
  kernel: Uint8Array,
  initrd: Uint8Array | undefined,
  pendingVmlinux: Promise<VmlinuxLookup> | undefined,
  trace: (what: string) => void,
): Promise<number> {
  // The CPU and guest speed probes, read back when this host's KVM was probed before (their
  // seconds of emulated guest code in a nested KVM, before every boot, otherwise).
  const probeStart = performance.now();
  const host = await probeHostAsync(kvm); // no node:crypto before the guest runs
  const speed = host.speed;
  trace(
    `host probed (${Math.round(performance.now() - probeStart)} ms; ${
      host.source === "cache" ? "read back from the cache" : "probed"
    }: guest speed ${speed.mips.toFixed(1)} MIPS${
      host.cacheProblem ? `; not cached: ${host.cacheProblem}` : ""
    })`,
  );
  say(
    `booting ${config.kernel} with ${config.cpus} vCPU(s), ${config.memorySize / MiB} MiB` +
      ` (Ctrl-A x quits)`,
  );
  if (!speed.practical) {
    say(
      `this KVM runs guest code at ${speed.mips.toFixed(1)} million instructions/s ` +
        "(a software KVM such as kvm_pvm): Linux takes many minutes to boot here. " +
        "The sandbox is faster: deno task sandbox -- deno task boot:linux ...",
    );
  }
  let machine: LinuxMachine;
  let found: PendingCachedVmlinux | undefined;
  /** A cache miss whose kernel is decompressed for the cache after the run. */
  let afterRun: VmlinuxLookup | undefined;
  try {
    const lookup = await pendingVmlinux;
    if (lookup && !lookup.hit && speed.practical) {
      // A new kernel on a KVM that runs guest code at hardware speed: the guest's own
      // decompressor is as fast as liblzma here (the sandbox: about 4.5 s against 5.9 s, plus
      // 0.7 s of compaction and a 35 MB copy instead of 8 MB; bench/RESULTS.md, issue 17), so
      // this boot takes the bzImage as QEMU does and the host fills the cache after the run. On
      // a software KVM (kvm_pvm) the guest's decompressor is emulated: the host decompresses now.
      afterRun = lookup;
      trace("kernel cache miss: the guest decompresses this boot, the host after the run");
    } else if (lookup) {
      found = await lookup.extract();
      if (found.source === "extracted") {
        say(
          `decompressed the kernel on the host${
            found.path ? ` (caching it in ${found.path})` : ""
          }`,
        );
      }
      trace(`uncompressed kernel ready (${found.source})`);
    }
    let quiet = true;
    machine = LinuxMachine.create({
      kvm,
      kernel,
      vmlinux: found?.vmlinux,
      initrd,
      cmdline: config.cmdline ?? defaultCmdline(config),
      disks: config.disks,
      rng: config.rng,
      net: config.net.map((tap) => ({ tap })),
      console: config.console,
      virtioTransport: config.virtioTransport,
      memorySize: config.memorySize,
      cpus: config.cpus,
      onPhase: trace,
      serialOutput: (byte) => {
        if (quiet) {
          quiet = false;
          trace("first byte on the serial port");
        }
        serialOutput(byte);
      },
    });
  } catch (e) {
    await found?.save(); // the kernel is still good for the next boot
    throw badKernel(e);
  } finally {
    found?.close(); // the machine has its copy in guest RAM
  }

  const input = new ConsoleInput({
    receive: (bytes) =>
      machine.virtioConsole ? machine.virtioConsole.input(bytes) : machine.serial.receive(bytes),
    quit: () => machine.stop(),
  });
  const raw = Deno.stdin.isTerminal();
  // No pump (a Worker costs CPU time the guest could use) when stdin is /dev/null.
  const pump = stdinIsDevNull()
    ? undefined
    : new Worker(new URL("./stdin_pump.ts", import.meta.url), { type: "module" });
  pump?.postMessage({ ring: input.ring, kick: machine.kickTarget });

  const probe = machine.cpuProbe;
  if (probe && probe.unusable.length > 0) {
    const cmdline = new TextDecoder().decode(machine.plan.cmdline).replace(/\0$/, "");
    trace(
      `CPU probe: hidden from the guest: ${probe.unusable.join(", ")}` +
        (cmdline !== (config.cmdline ?? defaultCmdline(config))
          ? `; command line now "${cmdline}"`
          : ""),
    );
  }
  try {
    if (raw) Deno.stdin.setRaw(true);
    trace("machine created");
    const exit = await machine.run({ poll: () => input.poll(), timeoutMs: config.timeoutMs });
    trace(`run ended: ${exit.reason}`);
    if (raw) Deno.stdin.setRaw(false);
    switch (exit.reason) {
      case "reset":
      case "poweroff":
        sayAfter(`the guest ${exit.reason === "reset" ? "rebooted" : "powered off"}`);
        return ExitCode.ok;
      case "stopped":
        sayAfter("quit (Ctrl-A x)");
        return ExitCode.ok;
      case "timeout":
        sayAfter(`timed out after ${config.timeoutMs! / 1000} s`);
        return ExitCode.timeout;
      default:
        sayAfter(`${exit.reason}\n${exit.detail ?? ""}`);
        return ExitCode.failure;
    }
  } finally {
    if (raw) Deno.stdin.setRaw(false);
    pump?.terminate();
    machine.close();
    // Written now, not while the guest boots: on a host with few CPUs (the sandbox's emulator
    // has one thread) hashing and writing 35 MB would slow the guest's boot down.
    const problem = await found?.save();
    if (problem) say(`the kernel cache: ${problem}`);
    if (afterRun) await fillCache(afterRun);
  }
}

/** Decompresses a kernel the guest decompressed itself into the cache, for the next boot. */
async function fillCache(lookup: VmlinuxLookup): Promise<void> {
  say("decompressing the kernel on the host for the next boot");
  try {
    using extracted = await lookup.extractAgain(); // a miss, or a hit found damaged
    const problem = await extracted.save();
    say(
      problem
        ? `the kernel cache: ${problem}`
        : `cached the decompressed kernel${extracted.path ? ` in ${extracted.path}` : ""}`,
    );
  } catch (e) {
    say(`the kernel cache: cannot decompress the kernel: ${(e as Error).message}`);
  }
}

if (import.meta.main) {
  // Deno.exit: the stdin pump may still sit in a read.
  Deno.exit(await main(Deno.args));
}
