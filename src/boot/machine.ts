/**
 * The PC both machines are made of ({@linkcode PcMachine}): guest RAM in a
 * low and a high slot, the in-kernel interrupt controllers and PIT, a port
 * bus and an MMIO bus (`Bus`) with a 16550A on COM1 and the legacy PC
 * devices, one vCPU per thread (the bootstrap vCPU on the calling thread,
 * each AP on a Worker through `ApWorkers`), one exit dispatch for every vCPU,
 * and one exit policy. `LinuxMachine` and `MultibootMachine` add only what
 * differs: the boot image, the tables, a few devices and the entry state.
 * Internal to the machines.
 *
 * Every device model lives on the calling thread. An AP's port I/O and MMIO
 * exits are handed over through its mailbox and served here by the same
 * `Bus.handlePio` / `Bus.handleMmio` as the bootstrap vCPU's.
 *
 * @module
 */

import type { CpuidEntry } from "../abi/cpuid.ts";
import { Errno, KvmError } from "../errors.ts";
import { Bus, describeUnhandled } from "../devices/bus.ts";
import { registerLegacyDevices } from "../devices/legacy.ts";
import { COM1_IRQ, COM1_PORT, Uart16550 } from "../devices/uart_16550.ts";
import { hex } from "../kvm/constants.ts";
import { describeInternalError } from "../kvm/dump.ts";
import { Kvm } from "../kvm/kvm.ts";
import type { Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import { type ApHandlers, ApWorkers, describeVcpu } from "./ap_runtime.ts";
import type { CpuProbeReport } from "./cpu_probe.ts";
import { setupPlatform, setupVcpu } from "./platform.ts";
import { completeUnemulated } from "./unemulated.ts";

/** Why a machine's run ended. */
export type PcExitReason =
  /** The guest wrote to the debug-exit port (`MultibootMachine`): `status` holds `code << 1 | 1`. */
  | "debugExit"
  /** The guest reset the machine (keyboard controller, a reboot) or KVM reported a reset event. */
  | "reset"
  /** The guest asked to power off (a system event). */
  | "poweroff"
  /** A triple fault (`KVM_EXIT_SHUTDOWN`; some KVMs never report one: then a timeout). */
  | "tripleFault"
  /** KVM could not go on (internal error, failed entry, unexpected exit). */
  | "error"
  /** The machine's `stop()` was called. */
  | "stopped"
  /** The run's `timeoutMs` passed. */
  | "timeout";

/** How a machine's run ended. */
export interface PcExit {
  /** Why. */
  reason: PcExitReason;
  /** With `"debugExit"`: the exit status, `code << 1 | 1`. */
  status?: number;
  /**
   * The vCPU that ended it: the one whose exit or access (a keyboard-controller
   * reset, a debug-exit write) did; -1 when none did (a timeout, `stop()`).
   */
  vcpu: number;
  /** What happened, for the error reasons, with a register dump. */
  detail?: string;
}

/** The options both machines take. */
export interface PcMachineOptions {
  /** Guest RAM in bytes (a multiple of 2 MiB). */
  memorySize: number;
  /** vCPUs, 1 to 64 (default 1). */
  cpus?: number;
  /** Receives each byte the guest sends on COM1. */
  serialOutput?: (byte: number) => void;
  /**
   * Called for unclaimed ports and MMIO addresses: the first 256 distinct ones
   * of each bus once each, then a count at each power of two (see `Bus`).
   */
  onUnhandled?: (what: string) => void;
  /**
   * Adjusts each vCPU's CPUID after the platform's own changes (for example to
   * hide a paravirtual feature): gets the list and the vCPU id, returns the list to set.
   */
  cpuid?: (entries: CpuidEntry[], vcpuId: number) => CpuidEntry[];
  /** The KVM system object to use (default: opens `/dev/kvm`, closed with the machine). */
  kvm?: Kvm;
  /**
   * Told as each step of building and starting the machine ends (the VM, RAM, the boot image
   * written, the devices, the vCPUs, the AP workers started and ready): what `boot_linux
   * --trace` prints.
   */
  onPhase?: (what: string) => void;
}

/** What {@linkcode PcMachine} is built from. */
export interface PcMachineConfig
  extends
    Pick<PcMachineOptions, "memorySize" | "serialOutput" | "onUnhandled" | "cpuid" | "onPhase"> {
  /** The machine's name in errors: `"Linux machine"` gives `"run Linux machine"`. */
  name: string;
  /** The KVM system object, and whether the machine closes it. */
  kvm: Kvm;
  /** Whether {@linkcode PcMachine.close} closes `kvm`. */
  ownsKvm: boolean;
  /** vCPUs (checked by {@linkcode checkMachineSize}). */
  cpus: number;
  /** Transparent huge pages for RAM (see `GuestMemoryOptions.hugePages`). */
  hugePages?: boolean;
  /** RAM mapped at 0. */
  lowMemorySize: number;
  /** Where the rest of RAM is mapped (above the 32-bit MMIO hole). */
  highMemoryStart: number;
  /** RAM mapped at `highMemoryStart` (0: none). */
  highMemorySize: number;
  /** A CPU probe whose unusable features are hidden. */
  probe?: CpuProbeReport;
  /** KVM paravirtual features to hide (see `vcpuCpuid`). */
  hiddenKvmFeatures?: number;
  /** Writes the boot image and the firmware tables into RAM (zeroed before). */
  writeMemory(vm: Vm): void;
  /** Adds the machine's own devices (the COM1 UART and the legacy ones are in already). */
  addDevices?(machine: PcMachine): void;
  /** Sets the bootstrap vCPU's entry state. */
  enter(vm: Vm, bsp: Vcpu): void;
}

/** Options of {@linkcode PcMachine.run}. */
export interface PcRunOptions {
  /** Ends the run with reason `"timeout"` after this many milliseconds (0 counts as 1). */
  timeoutMs?: number;
  /** Called on the run loop's thread after every exit of the bootstrap vCPU (kicks included). */
  poll?: () => void;
}

const MiB = 1024 * 1024;
/** How long {@linkcode PcMachine.run} waits for its AP workers to start (the guest's own bound is `timeoutMs`). */
const WORKER_START_TIMEOUT_MS = 60_000;
/** `KVM_SYSTEM_EVENT_SHUTDOWN` and `_RESET`; other types (a crash...) are errors. */
const SYSTEM_EVENT_SHUTDOWN = 1;
const SYSTEM_EVENT_RESET = 2;

/**
 * Checks a machine's vCPU count (1 to 64) and memory size (a multiple of
 * 2 MiB): a `KvmError` (`EINVAL`, operation `"create <name>"`) before anything
 * is opened.
 */
export function checkMachineSize(name: string, cpus: number, memorySize: number): void {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 64) {
    throw new KvmError(`create ${name}`, Errno.EINVAL, `cpus ${cpus}: 1 to 64`);
  }
  if (memorySize % (2 * MiB) !== 0) {
    throw new KvmError(
      `create ${name}`,
      Errno.EINVAL,
      `memory size ${memorySize} is not a multiple of 2 MiB`,
    );
  }
}

