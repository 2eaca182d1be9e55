/**
 * A small PC that boots a Multiboot (v1) kernel, made for test programs such
 * as kvm-unit-tests: guest RAM, the in-kernel interrupt controllers and PIT,
 * a 16550A on COM1, the i8042 reset line, ACPI tables (RSDP, FADT, MADT,
 * FACS) with the PM timer and the PM1 registers (S3 sleep, resumed at the
 * FACS's waking vector when the RTC alarm fires; S4/S5 power off), the
 * 8259s at a BIOS's vectors, QEMU's `isa-debug-exit` port that ends the run
 * with a status and its `pc-testdev` (IRQ lines at 0x2000, the 0xe0
 * register, 64 KiB of MMIO memory at 0xff000000), and one thread per vCPU (the bootstrap vCPU on
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

import { AcpiPm1, type AcpiSleepState, Pm1Event } from "../devices/acpi_pm1.ts";
import { AcpiPmTimer } from "../devices/acpi_pm_timer.ts";
import type { Bus } from "../devices/bus.ts";
import { DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, DebugExit } from "../devices/debug_exit.ts";
import { CmosRtc } from "../devices/legacy.ts";
import {
  PC_TESTDEV_IOMEM_ADDRESS,
  PC_TESTDEV_IOMEM_SIZE,
  PC_TESTDEV_IRQ_LINES,
  PC_TESTDEV_IRQ_PORT,
  PC_TESTDEV_PORT,
  PC_TESTDEV_PORT_SIZE,
  PcTestdevIomem,
  PcTestdevIrq,
  PcTestdevPort,
} from "../devices/pc_testdev.ts";
import type { Uart16550 } from "../devices/uart_16550.ts";
import type { Kvm } from "../kvm/kvm.ts";
import type { Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import {
  ACPI_PM1_EVENT_PORT,
  ACPI_PM_TIMER_PORT,
  ACPI_SCI_IRQ,
  ACPI_TABLES_ADDRESS,
  acpiLayout,
  buildAcpiTables,
} from "./acpi.ts";
import { type CpuProbeReport, probeCpu } from "./cpu_probe.ts";
import {
  facsWakingVector,
  programPicsLikeBios,
  resumeAtWakingVector,
  rtcAlarmDelayMs,
} from "./firmware.ts";
import {
  checkMachineSize,
  type PcExit,
  type PcExitReason,
  PcMachine,
  type PcMachineOptions,
  withKvm,
} from "./machine.ts";
import { setupProtectedMode } from "./modes.ts";
import {
  MULTIBOOT_BOOTLOADER_MAGIC,
  type MultibootBootPlan,
  type MultibootModule,
  planMultibootBoot,
  writeMultibootBoot,
} from "./multiboot.ts";

/** Options of {@linkcode MultibootMachine.create}. */
export interface MultibootMachineOptions extends PcMachineOptions {
  /** The Multiboot kernel (ELF, or any image with the a.out-kludge header fields). */
  kernel: Uint8Array;
  /** The command line; by convention its first word names the kernel. */
  cmdline?: string;
  /** Modules (kvm-unit-tests: its environment file, first). */
  modules?: readonly MultibootModule[];
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
}

/** Why {@linkcode MultibootMachine.run} returned: any {@linkcode PcExitReason}. */
export type MultibootExitReason = PcExitReason;

/** How a run of {@linkcode MultibootMachine} ended. */
export type MultibootExit = PcExit;

/** Options of {@linkcode MultibootMachine.run}. */
export interface MultibootRunOptions {
  /** Ends the run with reason `"timeout"` after this many milliseconds. */
  timeoutMs?: number;
}

/** A virtual PC running a Multiboot kernel. */
export class MultibootMachine {
  /** The KVM system object. */
  readonly kvm: Kvm;
  /** The VM. */
  readonly vm: Vm;
  /** The port I/O bus with the platform's devices. */
  readonly bus: Bus;
  /** The MMIO bus (no devices yet: accesses read as all-ones). */
  readonly mmio: Bus;
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
  /** The ACPI PM1a event and control registers (sleep requests). */
  readonly pm1: AcpiPm1;
  #machine: PcMachine;
  #facs: number;
  #sleep: AcpiSleepState | null = null;
  #deadline = Infinity;
  #afterExit = () => {
    if (this.#sleep !== null) this.#sleepAndWake();
  };

