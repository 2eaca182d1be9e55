/**
 * A small PC that boots a Multiboot (v1) kernel, made for test programs such
 * as kvm-unit-tests: guest RAM, the in-kernel interrupt controllers and PIT,
 * a 16550A on COM1, the i8042 reset line, ACPI tables (RSDP, FADT with the
 * PM timer, MADT) with the PM timer, QEMU's `isa-debug-exit` port that
 * ends the run with a status, and one thread per vCPU (the bootstrap vCPU on
 * the calling thread; each application processor on a Worker, started by the
 * guest with INIT/SIPI through the in-kernel LAPIC, its port I/O served here
 * through a shared mailbox as in `LinuxMachine`).
 *
 * The CPU offered is the KVM's supported CPUID as it is (like QEMU's
 * `-cpu host`), with per-vCPU APIC ids and KVM's paravirtual leaves.
 *
 * @example
 * ```ts
 * import { MultibootMachine } from "@deno-kvm/kvm/vmm";
 * using machine = MultibootMachine.create({
 *   kernel: Deno.readFileSync("x86/smptest.flat"),
 *   cmdline: "x86/smptest.flat",
 *   modules: [{ data: new TextEncoder().encode("NR_CPUS=2\nTEST_DEVICE=0\n") }],
 *   memorySize: 256 << 20,
 *   cpus: 2,
 *   serialOutput: (b) => Deno.stdout.writeSync(new Uint8Array([b])),
 * });
 * const exit = await machine.run({ timeoutMs: 30_000 });
 * console.log(exit.reason, exit.status); // debugExit 1
 * ```
 *
 * @module
 */

