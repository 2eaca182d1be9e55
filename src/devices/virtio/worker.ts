/**
 * The virtio device thread: a Worker that serves every virtio device's
 * queues of one machine. Not part of the public API: `VirtioRuntime`
 * (`runtime.ts`) starts it.
 *
 * Why a thread of its own: the machine runs its bootstrap vCPU synchronously
 * on the calling thread, so device work done there (a disk read) would stop
 * that vCPU, and a kick handled there would need a vCPU exit to user space.
 * Instead the guest's `QueueNotify` writes signal one eventfd in the kernel
 * (an ioeventfd for every device's notify register), the vCPU resumes at
 * once, and this thread, blocked in `read(2)` of that eventfd through the
 * shim, wakes and serves every ready queue (a few index reads per device).
 * Interrupts go back through each device's irqfd, also without the vCPU
 * thread. Guest RAM is shared by address (the same mappings the VM uses).
 *
 * @module
 */

import { Errno } from "../../errors.ts";
import { native } from "../../ffi/library.ts";
import type { VirtioDeviceSpec, VirtioFront } from "./device.ts";
import { VirtioMemory } from "./memory.ts";
import { type RunnerDevice, VirtioRunner } from "./runner.ts";
import { createBackend } from "./specs.ts";
import type { NetBackend } from "./net.ts";
import { BlockBackend } from "./block.ts";
import { Word } from "./state.ts";
import { INT_VRING } from "./constants.ts";
import { raiseMsix } from "./pci.ts";
import { probeStall } from "./stall.ts";
import type { KickTarget } from "../../kvm/kick.ts";

/** Word offsets of the runtime's control block. */
export const Control = {
  /** Set by the machine: leave the loop. */
  STOP: 0,
  /** Set by the worker once it serves. */
  STARTED: 1,
  /** Set by the worker when it left (served or failed). */
  DONE: 2,
  /** Set by the worker when it failed (its error in the worker's `onerror`). */
  FAILED: 3,
} as const;

/** The start message. */
export interface VirtioWorkerStart {
  /** The control block (`Control` words). */
  control: SharedArrayBuffer;
  /** The blocking eventfd every device's ioeventfd signals. */
  wakeFd: number;
  /** Guest RAM: host addresses of the VM's memory slots. */
  ram: { gpa: number; hostAddress: bigint; size: number }[];
  /** The devices. */
  devices: {
    spec: VirtioDeviceSpec;
    front: VirtioFront;
    state: SharedArrayBuffer;
    irqFd: number;
    /** virtio-pci: the irqfd of each MSI-X vector (then `irqFd` is unused). */
    vectorFds?: number[];
    /** The IOAPIC input of its interrupt (-1 for virtio-pci: MSI-X passes none). */
    gsi: number;
  }[];
  /** The VM's fd: its IOAPIC is read when an interrupt stays unacknowledged. */
  vmFd: number;
  /** vCPU 0, kicked for a snapshot of its interrupt state then (see `stall.ts`). */
  vcpu?: KickTarget;
  /** The snapshot block vCPU 0's run loop answers in. */
  snapshot?: SharedArrayBuffer;
  /** Report vCPU 0's state after this long without a kick or a frame (0: never). */
  quietMs?: number;
  /** Print where the device thread's time went when it stops (`DENO_KVM_VIRTIO_TIMING`). */
  timing?: boolean;
}

/** A message of the device thread to the runtime: a stall report's lines. */
export interface VirtioWorkerReport {
  stall: string[];
}

interface WorkerScope {
  onmessage: ((event: MessageEvent<VirtioWorkerStart>) => void) | null;
  postMessage(message: VirtioWorkerReport): void;
}
const scope = globalThis as unknown as WorkerScope;
const POLLIN = 1;
/**
 * How long the thread sleeps at most: after that it looks for an interrupt the
 * driver left unacknowledged (see below).
 */
const WATCH_MS = 1000;
/** How long a stall report waits, after its kick of vCPU 0, for the driver to acknowledge. */
const AFTER_KICK_MS = 300;