  private constructor(
    machine: PcMachine,
    debugExit: DebugExit,
    pm1: AcpiPm1,
    plan: MultibootBootPlan,
    probe: CpuProbeReport | undefined,
  ) {
    this.#machine = machine;
    this.kvm = machine.kvm;
    this.vm = machine.vm;
    this.bus = machine.pio;
    this.mmio = machine.mmio;
    this.serial = machine.serial;
    this.vcpus = machine.vcpus;
    this.debugExit = debugExit;
    this.plan = plan;
    this.cpuProbe = probe;
    this.pm1 = pm1;
    this.#facs = acpiLayout({ cpus: machine.vcpus.length }).facs;
  }

  /**
   * Checks the kernel, modules and memory size (a `MultibootError` before any
   * VM exists when something cannot boot), then builds the machine with the
   * kernel, information structure and modules in RAM and the bootstrap vCPU
   * at the kernel's entry.
   */
  static create(options: MultibootMachineOptions): MultibootMachine {
    const cpus = options.cpus ?? 1;
    checkMachineSize("Multiboot machine", cpus, options.memorySize);
    const plan = planMultibootBoot(options.kernel, {
      memorySize: options.memorySize,
      cmdline: options.cmdline,
      modules: options.modules,
    });
    return withKvm(options.kvm, (kvm, ownsKvm) => {
      const probe = options.probeCpu === true ? probeCpu(kvm) : undefined;
      let debugExit: DebugExit | undefined;
      let pm1: AcpiPm1 | undefined;
      let sleep: (state: AcpiSleepState) => void = () => {};
      const machine = new PcMachine({
        name: "Multiboot machine",
        kvm,
        ownsKvm,
        cpus,
        memorySize: options.memorySize,
        lowMemorySize: plan.lowMemorySize,
        highMemoryStart: plan.highMemoryStart,
        highMemorySize: plan.highMemorySize,
        serialOutput: options.serialOutput,
        onUnhandled: options.onUnhandled,
        cpuid: options.cpuid,
        onPhase: options.onPhase,
        probe,
        hiddenKvmFeatures: options.hiddenKvmFeatures ?? 0,
        writeMemory: (vm) => {
          writeMultibootBoot(
            (address, bytes) => vm.writeGuest(address, bytes),
            plan,
            options.modules ?? [],
            { memoryIsZero: true },
          );
          // ACPI: RSDP in the BIOS area (reserved in the memory map), RSDT, FADT (PM timer), MADT.
          vm.writeGuest(ACPI_TABLES_ADDRESS, buildAcpiTables({ cpus }));
        },
        addDevices: (pc) => {
          // The machine names the vCPU whose write it was.
          debugExit = new DebugExit((status) =>
            pc.finish({ reason: "debugExit", status, vcpu: -1 })
          );
          pc.pio.insert(DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, debugExit);
          pc.pio.insert(ACPI_PM_TIMER_PORT, 4, new AcpiPmTimer());
          // The sleep itself waits for the run loop (see #sleepAndWake), after the write's exit.
          pm1 = new AcpiPm1({
            onSleep: (state) => sleep(state),
            sci: (level) => pc.vm.setIrqLine(ACPI_SCI_IRQ, level),
          });
          pc.pio.insert(ACPI_PM1_EVENT_PORT, 6, pm1);
          pc.pio.insert(
            PC_TESTDEV_IRQ_PORT,
            PC_TESTDEV_IRQ_LINES,
            new PcTestdevIrq((irq, level) => pc.vm.setIrqLine(irq, level)),
          );
          pc.pio.insert(PC_TESTDEV_PORT, PC_TESTDEV_PORT_SIZE, new PcTestdevPort());
          pc.mmio.insert(PC_TESTDEV_IOMEM_ADDRESS, PC_TESTDEV_IOMEM_SIZE, new PcTestdevIomem());
        },
        enter: (vm, bsp) => {
          // No BIOS ran: the PICs as one leaves them (realmode takes IRQ 11 at vector 0x73).
          programPicsLikeBios(vm);
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
        },
      });
      const mb = new MultibootMachine(machine, debugExit!, pm1!, plan, probe);
      sleep = (state) => mb.#requestSleep(state);
      return mb;
    });
  }

