/**
 * A small PC that boots a Linux bzImage: guest RAM, the in-kernel interrupt
 * controllers and PIT, a 16550A console on COM1, the i8042 reset line, an MP
 * table for SMP, and one thread per vCPU (the bootstrap vCPU on the calling
 * thread, each application processor on a Worker).
 *
 * The PC itself (RAM, platform, the port and MMIO buses with their devices,
 * the vCPU threads, the exit dispatch and policy) is `PcMachine`
 * (`machine.ts`), shared with `MultibootMachine`; this file adds the Linux
 * boot protocol: the bzImage or ELF kernel, the zero page and command line,
 * the MP table and the 64-bit (or 32-bit) entry.
 *
 * Every device model lives on the calling thread. An AP's I/O exit is handed
 * over through a shared mailbox: the AP's worker kicks the bootstrap vCPU out
 * of `KVM_RUN`, the loop here serves the request, and the AP resumes. Linux
 * does nearly all of its port I/O on the boot CPU, so this costs little.
 *
 * @module
 */

import type { Bus } from "../devices/bus.ts";
import type { Uart16550 } from "../devices/uart_16550.ts";
import type { Kvm } from "../kvm/kvm.ts";
import type { KickTarget, Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import {
  HIGH_RAM_START,
  type LinuxBootPlan,
  planLinuxBoot,
  writeLinuxBoot,
  ZERO_PAGE_ADDRESS,
} from "./bzimage.ts";
import {
  checkMachineSize,
  type PcExit,
  type PcExitReason,
  PcMachine,
  type PcMachineOptions,
  withKvm,
} from "./machine.ts";
import { setupLongMode, setupProtectedMode } from "./modes.ts";
import { buildMpTable, MPTABLE_ADDRESS } from "./mptable.ts";
import { type CpuProbeReport, linuxClearCpuid, probeCpu } from "./cpu_probe.ts";

/** Options of {@linkcode LinuxMachine.create}. */
export interface LinuxMachineOptions extends PcMachineOptions {
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
  /**
   * Back guest RAM with transparent huge pages (default true; see
   * `GuestMemoryOptions.hugePages`).
   */
  hugePages?: boolean;
  /**
   * Probe which CPU features this KVM can really execute and hide the others
   * from the guest (default true; see `probeCpu`, cached per `Kvm`). Where
   * the KVM forces a failing feature into the guest's CPUID anyway, its
   * `clearcpuid=` is appended to the command line. False offers the
   * supported CPUID as it is.
   */
  probeCpu?: boolean;
}

/**
 * Why {@linkcode LinuxMachine.run} returned: any {@linkcode PcExitReason}
 * but `"debugExit"` (this machine has no debug-exit port).
 */
export type MachineExitReason = Exclude<PcExitReason, "debugExit">;

/** How a run of {@linkcode LinuxMachine} ended. */
export interface MachineExit extends PcExit {
  /** Why. */
  reason: MachineExitReason;
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
  readonly bus: Bus;
  /** The MMIO bus (no devices yet: accesses read as all-ones). */
  readonly mmio: Bus;
  /** COM1. */
  readonly serial: Uart16550;
  /** The boot layout decided before the VM was created. */
  readonly plan: LinuxBootPlan;
  /** vCPUs by id; 0 is the bootstrap processor. */
  readonly vcpus: readonly Vcpu[];
  /** What the CPU probe found (undefined with `probeCpu: false`). */
  readonly cpuProbe?: CpuProbeReport;
  /**
   * Port I/O exits of every vCPU by port: a profile of where the guest spends
   * its port I/O. Index 0x10000 counts MMIO exits.
   */
  readonly exitsByPort: Uint32Array;
  #machine: PcMachine;

  private constructor(machine: PcMachine, plan: LinuxBootPlan, probe: CpuProbeReport | undefined) {
    this.#machine = machine;
    this.kvm = machine.kvm;
    this.vm = machine.vm;
    this.bus = machine.pio;
    this.mmio = machine.mmio;
    this.serial = machine.serial;
    this.vcpus = machine.vcpus;
    this.exitsByPort = machine.exitsByPort;
    this.plan = plan;
    this.cpuProbe = probe;
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
    checkMachineSize("Linux machine", cpus, options.memorySize);
    const planWith = (cmdline?: string) =>
      planLinuxBoot(options.kernel, {
        memorySize: options.memorySize,
        cmdline,
        initrd: options.initrd,
        vmlinux: options.vmlinux,
      });
    let plan = planWith(options.cmdline);
    return withKvm(options.kvm, (kvm, ownsKvm) => {
      let probe: CpuProbeReport | undefined;
      if (options.probeCpu !== false) {
        probe = probeCpu(kvm);
        const clear = linuxClearCpuid(probe);
        if (clear) plan = planWith(options.cmdline ? `${options.cmdline} ${clear}` : clear);
      }
      const machine = new PcMachine({
        name: "Linux machine",
        kvm,
        ownsKvm,
        cpus,
        memorySize: options.memorySize,
        hugePages: options.hugePages,
        lowMemorySize: plan.lowMemorySize,
        highMemoryStart: HIGH_RAM_START,
        highMemorySize: plan.highMemorySize,
        serialOutput: options.serialOutput,
        onUnhandled: options.onUnhandled,
        cpuid: options.cpuid,
        probe,
        writeMemory: (vm) => {
          writeLinuxBoot(vm, plan, { memoryIsZero: true });
          vm.writeGuest(MPTABLE_ADDRESS, buildMpTable(cpus));
        },
        enter: (vm, bsp) => {
          if (plan.entryMode === "64") {
            // Map 4 GiB: the kernel, zero page and command line must be identity mapped.
            setupLongMode(vm, bsp, { entry: plan.entry, identityMapGiB: 4 });
          } else {
            setupProtectedMode(vm, bsp, { entry: plan.entry });
          }
          // Boot protocol: RSI (ESI) points to the zero page; interrupts off.
          bsp.setRegs(bsp.getRegs().assign({ rsi: BigInt(ZERO_PAGE_ADDRESS), rflags: 2n }));
        },
      });
      return new LinuxMachine(machine, plan, probe);
    });
  }

  /** The thread running the bootstrap vCPU (valid during {@linkcode run}), to kick. */
  get kickTarget(): KickTarget {
    return this.vcpus[0].kickTarget;
  }

  /** Ends {@linkcode run} after the current exit, with reason `"stopped"`. */
  stop(): void {
    this.#machine.stop();
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
    // No debug-exit device here: the exit is one of MachineExitReason's.
    return await this.#machine.run(options) as MachineExit;
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