import type { CpuidEntry } from "../abi/cpuid.ts";
import { Errno, KvmError } from "../errors.ts";
import { AcpiPmTimer } from "../devices/acpi_pm_timer.ts";
import { DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, DebugExit } from "../devices/debug_exit.ts";
import { IoBus, type UnhandledAccess } from "../devices/io_bus.ts";
import { registerLegacyDevices } from "../devices/legacy.ts";
import { COM1_IRQ, COM1_PORT, Uart16550 } from "../devices/uart_16550.ts";
import { hex } from "../kvm/constants.ts";
import { describeInternalError } from "../kvm/dump.ts";
import { Kvm } from "../kvm/kvm.ts";
import type { Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import { type ApHandlers, ApWorkers } from "./ap_runtime.ts";
import { ACPI_PM_TIMER_PORT, ACPI_TABLES_ADDRESS, buildAcpiTables } from "./acpi.ts";
import { type CpuProbeReport, probeCpu } from "./cpu_probe.ts";
import { describeVcpu } from "./mailbox.ts";
import { setupProtectedMode } from "./modes.ts";
import {
  MULTIBOOT_BOOTLOADER_MAGIC,
  type MultibootBootPlan,
  type MultibootModule,
  planMultibootBoot,
  writeMultibootBoot,
} from "./multiboot.ts";
import { setupPlatform, setupVcpu } from "./platform.ts";
import { completeUnemulated } from "./unemulated.ts";

/** Options of {@linkcode MultibootMachine.create}. */
export interface MultibootMachineOptions {
  /** The Multiboot kernel (ELF, or any image with the a.out-kludge header fields). */
  kernel: Uint8Array;
  /** The command line; by convention its first word names the kernel. */
  cmdline?: string;
  /** Modules (kvm-unit-tests: its environment file, first). */
  modules?: readonly MultibootModule[];
  /** Guest RAM in bytes (a multiple of 2 MiB). */
  memorySize: number;
  /** vCPUs, 1 to 64 (default 1). */
  cpus?: number;
  /** Receives each byte the guest sends on COM1. */
  serialOutput?: (byte: number) => void;
  /** Called once per unclaimed port or MMIO address the guest touches. */
  onUnhandled?: (what: string) => void;
  /** Adjusts each vCPU's CPUID last (gets the list and the vCPU id, returns the list to set). */
  cpuid?: (entries: CpuidEntry[], vcpuId: number) => CpuidEntry[];
  /**
   * KVM paravirtual features to hide (bits of leaf 0x40000001 EAX); default 0:
   * all of them offered, as QEMU's `-cpu host` does.
   */
  hiddenKvmFeatures?: number;
  /**
   * Hide the CPU features this KVM cannot execute (see `probeCpu`); default
   * false: the supported CPUID as it is, as QEMU's `-cpu host` offers it.
   */
  probeCpu?: boolean;
  /** The KVM system object to use (default: opens `/dev/kvm`, closed with the machine). */
  kvm?: Kvm;
}

/** Why {@linkcode MultibootMachine.run} returned. */
export type MultibootExitReason =
  /** The guest wrote to the debug-exit port: `status` holds `code << 1 | 1`. */
  | "debugExit"
  /** The guest reset the machine (keyboard controller) or KVM reported a reset event. */
  | "reset"
  /** The guest asked to power off (a system event). */
  | "poweroff"
  /** A triple fault (`KVM_EXIT_SHUTDOWN`; some KVMs never report one: then a timeout). */
  | "tripleFault"
  /** KVM could not go on (internal error, failed entry, unexpected exit). */
  | "error"
  /** {@linkcode MultibootMachine.stop} was called. */
  | "stopped"
  /** The run's `timeoutMs` passed. */
  | "timeout";

/** How a run ended. */
export interface MultibootExit {
  /** Why. */
  reason: MultibootExitReason;
  /** With `"debugExit"`: the exit status, `code << 1 | 1`. */
  status?: number;
  /** The vCPU that ended it (-1 when none did). */
  vcpu: number;
  /** What happened, for the error reasons, with a register dump. */
  detail?: string;
}

/** Options of {@linkcode MultibootMachine.run}. */
export interface MultibootRunOptions {
  /** Ends the run with reason `"timeout"` after this many milliseconds. */
  timeoutMs?: number;
}

const MiB = 1024 * 1024;
/** How long {@linkcode MultibootMachine.run} waits for its AP workers to start. */
const WORKER_START_TIMEOUT_MS = 60_000;

/** A virtual PC running a Multiboot kernel. */
export class MultibootMachine {
  /** The KVM system object. */
  readonly kvm: Kvm;
  /** The VM. */
  readonly vm: Vm;
  /** The port I/O bus with the platform's devices. */
  readonly bus: IoBus;
  /** COM1. */
  readonly serial: Uart16550;
  /** The debug-exit port. */
  readonly debugExit: DebugExit;
  /** The boot layout decided before the VM was created. */
  readonly plan: MultibootBootPlan;
  /** vCPUs by id; 0 is the bootstrap processor. */
  readonly vcpus: readonly Vcpu[];
  /** What the CPU probe found (undefined unless `probeCpu: true`). */
  readonly cpuProbe?: CpuProbeReport;
  #ownsKvm: boolean;
  #aps = new ApWorkers();
  #exit: MultibootExit | null = null;
  #onUnhandled?: (what: string) => void;
  #seenMmio = new Set<number>();
  #running = false;

  private constructor(
    kvm: Kvm,
    ownsKvm: boolean,
    plan: MultibootBootPlan,
    options: MultibootMachineOptions,
    probe: CpuProbeReport | undefined,
  ) {
    this.kvm = kvm;
    this.#ownsKvm = ownsKvm;
    this.plan = plan;
    this.cpuProbe = probe;
    this.#onUnhandled = options.onUnhandled;
    const cpus = options.cpus ?? 1;
    const vm = this.vm = kvm.createVm();
    try {
      setupPlatform(vm);
      const ram = vm.allocateMemory(options.memorySize);
      vm.setUserMemoryRegion({
        slot: 0,
        guestPhysAddr: 0,
        memorySize: plan.lowMemorySize,
        memory: ram,
      });
      if (plan.highMemorySize > 0) {
        vm.setUserMemoryRegion({
          slot: 1,
          guestPhysAddr: plan.highMemoryStart,
          memorySize: plan.highMemorySize,
          memory: ram,
          offset: plan.lowMemorySize,
        });
      }
      writeMultibootBoot(
        (address, bytes) => vm.writeGuest(address, bytes),
        plan,
        options.modules ?? [],
        {
          memoryIsZero: true,
        },
      );

      // ACPI: RSDP in the BIOS area (reserved in the memory map), RSDT, FADT (PM timer), MADT.
      vm.writeGuest(ACPI_TABLES_ADDRESS, buildAcpiTables({ cpus }));
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
      this.debugExit = new DebugExit((status) =>
        this.#finish({ reason: "debugExit", status, vcpu: -1 })
      );
      this.bus.register(DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, this.debugExit);
      this.bus.register(ACPI_PM_TIMER_PORT, 4, new AcpiPmTimer());
      registerLegacyDevices(this.bus, {
        onReset: () => this.#finish({ reason: "reset", vcpu: -1 }),
      });

      const supported = kvm.getSupportedCpuid();
      const tscDeadline = kvm.checkExtension("TSC_DEADLINE_TIMER") > 0;
      const vcpus: Vcpu[] = [];
      for (let id = 0; id < cpus; id++) {
        const vcpu = vm.createVcpu(id);
        setupVcpu(vcpu, cpus, supported, {
          tscDeadline,
          probe,
          hiddenKvmFeatures: options.hiddenKvmFeatures ?? 0,
          adjust: options.cpuid,
        });
        vcpus.push(vcpu);
      }
      this.vcpus = vcpus;
      const bsp = vcpus[0];
      // Multiboot machine state (spec 3.2): flat 32-bit protected mode, paging off,
      // EAX = the loader magic, EBX = the information structure, interrupts off.
      setupProtectedMode(vm, bsp, { entry: plan.entry });
      bsp.setRegs(
        bsp.getRegs().assign({
          rax: BigInt(MULTIBOOT_BOOTLOADER_MAGIC),
          rbx: BigInt(plan.infoAddress),
          rflags: 2n,
        }),
      );
      this.#aps.start(vcpus.slice(1), bsp.kickTarget, kvm.vcpuMmapSize());
    } catch (e) {
      this.#aps.stop();
      vm.close();
      throw e;
    }
  }

  /**
   * Checks the kernel, modules and memory size (a `MultibootError` before any
   * VM exists when something cannot boot), then builds the machine with the
   * kernel, information structure and modules in RAM and the bootstrap vCPU
   * at the kernel's entry.
   */
  static create(options: MultibootMachineOptions): MultibootMachine {
    const cpus = options.cpus ?? 1;
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > 64) {
      throw new KvmError("create Multiboot machine", Errno.EINVAL, `cpus ${cpus}: 1 to 64`);
    }
    if (options.memorySize % (2 * MiB) !== 0) {
      throw new KvmError(
        "create Multiboot machine",
        Errno.EINVAL,
        `memory size ${options.memorySize} is not a multiple of 2 MiB`,
      );
    }
    const plan = planMultibootBoot(options.kernel, {
      memorySize: options.memorySize,
      cmdline: options.cmdline,
      modules: options.modules,
    });
    const ownsKvm = options.kvm === undefined;
    const kvm = options.kvm ?? Kvm.open();
    try {
      const probe = options.probeCpu === true ? probeCpu(kvm) : undefined;
      return new MultibootMachine(kvm, ownsKvm, plan, options, probe);
    } catch (e) {
      if (ownsKvm) kvm.close();
      throw e;
    }
  }

  /** Ends {@linkcode run} after the current exit, with reason `"stopped"`. */
  stop(): void {
    this.#finish({ reason: "stopped", vcpu: -1 });
  }

  #finish(exit: MultibootExit): void {
    if (!this.#exit) this.#exit = exit;
  }

  /** Names the vCPU whose port write just ended the run through the debug-exit device. */
  #attribute(vcpu: number): void {
    const exit = this.#exit as MultibootExit | null;
    if (exit?.reason === "debugExit" && exit.vcpu === -1) exit.vcpu = vcpu;
  }

  /** The APs' requests, served on the bootstrap vCPU's thread by the same devices. */
  #apHandlers: ApHandlers = {
    io: (vcpu, direction, port, size, count, data) => {
      this.bus.handle(direction, port, size, count, data);
      this.#attribute(vcpu);
    },
    mmio: (_vcpu, address, isWrite, data) => this.#mmio(address, isWrite, data),
    tripleFault: (vcpu, detail) => this.#finish({ reason: "tripleFault", vcpu, detail }),
    systemEvent: (vcpu, type, detail) => this.#systemEvent(type, vcpu, detail),
    error: (vcpu, detail) => this.#finish({ reason: "error", vcpu, detail }),
  };

  /** No MMIO devices: reads return all-ones, writes are dropped, each address reported once. */
  #mmio(address: number, isWrite: boolean, data: Uint8Array): void {
    if (!isWrite) data.fill(0xff);
    if (!this.#seenMmio.has(address)) {
      this.#seenMmio.add(address);
      this.#onUnhandled?.(`MMIO ${isWrite ? "write" : "read"} at ${hex(address)}`);
    }
  }

  #systemEvent(type: number, vcpu: number, detail?: string): void {
    // KVM_SYSTEM_EVENT_SHUTDOWN = 1, _RESET = 2; anything else (crash...) is an error.
    if (type === 1) this.#finish({ reason: "poweroff", vcpu });
    else if (type === 2) this.#finish({ reason: "reset", vcpu });
    else this.#finish({ reason: "error", vcpu, detail: detail ?? `system event ${type}` });
  }

  /**
   * Runs the machine until the guest writes the debug-exit port, resets or
   * powers off, a vCPU fails, the timeout passes or {@linkcode stop} is
   * called. It first waits (on the event loop) until every AP's worker runs;
   * then the bootstrap vCPU runs on this thread, synchronously, bounded by its
   * watchdog (`Vcpu.setWatchdog`) when `timeoutMs` is given. Can be called once.
   */
  async run(options: MultibootRunOptions = {}): Promise<MultibootExit> {
    if (this.#running) {
      throw new KvmError("run Multiboot machine", Errno.EBUSY, "the machine already ran");
    }
    const { timeoutMs } = options;
    if (timeoutMs !== undefined && !(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
      throw new KvmError(
        "run Multiboot machine",
        Errno.EINVAL,
        `timeoutMs ${timeoutMs}: a positive ms count`,
      );
    }
    this.#running = true;
    const bsp = this.vcpus[0];
    bsp.adoptThread();
    try {
      await this.#aps.waitReady(
        "run Multiboot machine",
        performance.now() + WORKER_START_TIMEOUT_MS,
      );
      if (timeoutMs !== undefined) bsp.setWatchdog(timeoutMs);
      return this.#runBootstrapVcpu(bsp);
    } finally {
      try {
        bsp.setWatchdog(null);
      } catch {
        // Closed: nothing to disarm.
      }
      this.#aps.stop();
      const exit = this.#exit as MultibootExit | null;
      if (
        exit && exit.reason !== "debugExit" && exit.reason !== "reset" && exit.reason !== "poweroff"
      ) {
        for (const error of this.#aps.errors) exit.detail = `${exit.detail ?? ""}\n${error}`;
      }
    }
  }

  #runBootstrapVcpu(bsp: Vcpu): MultibootExit {
    const hasAps = this.#aps.count > 0;
    while (this.#exit === null) {
      let exit;
      try {
        exit = bsp.run();
      } catch (e) {
        if (e instanceof KvmError && e.errno === Errno.ETIMEDOUT) {
          this.#finish({ reason: "timeout", vcpu: -1, detail: e.message });
          break;
        }
        throw e;
      }
      switch (exit.reason) {
        case "io":
          this.bus.handle(exit.direction, exit.port, exit.size, exit.count, exit.data);
          this.#attribute(0);
          break;
        case "mmio":
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
            detail: `vCPU 0: KVM internal error, ${describeInternalError(exit, this.vm, bsp)}\n${
              describeVcpu(bsp)
            }`,
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
    }
    return this.#exit!;
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