/**
 * Calls `build` with `given`, or with a `Kvm` opened for it (closed again
 * when `build` throws; else the machine owns it: `ownsKvm` true).
 */
export function withKvm<T>(given: Kvm | undefined, build: (kvm: Kvm, ownsKvm: boolean) => T): T {
  const kvm = given ?? Kvm.open();
  try {
    return build(kvm, given === undefined);
  } catch (e) {
    if (given === undefined) kvm.close();
    throw e;
  }
}

/** The PC under both machines. */
export class PcMachine {
  /** The KVM system object. */
  readonly kvm: Kvm;
  /** The VM. */
  readonly vm: Vm;
  /** The port I/O bus. */
  readonly pio: Bus;
  /** The MMIO bus (empty unless a machine adds devices: accesses read as all-ones). */
  readonly mmio: Bus;
  /** COM1. */
  readonly serial: Uart16550;
  /** vCPUs by id; 0 is the bootstrap processor. */
  readonly vcpus: readonly Vcpu[];
  /** Port I/O exits by port, of every vCPU; index 0x10000 counts MMIO exits. */
  readonly exitsByPort: Uint32Array = new Uint32Array(0x10001);
  #name: string;
  #ownsKvm: boolean;
  #aps = new ApWorkers();
  #exit: PcExit | null = null;
  #running = false;
  #phase: (what: string) => void;

