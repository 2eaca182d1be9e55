/**
 * The virtio devices of a machine: their transports on the bus, their
 * ioeventfds and irqfds in the VM, and the device thread that serves them
 * (`worker.ts`, where the design is explained).
 *
 * Lifetime: the worker reaches guest RAM by address, so
 * {@linkcode VirtioRuntime.stop} (which waits until the worker left its
 * loop) must run before the VM's memory is unmapped; the machine does this in
 * its `close()`.
 *
 * @module
 */

import { Errno, KvmError } from "../../errors.ts";
import { native } from "../../ffi/library.ts";
import { EventFd } from "../../kvm/event_fd.ts";
import type { KickTarget } from "../../kvm/kick.ts";
import type { Vcpu } from "../../kvm/vcpu.ts";
import type { Vm } from "../../kvm/vm.ts";
import { MmioReg, VIRTIO_MMIO_SIZE } from "./constants.ts";
import type { VirtioDeviceSpec, VirtioFront } from "./device.ts";
import { VirtioMemory } from "./memory.ts";
import { VirtioMmioTransport } from "./mmio.ts";
import {
  type MsiMessage,
  VIRTIO_PCI_BAR_SIZE,
  VIRTIO_PCI_NOTIFY_MULTIPLIER,
  VirtioPciBar,
  VirtioPciTransport,
  virtioPciVectorCount,
} from "./pci.ts";
import type { GsiRoute } from "../../kvm/vm.ts";
import {
  KVM_IRQCHIP_IOAPIC,
  KVM_IRQCHIP_PIC_MASTER,
  KVM_IRQCHIP_PIC_SLAVE,
} from "../../abi/irqchip.ts";
import { frontOf } from "./specs.ts";
import { createDeviceState, Word } from "./state.ts";
import { answerVcpuSnapshot, SNAP_WORDS } from "./stall.ts";
import { Control, type VirtioWorkerReport, type VirtioWorkerStart } from "./worker.ts";

/** One virtio device of a machine, where it sits. */
export interface VirtioPlacement {
  /** The device. */
  spec: VirtioDeviceSpec;
  /**
   * Guest physical base of its 4 KiB window (virtio-mmio), or of its BAR
   * ({@linkcode VIRTIO_PCI_BAR_SIZE} bytes, aligned to that; virtio-pci).
   */
  address: number;
  /**
   * The IOAPIC input (GSI) of its interrupt (virtio-mmio). With virtio-pci
   * the device's MSI-X vectors get GSIs of their own (see
   * {@linkcode VIRTIO_PCI_FIRST_MSI_GSI}) and this one is unused.
   */
  gsi: number;
}

/**
 * The first GSI of the virtio-pci devices' MSI-X routes (after the IOAPIC's
 * 24 inputs): the devices' vectors follow one another, device 0's vector 0
 * first (a device has `virtioPciVectorCount` vectors).
 */
export const VIRTIO_PCI_FIRST_MSI_GSI = 24;

/**
 * KVM's default GSI routing on x86 (GSIs 0-15 to both PICs and the IOAPIC,
 * 16-23 to the IOAPIC): `KVM_SET_GSI_ROUTING` replaces the whole table, so
 * the MSI routes are added to these.
 */
export function defaultGsiRoutes(): GsiRoute[] {
  const routes: GsiRoute[] = [];
  for (let gsi = 0; gsi < 24; gsi++) {
    routes.push({ gsi, kind: "irqchip", irqchip: KVM_IRQCHIP_IOAPIC, pin: gsi });
    if (gsi < 16) {
      const irqchip = gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
      routes.push({ gsi, kind: "irqchip", irqchip, pin: gsi % 8 });
    }
  }
  return routes;
}

/** A started device. */
export interface VirtioSlot extends VirtioPlacement {
  /** What the driver is shown. */
  front: VirtioFront;
  /**
   * The registers, to insert on the MMIO bus at `address` for `size` bytes
   * (a virtio-pci function also goes on the PCI bus: `PciConfigPorts`).
   */
  transport: VirtioMmioTransport | VirtioPciTransport;
  /** {@linkcode VIRTIO_MMIO_SIZE} or {@linkcode VIRTIO_PCI_BAR_SIZE}. */
  size: number;
}