/** A virtio-pci device's interrupt: on the vector of its cause, through that vector's irqfd. */
function pciInterrupt(
  state: Int32Array,
  fds: number[],
): (cause: number, queues: number) => void {
  const lib = native();
  const send = (vector: number) => void lib.kvm_write_u64(fds[vector], 1n);
  return (cause, queues) => raiseMsix(state, cause, queues, send);
}

function serve(msg: VirtioWorkerStart): void {
  const control = new Int32Array(msg.control);
  const lib = native();
  let runner: VirtioRunner | undefined;
  try {
    const memory = new VirtioMemory(msg.ram.map((r) => ({
      gpa: r.gpa,
      bytes: new Uint8Array(
        Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(r.hostAddress)!, r.size),
      ),
    })));
    const devices: RunnerDevice[] = msg.devices.map((d) => ({
      front: d.front,
      state: new Int32Array(d.state),
      backend: createBackend(d.spec, () => Atomics.load(control, Control.STOP) !== 0),
      interrupt: d.vectorFds
        ? pciInterrupt(new Int32Array(d.state), d.vectorFds)
        : () => void lib.kvm_write_u64(d.irqFd, 1n),
      onError: (message) => console.error(`virtio ${d.spec.kind}: driver error: ${message}`),
    }));
    runner = new VirtioRunner(memory, devices);
    // Each line on stderr (prefixed, for users and the benchmark) and to the runtime.
    const report = (i: number, lines: string[]) => {
      const named = lines.map((l) => `virtio ${msg.devices[i].spec.kind}: ${l}`);
      for (const l of named) console.error(l);
      scope.postMessage({ stall: named });
    };
    Atomics.store(control, Control.STARTED, 1);
    Atomics.notify(control, Control.STARTED);
    const counter = new BigUint64Array(1);
    // A device whose interrupt status stays set through two quiet sleeps in a row: the driver
    // never ran its handler (a lost edge, or an interrupt the hypervisor did not deliver). The
    // interrupt is raised again (harmless when late: the handler reads the status and the rings)
    // and reported once per device, so a stalled guest says why.
    const unacked = new Int32Array(devices.length);
    // After a report: the ACK count then, until the driver acknowledges (-1: not watched).
    const watching = new Int32Array(devices.length).fill(-1);
    const watchedSince = new Float64Array(devices.length);
    const snapshot = msg.snapshot && new Int32Array(msg.snapshot);
    const nap = new Int32Array(new SharedArrayBuffer(4));
    const quietMs = msg.devices.length > 0 ? msg.quietMs ?? 0 : 0;
    let lastActive = performance.now();
    let quietReported = false;
    // struct pollfd { int fd; short events; short revents; } for the eventfd and each tap:
    // a frame arriving on a tap wakes the thread like a kick.
    const nets = msg.devices.flatMap((d, i) =>
      d.spec.kind === "net" ? [{ fd: d.spec.fd, backend: devices[i].backend as NetBackend }] : []
    );
    const fds = [msg.wakeFd, ...nets.map((n) => n.fd)];
    const pollfds = new Uint8Array(8 * fds.length);
    const pv = new DataView(pollfds.buffer);
    fds.forEach((fd, i) => {
      pv.setInt32(8 * i, fd, true);
      pv.setInt16(8 * i + 4, POLLIN, true);
    });
    // Where the thread's time goes (printed at the stop with msg.timing): serving, or waiting.
    let wakes = 0;
    let serveMs = 0;
    const started = performance.now();
    for (;;) {
      if (Atomics.load(control, Control.STOP) !== 0) break;
      const t0 = performance.now();
      runner.service();
      serveMs += performance.now() - t0;
      wakes++;
      // Blocks until a kick, a reset request or the stop (all write the eventfd), or a frame
      // for a card with receive buffers (one without waits for its driver's kick).
      for (let i = 0; i < fds.length; i++) pv.setInt16(8 * i + 6, 0, true);
      for (let i = 0; i < nets.length; i++) {
        pv.setInt16(8 * (i + 1) + 4, nets[i].backend.wantsFrames ? POLLIN : 0, true);
      }
      // A pass that left chains added without a kick (EVENT_IDX) only looks at the fds.
      const p = lib.kvm_poll(pollfds, fds.length, runner.pending ? 0 : WATCH_MS);
      if (p < 0 && p !== -Errno.EINTR) throw new Error(`poll: errno ${-p}`);
      for (let i = 0; i < devices.length; i++) {
        if (watching[i] < 0 || Atomics.load(devices[i].state, Word.ACKS) === watching[i]) continue;
        watching[i] = -1;
        const s = ((performance.now() - watchedSince[i]) / 1000).toFixed(1);
        report(i, [`the driver acknowledged ${s} s after the report`]);
      }
      if (p > 0) {
        lastActive = performance.now();
        quietReported = false;
      } else if (quietMs > 0 && !quietReported && performance.now() - lastActive > quietMs) {
        quietReported = true;
        const lines = probeStall(
          { vmFd: msg.vmFd, vcpu: msg.vcpu, snapshot },
          msg.devices[0].gsi,
          false,
        );
        report(0, [
          `no kick or frame for ${(quietMs / 1000).toFixed(0)} s: ` +
          "vCPU 0 now",
          ...lines,
        ]);
      }
      if (p === 0 && !runner.pending) {
        for (let i = 0; i < devices.length; i++) {
          const status = Atomics.load(devices[i].state, Word.INTERRUPT);
          if (status === 0) {
            unacked[i] = 0;
            continue;
          }
          if (++unacked[i] < 2) continue;
          if (unacked[i] === 2) {
            // Where the interrupt went, looked at before it is raised again (see stall.ts). The
            // probe kicks vCPU 0: a guest that acknowledges now, with no new edge, was not woken.
            const acks = Atomics.load(devices[i].state, Word.ACKS);
            const lines = probeStall(
              { vmFd: msg.vmFd, vcpu: msg.vcpu, snapshot },
              msg.devices[i].gsi,
            );
            Atomics.wait(nap, 0, 0, AFTER_KICK_MS);
            const acked = Atomics.load(devices[i].state, Word.ACKS) !== acks;
            report(i, [
              `interrupt status ${status} unacknowledged for ${2 * WATCH_MS / 1000} s: ${
                acked
                  ? `acknowledged within ${AFTER_KICK_MS} ms of the probe's kick, before a new edge`
                  : "raised again"
              }`,
              ...lines,
            ]);
            if (acked) {
              unacked[i] = 0;
              continue;
            }
            watching[i] = acks;
            watchedSince[i] = performance.now();
          }
          devices[i].interrupt(INT_VRING, -1); // every queue's
        }
        continue;
      }
      if (pv.getInt16(6, true) & POLLIN) {
        const r = lib.kvm_read_u64(msg.wakeFd, counter);
        if (r < 0 && r !== -Errno.EINTR && r !== -Errno.EAGAIN) {
          throw new Error(`read wake eventfd: errno ${-r}`);
        }
      }
    }
    if (msg.timing) {
      const total = performance.now() - started;
      console.error(
        `virtio timing: device thread ${(total / 1000).toFixed(1)} s: ${wakes} passes, ` +
          `serving ${serveMs.toFixed(0)} ms (${
            (1000 * serveMs / Math.max(1, wakes)).toFixed(0)
          } us ` +
          `a pass), the rest waiting`,
      );
      devices.forEach((d, i) => {
        if (!(d.backend instanceof BlockBackend)) return;
        const b = d.backend;
        console.error(
          `virtio timing: ${msg.devices[i].spec.kind} ${i}: ${b.requests} requests, ` +
            `${(b.bytes / 1048576).toFixed(1)} MiB, in preadv/pwritev ${b.ioMs.toFixed(0)} ms ` +
            `(${(1000 * b.ioMs / Math.max(1, b.requests)).toFixed(0)} us a request); ` +
            `${b.largeRequests} of 64 KiB or more: ${b.largeIoMs.toFixed(0)} ms ` +
            `(${(1000 * b.largeIoMs / Math.max(1, b.largeRequests)).toFixed(0)} us each)`,
        );
      });
    }
  } catch (e) {
    Atomics.store(control, Control.FAILED, 1);
    throw e;
  } finally {
    runner?.close();
    Atomics.store(control, Control.DONE, 1);
    Atomics.notify(control, Control.DONE);
  }
}

scope.onmessage = (event) => serve(event.data);
