/**
 * A small PC that boots a Linux bzImage: guest RAM, the in-kernel interrupt
 * controllers and PIT, a 16550A console on COM1, the i8042 reset line, an MP
 * table for SMP, and one thread per vCPU (the bootstrap vCPU on the calling
 * thread, each application processor on a Worker).
 *
 * Every device model lives on the calling thread. An AP's I/O exit is handed
 * over through a shared mailbox: the AP's worker kicks the bootstrap vCPU out
 * of `KVM_RUN`, the loop here serves the request, and the AP resumes. Linux
 * does nearly all of its port I/O on the boot CPU, so this costs little.
 *
 * @module
 */

import type { CpuidEntry } from "../abi/cpuid.ts";
import { Errno, KvmError } from "../errors.ts";
import { IoBus, type UnhandledAccess } from "../devices/io_bus.ts";
import { registerLegacyDevices } from "../devices/legacy.ts";
import { COM1_IRQ, COM1_PORT, Uart16550 } from "../devices/uart_16550.ts";
import { hex } from "../kvm/constants.ts";
import { describeInternalError } from "../kvm/dump.ts";
import { Kvm } from "../kvm/kvm.ts";
import type { KickTarget, Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import { type ApHandlers, ApWorkers } from "./ap_runtime.ts";
import {
  HIGH_RAM_START,
  type LinuxBootPlan,
  planLinuxBoot,
  writeLinuxBoot,
  ZERO_PAGE_ADDRESS,
} from "./bzimage.ts";
import { describeVcpu } from "./mailbox.ts";
import { setupLongMode, setupProtectedMode } from "./modes.ts";
import { buildMpTable, MPTABLE_ADDRESS } from "./mptable.ts";
import { setupPlatform, setupVcpu } from "./platform.ts";
import { completeUnemulated } from "./unemulated.ts";
import { type CpuProbeReport, linuxClearCpuid, probeCpu } from "./cpu_probe.ts";

/** Distinct unhandled MMIO addresses reported one by one (and remembered); the rest are counted. */
const MAX_REPORTED_MMIO = 256;

/** Options of {@linkcode LinuxMachine.create}. */
export interface LinuxMachineOptions {
  /** The kernel: a bzImage, or an uncompressed ELF `vmlinux` (entered at its 64-bit entry). */
  kernel: Uint8Array;
  /**
   * The bzImage's own kernel, uncompressed (from `extractVmlinux` or
   * `cachedVmlinux`): loaded directly so the guest skips the decompressor.
   */
  vmlinux?: Uint8Array;
  /** An initrd / initramfs. */
  initrd?: Uint8Array;
  /** The kernel command line (add `console=ttyS0` to see the kernel on the serial port). */
  cmdline?: string;
  /** Guest RAM in bytes (a multiple of 2 MiB). */
  memorySize: number;
  /**
   * Back guest RAM with transparent huge pages (default true; see
   * `GuestMemoryOptions.hugePages`).
   */
  hugePages?: boolean;
  /** vCPUs, 1 to 64 (default 1). */
  cpus?: number;
  /** Receives each byte the guest sends on COM1. */
  serialOutput?: (byte: number) => void;
  /** Called once per unclaimed port or MMIO address the guest touches. */
  onUnhandled?: (what: string) => void;
  /**
   * Adjusts each vCPU's CPUID after the platform's own changes (for example to
   * hide a paravirtual feature): gets the list and the vCPU id, returns the list to set.
   */
  cpuid?: (entries: CpuidEntry[], vcpuId: number) => CpuidEntry[];
  /** The KVM system object to use (default: opens `/dev/kvm`, closed with the machine). */
  kvm?: Kvm;
  /**
   * Probe which CPU features this KVM can really execute and hide the others
   * from the guest (default true; see `probeCpu`, cached per `Kvm`). Where
   * the KVM forces a failing feature into the guest's CPUID anyway, its
   * `clearcpuid=` is appended to the command line. False offers the
   * supported CPUID as it is.
   */
  probeCpu?: boolean;
}

/** Why {@linkcode LinuxMachine.run} returned. */
export type MachineExitReason =
  /** The guest reset the machine (keyboard controller, a reboot). */
  | "reset"
  /** The guest asked to power off (a system event). */
  | "poweroff"
  /** A triple fault (`KVM_EXIT_SHUTDOWN`). */
  | "tripleFault"
  /** KVM could not go on (internal error, failed entry, unexpected exit). */
  | "error"
  /** {@linkcode LinuxMachine.stop} was called. */
  | "stopped"
  /** The run's `timeoutMs` passed. */
  | "timeout";

/** How a run ended. */
export interface MachineExit {
  /** Why. */
  reason: MachineExitReason;
  /** The vCPU that ended it (-1 when none did). */
  vcpu: number;
  /** What happened, for the error reasons, with a register dump. */
  detail?: string;
}

/** Options of {@linkcode LinuxMachine.run}. */
export interface LinuxRunOptions {
  /**
   * Called on the run loop's thread after every exit of the bootstrap vCPU
   * (including kicks): feed input to {@linkcode LinuxMachine.serial}, call
   * {@linkcode LinuxMachine.stop}. Another thread makes it run soon by kicking
   * {@linkcode LinuxMachine.kickTarget}.
   */
  poll?: () => void;
  /** Ends the run with reason `"timeout"` after this many milliseconds. */
  timeoutMs?: number;
}

const MiB = 1024 * 1024;
/** How long {@linkcode LinuxMachine.run} waits for its vCPU workers to start. */
const WORKER_START_TIMEOUT_MS = 60_000;

/**
 * A virtual PC booting Linux.
 *
 * @example
 * ```ts
 * import { LinuxMachine } from "@deno-kvm/kvm/vmm";
 * const kernel = Deno.readFileSync("/boot/vmlinuz");
 * using machine = LinuxMachine.create({
 *   kernel,
 *   cmdline: "console=ttyS0 panic=-1",
 *   memorySize: 256 * 1024 * 1024,
 *   cpus: 2,
 *   serialOutput: (b) => Deno.stdout.writeSync(new Uint8Array([b])),
 * });
 * const exit = await machine.run();
 * console.log(exit.reason);
 * ```
 */
export class LinuxMachine {
  /** The KVM system object. */
  readonly kvm: Kvm;
  /** The VM. */
  readonly vm: Vm;
  /** The port I/O bus with the platform's devices. */
  readonly bus: IoBus;
  /** COM1. */
  readonly serial: Uart16550;
  /** The boot layout decided before the VM was created. */
  readonly plan: LinuxBootPlan;
  /** vCPUs by id; 0 is the bootstrap processor. */
  readonly vcpus: readonly Vcpu[];
  /** What the CPU probe found (undefined with `probeCpu: false`). */
  readonly cpuProbe?: CpuProbeReport;
  #ownsKvm: boolean;
  #aps = new ApWorkers();
  #exit: MachineExit | null = null;
  #onUnhandled?: (what: string) => void;
  #seenMmio = new Set<number>();
  #unreportedMmio = 0;
  #running = false;
  /**
   * Exits of the bootstrap vCPU (and forwarded AP exits) by port: a profile of
   * where the guest spends its port I/O. Index 0x10000 counts MMIO exits.
   */
  readonly exitsByPort: Uint32Array = new Uint32Array(0x10001);

  private constructor(
    kvm: Kvm,
    ownsKvm: boolean,
    plan: LinuxBootPlan,
    options: LinuxMachineOptions,
    probe: CpuProbeReport | undefined,
  ) {
    this.kvm = kvm;
    this.cpuProbe = probe;
    this.#ownsKvm = ownsKvm;
    this.plan = plan;
    this.#onUnhandled = options.onUnhandled;
    const cpus = options.cpus ?? 1;
    const vm = this.vm = kvm.createVm();
    try {
      setupPlatform(vm);
      const ram = vm.allocateMemory(options.memorySize, { hugePages: options.hugePages });
      vm.setUserMemoryRegion({
        slot: 0,
        guestPhysAddr: 0,
        memorySize: plan.lowMemorySize,
        memory: ram,
      });
      if (plan.highMemorySize > 0) {
        vm.setUserMemoryRegion({
          slot: 1,
          guestPhysAddr: HIGH_RAM_START,
          memorySize: plan.highMemorySize,
          memory: ram,
          offset: plan.lowMemorySize,
        });
      }
      writeLinuxBoot(vm, plan, { memoryIsZero: true });
      vm.writeGuest(MPTABLE_ADDRESS, buildMpTable(cpus));

      this.bus = new IoBus({
        onUnhandled: (a: UnhandledAccess) =>
          this.#onUnhandled?.(
            `port ${hex(a.port)} ${a.direction} (${a.size} byte${a.size > 1 ? "s" : ""})`,
          ),
      });
      this.serial = new Uart16550({
        output: options.serialOutput,
        irq: (level) => vm.setIrqLine(COM1_IRQ, level),
      });
      this.bus.register(COM1_PORT, 8, this.serial);
      registerLegacyDevices(this.bus, {
        onReset: () => this.#finish({ reason: "reset", vcpu: -1 }),
      });

      const supported = kvm.getSupportedCpuid();
      const tscDeadline = kvm.checkExtension("TSC_DEADLINE_TIMER") > 0;
      const vcpus: Vcpu[] = [];
      for (let id = 0; id < cpus; id++) {
        const vcpu = vm.createVcpu(id);
        setupVcpu(vcpu, cpus, supported, { tscDeadline, probe, adjust: options.cpuid });
        vcpus.push(vcpu);
      }
      this.vcpus = vcpus;
      const bsp = vcpus[0];
      if (plan.entryMode === "64") {
        // Map 4 GiB: the kernel, zero page and command line must be identity mapped.
        setupLongMode(vm, bsp, { entry: plan.entry, identityMapGiB: 4 });
      } else {
        setupProtectedMode(vm, bsp, { entry: plan.entry });
      }
      // Boot protocol: RSI (ESI) points to the zero page; interrupts off.
      bsp.setRegs(bsp.getRegs().assign({ rsi: BigInt(ZERO_PAGE_ADDRESS), rflags: 2n }));
      // Workers take a while to load: start them now, while the caller finishes its setup.
      this.#aps.start(vcpus.slice(1), bsp.kickTarget, kvm.vcpuMmapSize());
    } catch (e) {
      this.#aps.stop();
      vm.close();
      throw e;
    }
  }

  /**
   * Checks the kernel, initrd, command line and memory size (a
   * `BootImageError` before any VM exists when something cannot boot), then
   * builds the machine: RAM, platform, devices, vCPUs, the boot image in RAM,
   * and the bootstrap vCPU at the kernel's 64-bit entry (32-bit for kernels
   * without one).
   */
  static create(options: LinuxMachineOptions): LinuxMachine {
    const cpus = options.cpus ?? 1;
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > 64) {
      throw new KvmError("create Linux machine", Errno.EINVAL, `cpus ${cpus}: 1 to 64`);
    }
    if (options.memorySize % (2 * MiB) !== 0) {
      throw new KvmError(
        "create Linux machine",
        Errno.EINVAL,
        `memory size ${options.memorySize} is not a multiple of 2 MiB`,
      );
    }
    const planWith = (cmdline?: string) =>
      planLinuxBoot(options.kernel, {
        memorySize: options.memorySize,
        cmdline,
        initrd: options.initrd,
        vmlinux: options.vmlinux,
      });
    let plan = planWith(options.cmdline);
    const ownsKvm = options.kvm === undefined;
    const kvm = options.kvm ?? Kvm.open();
    try {
      let probe: CpuProbeReport | undefined;
      if (options.probeCpu !== false) {
        probe = probeCpu(kvm);
        const clear = linuxClearCpuid(probe);
        if (clear) plan = planWith(options.cmdline ? `${options.cmdline} ${clear}` : clear);
      }
      return new LinuxMachine(kvm, ownsKvm, plan, options, probe);
    } catch (e) {
      if (ownsKvm) kvm.close();
      throw e;
    }
  }

  /** The thread running the bootstrap vCPU (valid during {@linkcode run}), to kick. */
  get kickTarget(): KickTarget {
    return this.vcpus[0].kickTarget;
  }

  /** Ends {@linkcode run} after the current exit, with reason `"stopped"`. */
  stop(): void {
    this.#finish({ reason: "stopped", vcpu: -1 });
  }

  #finish(exit: MachineExit): void {
    if (!this.#exit) this.#exit = exit;
  }

  /** The APs' requests, served on the bootstrap vCPU's thread by the same devices. */
  #apHandlers: ApHandlers = {
    io: (_vcpu, direction, port, size, count, data) => {
      this.exitsByPort[port]++;
      this.bus.handle(direction, port, size, count, data);
    },
    mmio: (_vcpu, address, isWrite, data) => this.#mmio(address, isWrite, data),
    tripleFault: (vcpu, detail) => this.#finish({ reason: "tripleFault", vcpu, detail }),
    systemEvent: (vcpu, type, detail) => this.#systemEvent(type, vcpu, detail),
    error: (vcpu, detail) => this.#finish({ reason: "error", vcpu, detail }),
  };

  /**
   * No MMIO devices: reads return all-ones, writes are dropped. The first
   * {@linkcode MAX_REPORTED_MMIO} addresses are reported once each; past
   * them a guest scanning the address space grows nothing: accesses to new
   * addresses are only counted, and the count reported at each power of two.
   */
  #mmio(address: number, isWrite: boolean, data: Uint8Array): void {
    if (!isWrite) data.fill(0xff);
    if (this.#seenMmio.has(address)) return;
    if (this.#seenMmio.size < MAX_REPORTED_MMIO) {
      this.#seenMmio.add(address);
      this.#onUnhandled?.(`MMIO ${isWrite ? "write" : "read"} at ${hex(address)}`);
      return;
    }
    const n = ++this.#unreportedMmio;
    if ((n & (n - 1)) === 0) {
      this.#onUnhandled?.(
        `${n} MMIO accesses beyond the first ${MAX_REPORTED_MMIO} addresses (latest ${
          hex(address)
        }), not reported one by one`,
      );
    }
  }

  #systemEvent(type: number, vcpu: number, detail?: string): void {
    // KVM_SYSTEM_EVENT_SHUTDOWN = 1, _RESET = 2; anything else (crash...) is an error.
    if (type === 1) this.#finish({ reason: "poweroff", vcpu });
    else if (type === 2) this.#finish({ reason: "reset", vcpu });
    else this.#finish({ reason: "error", vcpu, detail: detail ?? `system event ${type}` });
  }

  /**
   * Runs the machine until the guest resets or powers off, a vCPU fails, the
   * timeout passes or {@linkcode stop} is called. It first waits (on the
   * event loop) until every AP's worker runs; a worker that fails to start
   * rejects the promise with a `KvmError` saying why. Then the bootstrap vCPU
   * runs on this thread, synchronously: the event loop is blocked meanwhile
   * (use `poll` and kicks to interact). Can be called once.
   */
  async run(options: LinuxRunOptions = {}): Promise<MachineExit> {
    if (this.#running) {
      throw new KvmError("run Linux machine", Errno.EBUSY, "the machine already ran");
    }
    const { timeoutMs } = options;
    if (timeoutMs !== undefined && !(Number.isFinite(timeoutMs) && timeoutMs >= 0)) {
      throw new KvmError(
        "run Linux machine",
        Errno.EINVAL,
        `timeoutMs ${timeoutMs}: a finite ms count`,
      );
    }
    this.#running = true;
    const bsp = this.vcpus[0];
    bsp.adoptThread();
    try {
      // The run's bound is the bootstrap vCPU's watchdog (a timer that kicks this thread):
      // its run() then throws ETIMEDOUT, caught in the run loop.
      if (timeoutMs !== undefined) bsp.setWatchdog(Math.max(1, timeoutMs));
      // Workers starting while the guest runs disturb it (on the nested test host, a guest
      // once lost its timer interrupt), and Linux gives an AP 10 s to answer INIT/SIPI: the
      // bootstrap vCPU starts once every worker runs. Waiting on the event loop lets a
      // worker that fails to load report why at once.
      // A fixed start-up bound: the run's own timeout is for the guest (the watchdog ends it).
      await this.#aps.waitReady("run Linux machine", performance.now() + WORKER_START_TIMEOUT_MS);
      return this.#runBootstrapVcpu(bsp, options);
    } finally {
      if (timeoutMs !== undefined && !bsp.closed) bsp.setWatchdog(null);
      this.#aps.stop();
      const exit = this.#exit as MachineExit | null;
      if (exit?.reason === "timeout" && this.#aps.count > 0) {
        // The APs are out of KVM_RUN now (the stuck ones left out), so their registers can be read.
        exit.detail += this.#aps.describeStopped();
      }
      if (exit && exit.reason !== "reset" && exit.reason !== "poweroff") {
        for (const error of this.#aps.errors) exit.detail = `${exit.detail ?? ""}\n${error}`;
      }
    }
  }

  /** The run loop proper: the bootstrap vCPU on this thread, until something ends the run. */
  #runBootstrapVcpu(bsp: Vcpu, options: LinuxRunOptions): MachineExit {
    const poll = options.poll;
    const hasAps = this.#aps.count > 0;
    while (this.#exit === null) {
      let exit;
      try {
        exit = bsp.run();
      } catch (e) {
        if (!(e instanceof KvmError) || e.code !== "ETIMEDOUT") throw e;
        this.#finish({ reason: "timeout", vcpu: -1, detail: describeVcpu(bsp) });
        continue;
      }
      switch (exit.reason) {
        case "io":
          this.exitsByPort[exit.port]++;
          this.bus.handle(exit.direction, exit.port, exit.size, exit.count, exit.data);
          break;
        case "mmio":
          this.exitsByPort[0x10000]++;
          this.#mmio(exit.address, exit.isWrite, exit.data);
          break;
        case "interrupted":
        case "hlt":
          break;
        case "shutdown":
          this.#finish({
            reason: "tripleFault",
            vcpu: 0,
            detail: `vCPU 0: triple fault (KVM_EXIT_SHUTDOWN)\n${describeVcpu(bsp)}`,
          });
          break;
        case "systemEvent":
          this.#systemEvent(exit.type, 0, `vCPU 0: system event ${exit.type}`);
          break;
        case "internalError":
          if (completeUnemulated(exit, this.vm, bsp)) break;
          this.#finish({
            reason: "error",
            vcpu: 0,
            detail: `vCPU 0: KVM internal error, ${
              describeInternalError(exit, this.vm, bsp)
            } (data ${exit.data.map((d) => hex(d)).join(" ")})\n${describeVcpu(bsp)}`,
          });
          break;
        case "failEntry":
          this.#finish({
            reason: "error",
            vcpu: 0,
            detail: `vCPU 0: entry failed, hardware reason ${
              hex(exit.hardwareEntryFailureReason)
            }\n${describeVcpu(bsp)}`,
          });
          break;
        default:
          this.#finish({
            reason: "error",
            vcpu: 0,
            detail: `vCPU 0: unexpected exit ${exit.reason}\n${describeVcpu(bsp)}`,
          });
      }
      if (hasAps) this.#aps.serve(this.#apHandlers);
      if (poll) poll();
    }
    return this.#exit;
  }

  /** Closes the VM (and the Kvm object when the machine opened it). Idempotent. */
  close(): void {
    this.#aps.stop();
    this.vm.close();
    if (this.#ownsKvm) this.kvm.close();
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