  /** Builds the machine (see {@linkcode PcMachineConfig}); on failure closes what it made. */
  constructor(config: PcMachineConfig) {
    this.kvm = config.kvm;
    this.#name = config.name;
    this.#ownsKvm = config.ownsKvm;
    const { cpus, onUnhandled } = config;
    const phase = this.#phase = config.onPhase ?? (() => {});
    let start = performance.now();
    const step = (what: string) => {
      const now = performance.now();
      phase(`${what} (${Math.round(now - start)} ms)`);
      start = now;
    };
    const vm = this.vm = config.kvm.createVm();
    try {
      setupPlatform(vm);
      step("VM and interrupt controllers created");
      const ram = vm.allocateMemory(config.memorySize, { hugePages: config.hugePages });
      vm.setUserMemoryRegion({
        slot: 0,
        guestPhysAddr: 0,
        memorySize: config.lowMemorySize,
        memory: ram,
      });
      if (config.highMemorySize > 0) {
        vm.setUserMemoryRegion({
          slot: 1,
          guestPhysAddr: config.highMemoryStart,
          memorySize: config.highMemorySize,
          memory: ram,
          offset: config.lowMemorySize,
        });
      }
      step("guest RAM mapped");
      config.writeMemory(vm);
      step("boot image and tables written");

      const report = onUnhandled &&
        ((a: Parameters<typeof describeUnhandled>[0]) => onUnhandled(describeUnhandled(a)));
      this.pio = new Bus({ space: "pio", onUnhandled: report });
      this.mmio = new Bus({ space: "mmio", onUnhandled: report });
      this.serial = new Uart16550({
        output: config.serialOutput,
        irq: (level) => vm.setIrqLine(COM1_IRQ, level),
      });
      this.pio.insert(COM1_PORT, 8, this.serial);
      registerLegacyDevices(this.pio, {
        onReset: () => this.finish({ reason: "reset", vcpu: -1 }),
      });
      config.addDevices?.(this);
      step("devices added");

      const supported = config.kvm.getSupportedCpuid();
      const tscDeadline = config.kvm.checkExtension("TSC_DEADLINE_TIMER") > 0;
      const vcpus: Vcpu[] = [];
      for (let id = 0; id < cpus; id++) {
        const vcpu = vm.createVcpu(id);
        setupVcpu(vcpu, cpus, supported, {
          tscDeadline,
          probe: config.probe,
          hiddenKvmFeatures: config.hiddenKvmFeatures,
          adjust: config.cpuid,
        });
        vcpus.push(vcpu);
      }
      this.vcpus = vcpus;
      step("vCPUs created, CPUID set");
      const bsp = vcpus[0];
      config.enter(vm, bsp);
      step("entry state set");
      // Workers take a while to load: start them now, while the caller finishes its setup.
      this.#aps.start(vcpus.slice(1), bsp.kickTarget, config.kvm.vcpuMmapSize());
      step("AP workers started");
    } catch (e) {
      this.#aps.stop();
      vm.close();
      throw e;
    }
  }

  /**
   * Ends the run with `exit` after the current exit (the first reason wins).
   * A device that ends the run during a vCPU's access gives `vcpu: -1`; the
   * dispatch then names that vCPU.
   */
  finish(exit: PcExit): void {
    if (!this.#exit) this.#exit = exit;
  }

  /** Ends {@linkcode run} after the current exit, with reason `"stopped"`. */
  stop(): void {
    this.finish({ reason: "stopped", vcpu: -1 });
  }

  /** Names `vcpu` in an exit a device just made (a debug-exit write, a keyboard-controller reset). */
  #attribute(wasRunning: boolean, vcpu: number): void {
    const exit = this.#exit;
    if (wasRunning && exit !== null && exit.vcpu === -1) exit.vcpu = vcpu;
  }