/** Options of {@linkcode VirtioRuntime.start}. */
export interface VirtioRuntimeOptions {
  /**
   * vCPU 0's kick target. With it, an interrupt left unacknowledged is
   * reported with vCPU 0's interrupt state: the device thread kicks it and
   * its run loop answers by calling {@linkcode VirtioRuntime.answerStallProbe}
   * after every exit (see `stall.ts`).
   */
  vcpu?: KickTarget;
  /**
   * Seconds without a kick or a frame after which the device thread reports
   * vCPU 0's state once (until the next activity), for a guest stuck with no
   * interrupt pending. Default: `DENO_KVM_VIRTIO_QUIET_S` from the
   * environment, else off (an idle guest is quiet too).
   */
  quietS?: number;
  /**
   * `"mmio"` (default): virtio-mmio windows, interrupts on IOAPIC inputs.
   * `"pci"`: virtio-pci functions with MSI-X (`pci.ts`); the VM's GSI routing
   * table is then set by the runtime (the default routes plus one MSI route
   * per unmasked vector).
   */
  transport?: "mmio" | "pci";
}

/** `DENO_KVM_VIRTIO_QUIET_S`, when readable and a positive number; else 0. */
function quietFromEnv(): number {
  try {
    const s = Number(Deno.env.get("DENO_KVM_VIRTIO_QUIET_S") ?? 0);
    return Number.isFinite(s) && s > 0 ? s : 0;
  } catch {
    return 0; // no --allow-env
  }
}

/** `DENO_KVM_VIRTIO_TIMING` set (to anything but 0): the device thread says where its time went. */
function timingFromEnv(): boolean {
  try {
    const v = Deno.env.get("DENO_KVM_VIRTIO_TIMING");
    return v !== undefined && v !== "" && v !== "0";
  } catch {
    return false; // no --allow-env
  }
}

/** How long a reset or a stop waits for the device thread. */
const WAIT_MS = 5000;

/**
 * Starts the device thread for `placements` in `vm` and makes their
 * transports.
 *
 * @example
 * ```ts ignore
 * const runtime = VirtioRuntime.start(vm, ram, [
 *   { spec: { kind: "rng" }, address: 0xd000_0000, gsi: 16 },
 * ]);
 * for (const d of runtime.devices) bus.insert(d.address, VIRTIO_MMIO_SIZE, d.transport);
 * // ... run the machine, then:
 * runtime.stop();
 * ```
 */
export class VirtioRuntime {
  /** The devices, in the order given. */
  readonly devices: readonly VirtioSlot[];
  /** Errors the device thread reported (read after the run). */
  readonly errors: string[] = [];
  /**
   * The device thread's stall reports (an interrupt left unacknowledged:
   * where it went, `stall.ts`), line by line, as they arrive on this
   * thread's event loop; each line is also written to stderr.
   */
  readonly stallReports: string[] = [];
  #snapshot = new Int32Array(new SharedArrayBuffer(4 * SNAP_WORDS));
  #control = new Int32Array(new SharedArrayBuffer(16));
  #wake: EventFd;
  /** Takes the drivers' `InterruptACK` writes in the kernel; never read (see `mmio.ts`). */
  #acks: EventFd | null = null;
  #irqs: EventFd[] = [];
  /** virtio-pci: each device's vector irqfds (one per MSI-X table entry). */
  #vectorIrqs: EventFd[][] = [];
  /** virtio-pci: the MSI routes by GSI (the vCPU thread routes; see `pci.ts`). */
  #msiRoutes = new Map<number, MsiMessage>();
  #vm: Vm | null = null;
  #worker: Worker | null = null;

  #placements: readonly VirtioPlacement[];
  #closedTaps = false;

  private constructor(
    wake: EventFd,
    devices: VirtioSlot[],
    placements: readonly VirtioPlacement[],
  ) {
    this.#wake = wake;
    this.devices = devices;
    this.#placements = placements;
  }

