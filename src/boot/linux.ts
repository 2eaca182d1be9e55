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

import { AcpiPm1 } from "../devices/acpi_pm1.ts";
import { AcpiPmTimer } from "../devices/acpi_pm_timer.ts";
import type { Bus } from "../devices/bus.ts";
import { Errno, KvmError } from "../errors.ts";
import { ConsoleHost, createConsoleRings } from "../devices/virtio/console.ts";
import { VIRTIO_MMIO_SIZE } from "../devices/virtio/constants.ts";
import type { VirtioDeviceSpec } from "../devices/virtio/device.ts";
import { type VirtioPlacement, VirtioRuntime } from "../devices/virtio/runtime.ts";
import {
  PCI_CONFIG_PORT,
  PCI_CONFIG_PORTS_LENGTH,
  PciConfigPorts,
  pciHostBridge,
  VIRTIO_PCI_BAR_SIZE,
  type VirtioPciTransport,
} from "../devices/virtio/pci.ts";
import { defaultMac } from "../devices/virtio/net.ts";
import { openTap } from "../devices/virtio/tap.ts";
import { native } from "../ffi/library.ts";
import type { Uart16550 } from "../devices/uart_16550.ts";
import type { Kvm } from "../kvm/kvm.ts";
import type { KickTarget, Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import {
  HIGH_RAM_START,
  type LinuxBootPlan,
  planLinuxBoot,
  type VmlinuxFile,
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
import {
  ACPI_PM1_EVENT_PORT,
  ACPI_PM_TIMER_PORT,
  ACPI_SCI_IRQ,
  ACPI_TABLES_ADDRESS,
  buildAcpiTables,
} from "./acpi.ts";
import { buildDsdt } from "./aml.ts";
import { type CpuProbeReport, linuxClearCpuid, probeCpu } from "./cpu_probe.ts";
import { VIRTIO_MMIO_BASE } from "./address_map.ts";

export { VIRTIO_MMIO_BASE };

/** Options of {@linkcode LinuxMachine.create}. */
export interface LinuxMachineOptions extends PcMachineOptions {
  /** The kernel: a bzImage, or an uncompressed ELF `vmlinux` (entered at its 64-bit entry). */
  kernel: Uint8Array;
  /**
   * The bzImage's own kernel, uncompressed (from `extractVmlinux` or
   * `cachedVmlinux`): loaded directly so the guest skips the decompressor.
   */
  vmlinux?: Uint8Array;
  /**
   * The same still in its file (a cache entry opened by `lookupVmlinuxAsync`
   * with `direct`): read straight into guest RAM and checked there; a
   * damaged file fails the creation (see `VmlinuxFile.check`).
   */
  vmlinuxFile?: VmlinuxFile;
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
  /**
   * virtio-blk disks on raw image files, the guest's `/dev/vda`, `/dev/vdb`...
   * (the guest needs the `virtio_blk` module and its transport's:
   * `virtio_pci` by default, see {@linkcode LinuxMachineOptions.virtioTransport}).
   */
  disks?: readonly VirtioDisk[];
  /** A virtio entropy device (`/dev/hwrng`; module `virtio-rng`). */
  rng?: boolean;
  /**
   * virtio-net cards on tap interfaces (`eth0`, `eth1`...; module `virtio_net`,
   * which needs `net_failover` and `failover`). A missing tap is created, which
   * needs CAP_NET_ADMIN; configure its host side (address, up) yourself.
   */
  net?: readonly VirtioNet[];
  /**
   * `"virtio"` adds a virtio console, the guest's `hvc0` (module
   * `virtio_console`; boot with `console=hvc0`), whose output goes to
   * `serialOutput` like COM1's; input through {@linkcode LinuxMachine.virtioConsole}.
   * Default `"serial"`: COM1 only.
   */
  console?: "serial" | "virtio";
  /**
   * How the virtio devices are attached (without any virtio device there is
   * no PCI bus either way, and `pci=off` saves the kernel's probe).
   *
   * `"pci"` (default, as QEMU and Cloud Hypervisor): virtio-pci functions on
   * bus 0 behind a PCI root bridge in the DSDT, configuration mechanism #1 on
   * ports 0xcf8-0xcff, interrupts as MSI-X messages routed in the kernel, so
   * an interrupt costs the guest no exit (module `virtio_pci`). Legacy INTx
   * is not offered. The command line must not turn PCI off: with virtio
   * devices, a `pci=off` in {@linkcode LinuxMachineOptions.cmdline} makes `create` throw a
   * `KvmError` (`EINVAL`) before any VM exists, since the kernel would find
   * none of them.
   *
   * `"mmio"`: virtio-mmio windows described in the DSDT, one IOAPIC input
   * each (module `virtio_mmio`), for guests without PCI support; every
   * interrupt costs the guest one exit (its `InterruptStatus` read).
   */
  virtioTransport?: "mmio" | "pci";
}

/** One virtio disk of {@linkcode LinuxMachineOptions.disks}. */
export interface VirtioDisk {
  /** The raw image file; its size (whole 512-byte sectors) is the disk's. */
  path: string;
  /** The guest cannot write (`VIRTIO_BLK_F_RO`; the file is opened read-only). */
  readOnly?: boolean;
}

/** One network card of {@linkcode LinuxMachineOptions.net}. */
export interface VirtioNet {
  /** The host's tap interface, for example `"tap0"`. */
  tap: string;
  /** The card's MAC address (default 52:54:00:12:34:56, the last byte + the card's index). */
  mac?: Uint8Array;
}

/**
 * Whether a kernel command line turns PCI off: a `pci=off`, alone or in a
 * comma-separated list (`pci=noacpi,off`), among the kernel's parameters
 * (those before a `--`, after which they are init's). Words are split at
 * blanks outside double quotes, as the kernel does.
 */
export function cmdlineDisablesPci(cmdline: string): boolean {
  const params: string[] = [];
  let word = "";
  let quoted = false;
  for (const c of cmdline) {
    if (c === '"') quoted = !quoted;
    if (!quoted && /\s/.test(c)) {
      if (word) params.push(word);
      word = "";
    } else word += c;
  }
  if (word) params.push(word);
  for (const param of params) {
    if (param === "--") return false;
    const unquoted = param.replaceAll('"', "");
    if (unquoted.startsWith("pci=") && unquoted.slice(4).split(",").includes("off")) return true;
  }
  return false;
}

/** The first virtio device's interrupt (IOAPIC input); the next follow, up to GSI 23. */
export const VIRTIO_FIRST_GSI = 16;
/** The PCI root bridge's memory window (from `VIRTIO_MMIO_BASE`) with virtio-pci. */
const PCI_WINDOW_SIZE = 0x1000_0000;
/** Most virtio devices on one machine: IOAPIC inputs 16-23. */
export const VIRTIO_MAX_DEVICES = 8;
/** Where the DSDT goes, after the ACPI tables in the BIOS area. */
const DSDT_ADDRESS = ACPI_TABLES_ADDRESS + 0x800;

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
  /**
   * The virtio devices (undefined without any): their transports sit on
   * {@linkcode mmio}, their work on a device thread.
   */
  readonly virtio?: VirtioRuntime;
  /** The virtio console's host side (with `console: "virtio"`): queue input with `input()`. */
  readonly virtioConsole?: ConsoleHost;
  #machine: PcMachine;
  #consoleSink?: (bytes: Uint8Array) => void;

  private constructor(
    machine: PcMachine,
    plan: LinuxBootPlan,
    probe: CpuProbeReport | undefined,
    virtio?: { runtime: VirtioRuntime; console?: ConsoleHost; sink?: (bytes: Uint8Array) => void },
  ) {
    this.#machine = machine;
    this.virtio = virtio?.runtime;
    this.virtioConsole = virtio?.console;
    this.#consoleSink = virtio?.sink;
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
    const consoleRings = options.console === "virtio" ? createConsoleRings() : undefined;
    const specs: VirtioDeviceSpec[] = [
      ...(options.disks ?? []).map((d, i): VirtioDeviceSpec => ({
        kind: "block",
        path: d.path,
        readOnly: d.readOnly,
        id: `vd${String.fromCharCode(97 + i)}`,
      })),
      ...(options.rng ? [{ kind: "rng" } as const] : []),
      ...(options.net ?? []).map((n, i): VirtioDeviceSpec => ({
        kind: "net",
        fd: -1, // opened below, once the other checks passed
        mac: n.mac ?? defaultMac(i),
      })),
      ...(consoleRings ? [{ kind: "console", rings: consoleRings } as const] : []),
    ];
    if (specs.length > VIRTIO_MAX_DEVICES) {
      throw new KvmError(
        "create Linux machine",
        Errno.EINVAL,
        `${specs.length} virtio devices: at most ${VIRTIO_MAX_DEVICES}`,
      );
    }
    const pci = (options.virtioTransport ?? "pci") === "pci";
    if (specs.length > 0 && pci && cmdlineDisablesPci(options.cmdline ?? "")) {
      throw new KvmError(
        "create Linux machine",
        Errno.EINVAL,
        'the virtio devices are on PCI (virtioTransport "pci", the default) but the command ' +
          "line has pci=off, so the kernel would find none of them: drop pci=off or pass " +
          'virtioTransport: "mmio"',
      );
    }
    const phase = options.onPhase ?? (() => {});
    const planStart = performance.now();
    const planWith = (cmdline?: string) =>
      planLinuxBoot(options.kernel, {
        memorySize: options.memorySize,
        cmdline,
        initrd: options.initrd,
        vmlinux: options.vmlinux,
        vmlinuxFile: options.vmlinuxFile,
      });
    let plan = planWith(options.cmdline);
    phase(`boot planned (${Math.round(performance.now() - planStart)} ms)`);
    // The taps: opened now (a missing one is an error before any VM exists), owned by the
    // device thread from its start (closed by it, or by the runtime when it never started).
    const nets = specs.filter((d) => d.kind === "net");
    try {
      nets.forEach((spec, i) => (spec.fd = openTap(options.net![i].tap)));
    } catch (e) {
      for (const spec of nets) if (spec.fd >= 0) native().kvm_close(spec.fd);
      throw e;
    }
    const windowSize = pci ? VIRTIO_PCI_BAR_SIZE : VIRTIO_MMIO_SIZE;
    const placements: VirtioPlacement[] = specs.map((spec, i) => ({
      spec,
      address: VIRTIO_MMIO_BASE + i * windowSize,
      gsi: VIRTIO_FIRST_GSI + i,
    }));
    let handedOver = false;
    try {
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
          onPhase: options.onPhase,
          probe,
          writeMemory: (vm) => {
            writeLinuxBoot(vm, plan, { memoryIsZero: true });
            vm.writeGuest(MPTABLE_ADDRESS, buildMpTable(cpus));
            if (placements.length > 0) {
              // ACPI describes the virtio-mmio devices (Debian's kernels cannot take them from the
              // command line) or the PCI root bridge of the virtio-pci functions, and gives the
              // guest its power-off: \_S5 and the PM1a registers.
              vm.writeGuest(ACPI_TABLES_ADDRESS, buildAcpiTables({ cpus, dsdt: DSDT_ADDRESS }));
              vm.writeGuest(
                DSDT_ADDRESS,
                buildDsdt({
                  virtio: pci ? [] : placements.map((p) => ({ ...p, size: VIRTIO_MMIO_SIZE })),
                  // The BARs sit at the window's start, where the virtio-mmio windows would.
                  pci: pci
                    ? { memoryBase: VIRTIO_MMIO_BASE, memoryLength: PCI_WINDOW_SIZE }
                    : undefined,
                  s5SlpTyp: 0,
                }),
              );
            }
          },
          addDevices: placements.length === 0 ? undefined : (pc) => {
            pc.pio.insert(ACPI_PM_TIMER_PORT, 4, new AcpiPmTimer());
            pc.pio.insert(
              ACPI_PM1_EVENT_PORT,
              6,
              new AcpiPm1({
                // S5 (and S4, which QEMU treats alike) powers off; nothing here can suspend.
                onSleep: (state) => {
                  if (state !== "S3") pc.finish({ reason: "poweroff", vcpu: -1 });
                },
                sci: (level) => pc.vm.setIrqLine(ACPI_SCI_IRQ, level),
              }),
            );
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
        if (placements.length === 0) return new LinuxMachine(machine, plan, probe);
        let runtime: VirtioRuntime | undefined;
        try {
          // After the vCPUs exist: the console kicks the bootstrap vCPU's thread when output waits.
          const bsp = machine.vcpus[0].kickTarget;
          for (const p of placements) if (p.spec.kind === "console") p.spec.kick = bsp;
          const ram = [...machine.vm.memorySlots.values()].map((s) => ({
            gpa: s.guestPhysAddr,
            hostAddress: s.userspaceAddr,
            size: s.memorySize,
          }));
          handedOver = true; // the runtime owns the tap fds now, whatever happens
          runtime = VirtioRuntime.start(machine.vm, ram, placements, {
            vcpu: bsp,
            transport: pci ? "pci" : "mmio",
          });
          for (const d of runtime.devices) machine.mmio.insert(d.address, d.size, d.transport);
          if (pci) {
            // Bus 0: the host bridge at 00:00.0, virtio device i at 00:(i+1).0, in place of the
            // legacy devices' all-ones answer.
            machine.pio.remove(PCI_CONFIG_PORT);
            machine.pio.insert(
              PCI_CONFIG_PORT,
              PCI_CONFIG_PORTS_LENGTH,
              new PciConfigPorts([
                pciHostBridge(),
                ...runtime.devices.map((d) => d.transport as VirtioPciTransport),
              ]),
            );
          }
          const serial = options.serialOutput;
          return new LinuxMachine(machine, plan, probe, {
            runtime,
            console: consoleRings && new ConsoleHost(consoleRings, () => runtime!.wake()),
            sink: serial && ((bytes) => {
              for (const b of bytes) serial(b);
            }),
          });
        } catch (e) {
          runtime?.stop();
          machine.close();
          throw e;
        }
      });
    } catch (e) {
      if (!handedOver) { for (const spec of nets) native().kvm_close(spec.fd); }
      throw e;
    }
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
    const host = this.virtioConsole;
    const sink = this.#consoleSink;
    const poll = options.poll;
    // The virtio console's output is drained on this thread (the device thread kicks it).
    const drain = host && sink
      ? () => {
        host.drain(sink);
        poll?.();
      }
      : poll;
    // The device thread's stall report asks vCPU 0's state through a kick (virtio/stall.ts).
    const runtime = this.virtio;
    const bsp = this.vcpus[0];
    const afterExit = runtime
      ? () => {
        runtime.answerStallProbe(bsp);
        drain?.();
      }
      : drain;
    try {
      // No debug-exit device here: the exit is one of MachineExitReason's.
      const exit = await this.#machine.run({ ...options, poll: afterExit }) as MachineExit;
      if (this.virtio && this.virtio.errors.length > 0 && exit.reason === "error") {
        exit.detail = `${exit.detail ?? ""}\n${this.virtio.errors.join("\n")}`;
      }
      return exit;
    } finally {
      if (host && sink) host.drain(sink);
    }
  }

  /**
   * Stops the virtio device thread (it reaches guest RAM by address, so it
   * must be gone before the RAM is unmapped), then closes the VM (and the Kvm
   * object when the machine opened it). Idempotent. When the device thread
   * does not stop, throws a `KvmError` (`ETIMEDOUT`) and leaves the VM open
   * rather than unmap memory under it.
   */
  close(): void {
    this.virtio?.stop();
    this.#machine.close();
  }

  /** Same as {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