  #systemEvent(type: number, vcpu: number, detail?: string): void {
    if (type === SYSTEM_EVENT_SHUTDOWN) this.finish({ reason: "poweroff", vcpu });
    else if (type === SYSTEM_EVENT_RESET) this.finish({ reason: "reset", vcpu });
    else this.finish({ reason: "error", vcpu, detail: detail ?? `system event ${type}` });
  }

  /**
   * The one exit dispatch: the bootstrap vCPU's loop calls it for its own
   * exits (vCPU 0) and `ApWorkers.serve` for the APs', on this thread. Made
   * once per machine; nothing in it allocates per exit.
   */
  #dispatch: ApHandlers = {
    io: (vcpu, direction, port, size, count, data) => {
      const running = this.#exit === null;
      this.pio.handlePio(direction, port, size, count, data);
      this.exitsByPort[port]++;
      this.#attribute(running, vcpu);
    },
    mmio: (vcpu, address, isWrite, data) => {
      const running = this.#exit === null;
      this.mmio.handleMmio(address, isWrite, data);
      this.exitsByPort[0x10000]++;
      this.#attribute(running, vcpu);
    },
    tripleFault: (vcpu, detail) => this.finish({ reason: "tripleFault", vcpu, detail }),
    systemEvent: (vcpu, type, detail) => this.#systemEvent(type, vcpu, detail),
    error: (vcpu, detail) => this.finish({ reason: "error", vcpu, detail }),
  };

  /**
   * Runs the machine until something ends the run. It first waits (on the
   * event loop) until every AP's worker runs (a worker that fails to start
   * rejects with a `KvmError` saying why): workers starting while the guest
   * runs disturb it, and Linux gives an AP 10 s to answer INIT/SIPI. Then
   * the bootstrap vCPU runs on this thread, synchronously, bounded by its
   * watchdog (`Vcpu.setWatchdog`) when `timeoutMs` is given. Can be called once.
   */
  async run(options: PcRunOptions = {}): Promise<PcExit> {
    const operation = `run ${this.#name}`;
    if (this.#running) throw new KvmError(operation, Errno.EBUSY, "the machine already ran");
    const { timeoutMs } = options;
    if (timeoutMs !== undefined && !(Number.isFinite(timeoutMs) && timeoutMs >= 0)) {
      throw new KvmError(operation, Errno.EINVAL, `timeoutMs ${timeoutMs}: a finite ms count`);
    }
    this.#running = true;
    const bsp = this.vcpus[0];
    bsp.adoptThread();
    try {
      await this.#aps.waitReady(operation, performance.now() + WORKER_START_TIMEOUT_MS);
      if (this.#aps.count > 0) this.#phase("AP workers ready");
      // The watchdog kicks this thread when the time is up: bsp.run() then throws ETIMEDOUT.
      if (timeoutMs !== undefined) bsp.setWatchdog(Math.max(1, timeoutMs));
      return this.#runBootstrapVcpu(bsp, options.poll);
    } finally {
      if (timeoutMs !== undefined && !bsp.closed) bsp.setWatchdog(null);
      this.#aps.stop();
      const exit = this.#exit as PcExit | null;
      if (exit?.reason === "timeout" && this.#aps.count > 0) {
        // The APs are out of KVM_RUN now (the stuck ones left out), so their registers can be read.
        exit.detail += this.#aps.describeStopped();
      }
      if (
        exit && exit.reason !== "debugExit" && exit.reason !== "reset" && exit.reason !== "poweroff"
      ) {
        for (const error of this.#aps.errors) exit.detail = `${exit.detail ?? ""}\n${error}`;
      }
    }
  }

  /** The run loop proper: the bootstrap vCPU on this thread, until something ends the run. */
  #runBootstrapVcpu(bsp: Vcpu, poll: (() => void) | undefined): PcExit {
    const hasAps = this.#aps.count > 0;
    const dispatch = this.#dispatch;
    while (this.#exit === null) {
      let exit;
      try {
        exit = bsp.run();
      } catch (e) {
        if (!(e instanceof KvmError) || e.errno !== Errno.ETIMEDOUT) throw e;
        this.finish({ reason: "timeout", vcpu: -1, detail: describeVcpu(bsp) });
        break;
      }
      switch (exit.reason) {
        case "io":
          dispatch.io(0, exit.direction, exit.port, exit.size, exit.count, exit.data);
          break;
        case "mmio":
          dispatch.mmio(0, exit.address, exit.isWrite, exit.data);
          break;
        case "interrupted":
        case "hlt":
          break;
        case "shutdown":
          dispatch.tripleFault(0, `vCPU 0: triple fault (KVM_EXIT_SHUTDOWN)\n${describeVcpu(bsp)}`);
          break;
        case "systemEvent":
          dispatch.systemEvent(0, exit.type, `vCPU 0: system event ${exit.type}`);
          break;
        case "internalError":
          if (completeUnemulated(exit, this.vm, bsp)) break;
          dispatch.error(
            0,
            `vCPU 0: KVM internal error, ${describeInternalError(exit, this.vm, bsp)} (data ${
              exit.data.map((d) => hex(d)).join(" ")
            })\n${describeVcpu(bsp)}`,
          );
          break;
        case "failEntry":
          dispatch.error(
            0,
            `vCPU 0: entry failed, hardware reason ${hex(exit.hardwareEntryFailureReason)}\n${
              describeVcpu(bsp)
            }`,
          );
          break;
        default:
          dispatch.error(0, `vCPU 0: unexpected exit ${exit.reason}\n${describeVcpu(bsp)}`);
      }
      if (hasAps) this.#aps.serve(dispatch);
      if (poll) poll();
    }
    return this.#exit!;
  }

  /** Stops the APs, closes the VM (and the Kvm object when the machine owns it). Idempotent. */
  close(): void {
    this.#aps.stop();
    this.vm.close();
    if (this.#ownsKvm) this.kvm.close();
  }
}