  /**
   * Registers one ioeventfd per device on its `QueueNotify` register (all
   * signalling the device thread's eventfd), one on its `InterruptACK`
   * register (an eventfd nobody reads: reading `InterruptStatus` clears it,
   * so the acknowledgement needs no exit to user space) and one irqfd per
   * device on its GSI (the VM needs its in-kernel irqchip), then starts the
   * worker.
   * `ram` lists the VM's RAM slots by host address. The runtime owns the
   * net devices' tap fds from this call on (closed on every failure, and
   * by {@linkcode stop}).
   */
  static start(
    vm: Vm,
    ram: readonly { gpa: number; hostAddress: bigint; size: number }[],
    placements: readonly VirtioPlacement[],
    options: VirtioRuntimeOptions = {},
  ): VirtioRuntime {
    let fronts: VirtioFront[];
    let wake: EventFd;
    try {
      fronts = placements.map((p) => frontOf(p.spec));
      wake = EventFd.create({ nonBlocking: false });
    } catch (e) {
      for (const p of placements) if (p.spec.kind === "net") native().kvm_close(p.spec.fd);
      throw e;
    }
    const slots: VirtioSlot[] = [];
    const runtime = new VirtioRuntime(wake, slots, placements);
    runtime.#ram = [...ram];
    try {
      const acks = runtime.#acks = EventFd.create();
      const states = fronts.map((f) => createDeviceState(f.queueMax.length));
      const pci = options.transport === "pci";
      runtime.#vm = vm;
      if (pci) vm.setGsiRouting(defaultGsiRoutes()); // the same table, now ours to extend
      let nextMsiGsi = VIRTIO_PCI_FIRST_MSI_GSI;
      placements.forEach((p, i) => {
        const state = states[i];
        if (pci) {
          const irqs: EventFd[] = [];
          runtime.#vectorIrqs.push(irqs);
          const firstGsi = nextMsiGsi;
          nextMsiGsi += virtioPciVectorCount(fronts[i]);
          const link = {
            notify: () => wake.write(1n),
            reset: () => runtime.#reset(state),
            route: (v: number, m: MsiMessage) => runtime.#route(firstGsi + v, m),
            fire: (v: number) => irqs[v].write(1n),
          };
          const transport = new VirtioPciTransport(fronts[i], state, link, p.address);
          for (let v = 0; v < transport.vectors; v++) {
            const irq = EventFd.create();
            irqs.push(irq);
            // Bound before any route exists: an unrouted GSI drops the write, and the device
            // thread writes only vectors the transport unmasked (after routing them).
            vm.registerIrqfd(irq, firstGsi + v);
          }
          slots.push({ ...p, front: fronts[i], transport, size: VIRTIO_PCI_BAR_SIZE });
          // One ioeventfd per queue's notify word (Linux writes the queue index, 16 bits).
          fronts[i].queueMax.forEach((_, q) => {
            const at = p.address + VirtioPciBar.NOTIFY + VIRTIO_PCI_NOTIFY_MULTIPLIER * q;
            vm.registerIoevent(wake, at, { length: 2 });
          });
          return;
        }
        const link = {
          notify: () => wake.write(1n),
          reset: () => runtime.#reset(state),
        };
        slots.push({
          ...p,
          front: fronts[i],
          transport: new VirtioMmioTransport(fronts[i], state, link),
          size: VIRTIO_MMIO_SIZE,
        });
        vm.registerIoevent(wake, p.address + MmioReg.QUEUE_NOTIFY, { length: 4 });
        vm.registerIoevent(acks, p.address + MmioReg.INTERRUPT_ACK, { length: 4 });
        const irq = EventFd.create();
        runtime.#irqs.push(irq);
        vm.registerIrqfd(irq, p.gsi);
      });
      const worker = new Worker(new URL("./worker.ts", import.meta.url).href, { type: "module" });
      runtime.#worker = worker;
      worker.onerror = (event) => {
        event.preventDefault();
        runtime.errors.push(`virtio device thread: ${event.message}`);
      };
      worker.onmessage = (event: MessageEvent<VirtioWorkerReport>) => {
        runtime.stallReports.push(...event.data.stall);
      };
      const start: VirtioWorkerStart = {
        control: runtime.#control.buffer as SharedArrayBuffer,
        wakeFd: wake.unsafeFd,
        ram: [...ram],
        devices: slots.map((s, i) => ({
          spec: s.spec,
          front: s.front,
          state: states[i].buffer as SharedArrayBuffer,
          irqFd: pci ? -1 : runtime.#irqs[i].unsafeFd,
          vectorFds: pci ? runtime.#vectorIrqs[i].map((e) => e.unsafeFd) : undefined,
          gsi: pci ? -1 : s.gsi, // MSI-X passes no IOAPIC pin
        })),
        vmFd: vm.unsafeFd,
        vcpu: options.vcpu,
        snapshot: options.vcpu && runtime.#snapshot.buffer as SharedArrayBuffer,
        quietMs: 1000 * (options.quietS ?? quietFromEnv()),
        timing: timingFromEnv(),
      };
      worker.postMessage(start);
      return runtime;
    } catch (e) {
      runtime.stop();
      throw e;
    }
  }