  /** Ends {@linkcode run} after the current exit, with reason `"stopped"`. */
  stop(): void {
    this.#machine.stop();
  }

  /**
   * Runs the machine until the guest writes the debug-exit port, resets or
   * powers off, a vCPU fails, the timeout passes or {@linkcode stop} is
   * called. It first waits (on the event loop) until every AP's worker runs;
   * then the bootstrap vCPU runs on this thread, synchronously, bounded by its
   * watchdog (`Vcpu.setWatchdog`) when `timeoutMs` is given. Can be called once.
   */
  run(options: MultibootRunOptions = {}): Promise<MultibootExit> {
    if (options.timeoutMs !== undefined) this.#deadline = performance.now() + options.timeoutMs;
    return this.#machine.run({ ...options, poll: this.#afterExit });
  }

  /** PM1 control's SLP_EN: S4 and S5 power off, as in QEMU; S3 waits for the run loop. */
  #requestSleep(state: AcpiSleepState): void {
    if (state === "S3") this.#sleep = state;
    else this.#machine.finish({ reason: "poweroff", vcpu: -1 });
  }

  /**
   * S3, after the exit of the write that asked for it: the machine sleeps
   * (nothing runs) until its wake event, the RTC alarm, when the guest
   * enabled it both in the RTC (status B's AIE) and in PM1 (RTC_EN); then
   * the bootstrap vCPU resumes as a BIOS would resume it, in real mode at
   * the FACS's waking vector, with WAK_STS and RTC_STS set and the PICs
   * reprogrammed. No waking vector: the BIOS would boot afresh, a reset. No
   * wake event before the run's timeout: the run times out asleep, as QEMU
   * stays suspended. Only a machine without APs can sleep here (waking APs
   * to wait-for-SIPI is not done): with APs the run ends with an error.
   */
  #sleepAndWake(): void {
    this.#sleep = null;
    const sleeping = (reason: MultibootExitReason, detail: string) =>
      this.#machine.finish({ reason, vcpu: 0, detail });
    if (this.vcpus.length > 1) {
      sleeping("error", "S3: this machine resumes only a single-vCPU guest");
      return;
    }
    const rtc = this.bus.deviceAt(0x70);
    let delay = -1;
    if (rtc instanceof CmosRtc && this.pm1.enabled(Pm1Event.RTC)) {
      const statusB = rtc.register(0x0b);
      if (statusB & 0x20) {
        delay = rtcAlarmDelayMs(new Date(), {
          seconds: rtc.register(1),
          minutes: rtc.register(3),
          hours: rtc.register(5),
        }, (statusB & 0x04) !== 0);
      }
    }
    const left = this.#deadline - performance.now();
    const wait = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
    if (delay < 0 || delay > left) {
      if (left === Infinity) {
        sleeping("error", "S3 with no wake event enabled (RTC alarm with RTC_EN) and no timeout");
      } else {
        wait(Math.max(0, left));
        sleeping("timeout", "suspended (S3): no wake event before the timeout");
      }
      return;
    }
    wait(delay);
    const vector = facsWakingVector(this.vm, this.#facs);
    if (vector === 0) {
      this.#machine.finish({ reason: "reset", vcpu: 0 });
      return;
    }
    this.pm1.wake(Pm1Event.RTC);
    programPicsLikeBios(this.vm);
    resumeAtWakingVector(this.vcpus[0], vector);
  }

  /** Closes the VM (and the Kvm object when the machine opened it). Idempotent. */
  close(): void {
    this.#machine.close();
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