  /**
   * Sets the MSI route of `gsi` (a virtio-pci vector the driver unmasked):
   * the whole table again, the default routes first. Runs on the vCPU
   * thread that took the guest's MSI-X write; rare (driver set-up and
   * interrupt affinity changes).
   */
  #route(gsi: number, message: MsiMessage): void {
    this.#msiRoutes.set(gsi, message);
    const routes = defaultGsiRoutes();
    for (const [g, m] of this.#msiRoutes) routes.push({ gsi: g, kind: "msi", ...m });
    this.#vm!.setGsiRouting(routes);
  }

  /** Wakes the device thread to look at every queue (after host input, for example). */
  wake(): void {
    if (this.#worker) this.#wake.write(1n);
  }

  /**
   * Answers the device thread's request for vCPU 0's interrupt state, if one
   * is pending (two atomic loads otherwise): call it on vCPU 0's thread after
   * each of its exits (it makes vCPU ioctls). Needs `options.vcpu` at start.
   */
  answerStallProbe(vcpu: Vcpu): void {
    answerVcpuSnapshot(this.#snapshot, vcpu, this.#readRam);
  }

  /** Guest RAM for the stall probe's stack walk (views made on first use: a stall is rare). */
  #readRam = (gpa: number, length: number): Uint8Array | null => {
    this.#memory ??= new VirtioMemory(this.#ram.map((r) => ({
      gpa: r.gpa,
      bytes: new Uint8Array(
        Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(r.hostAddress)!, r.size),
      ),
    })));
    return this.#memory.slice(gpa, length);
  };
  #memory?: VirtioMemory;
  #ram: readonly { gpa: number; hostAddress: bigint; size: number }[] = [];

  /** Whether the device thread has started serving. */
  get started(): boolean {
    return Atomics.load(this.#control, Control.STARTED) !== 0;
  }

  /** Asks the device thread to reset a device and waits (bounded) until it did. */
  #reset(state: Int32Array): void {
    Atomics.store(state, Word.RESET_REQUEST, 1);
    this.#wake.write(1n);
    const deadline = performance.now() + WAIT_MS;
    while (Atomics.load(state, Word.RESET_REQUEST) !== 0) {
      if (Atomics.load(this.#control, Control.DONE) !== 0 || performance.now() > deadline) {
        // No device thread to wait for (it failed or stopped): nothing touches the queues.
        Atomics.store(state, Word.STATUS, 0);
        Atomics.store(state, Word.RESET_REQUEST, 0);
        return;
      }
      Atomics.wait(state, Word.RESET_REQUEST, 1, 50);
    }
  }

  /**
   * Stops the device thread: waits (bounded) until it left its loop and
   * closed the image files, then terminates it and closes the eventfds.
   * Idempotent.
   */
  stop(): void {
    const worker = this.#worker;
    this.#worker = null;
    if (worker) {
      Atomics.store(this.#control, Control.STOP, 1);
      this.#wake.write(1n);
      const deadline = performance.now() + WAIT_MS;
      // A worker that never started (still loading) has nothing mapped: terminating it is enough.
      while (
        Atomics.load(this.#control, Control.STARTED) !== 0 &&
        Atomics.load(this.#control, Control.DONE) === 0 && performance.now() < deadline
      ) {
        Atomics.wait(this.#control, Control.DONE, 0, 50);
      }
      worker.terminate();
      if (
        Atomics.load(this.#control, Control.STARTED) !== 0 &&
        Atomics.load(this.#control, Control.DONE) === 0
      ) {
        throw new KvmError(
          "stop virtio devices",
          Errno.ETIMEDOUT,
          "the device thread did not stop",
        );
      }
    }
    if (!this.#closedTaps && Atomics.load(this.#control, Control.STARTED) === 0) {
      // The device thread never started: the tap fds it would have owned are still open.
      for (const p of this.#placements) if (p.spec.kind === "net") native().kvm_close(p.spec.fd);
    }
    this.#closedTaps = true;
    for (const irq of this.#irqs) irq.close();
    this.#irqs = [];
    for (const irq of this.#vectorIrqs.flat()) irq.close();
    this.#vectorIrqs = [];
    this.#acks?.close();
    this.#acks = null;
    this.#wake.close();
  }
}

export { VIRTIO_MMIO_SIZE, VIRTIO_PCI_BAR_SIZE };
