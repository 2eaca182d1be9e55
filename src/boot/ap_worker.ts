/**
 * The Worker that runs one application processor (AP) of a
 * `LinuxMachine` or `MultibootMachine`. Not part of the public API:
 * `ApWorkers` (`ap_runtime.ts`) starts it.
 *
 * An AP's port I/O and MMIO exits are handled by the device models on the
 * main thread: the worker copies the exit into a shared mailbox, kicks the
 * bootstrap vCPU's thread out of `KVM_RUN` so the main loop looks, and waits
 * for the reply (see {@linkcode Mailbox}).
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";
import { type KickTarget, Vcpu } from "../kvm/vcpu.ts";
import { describeVcpu, Mailbox, MailboxKind, MailboxState } from "./mailbox.ts";
import { completeUnemulated } from "./unemulated.ts";

/** Starts an AP loop. */
export interface ApStartMessage {
  /** Discriminant. */
  kind: "ap";
  /** The vCPU fd, owned by the main thread's Vcpu. */
  fd: number;
  /** The vCPU id. */
  id: number;
  /** `KVM_GET_VCPU_MMAP_SIZE`. */
  mmapSize: number;
  /** The owner's kick target: the worker adopts the vCPU through its lifetime record. */
  kick: KickTarget;
  /** The mailbox shared with the main thread. */
  mailbox: SharedArrayBuffer;
  /** The bootstrap vCPU's thread, to kick when a request is waiting. */
  bsp: KickTarget;
}

interface WorkerScope {
  onmessage: ((event: MessageEvent<ApStartMessage>) => void) | null;
}
const scope = globalThis as unknown as WorkerScope;

function runAp(msg: ApStartMessage): void {
  const box = new Mailbox(msg.mailbox);
  const vcpu = Vcpu.adopt(msg.fd, msg.id, msg.mmapSize, msg.kick);
  // The main thread learns this thread's id (to kick it) through the mailbox: its event loop
  // is busy running the bootstrap vCPU. Losing the race to a stop means never running.
  const claimed = Atomics.compareExchange(
    box.words,
    Mailbox.THREAD_ID,
    0,
    vcpu.kickTarget.threadId,
  );
  Atomics.notify(box.words, Mailbox.THREAD_ID);
  if (claimed !== 0) {
    vcpu.close();
    Atomics.store(box.words, Mailbox.DONE, 1);
    Atomics.notify(box.words, Mailbox.DONE);
    return;
  }
  const request = (kind: number): void => {
    box.set(MailboxKind.INDEX, kind);
    Atomics.store(box.words, MailboxState.INDEX, MailboxState.REQUEST);
    Vcpu.kick(msg.bsp);
    while (
      Atomics.load(box.words, MailboxState.INDEX) === MailboxState.REQUEST && !box.stopping
    ) {
      Atomics.wait(box.words, MailboxState.INDEX, MailboxState.REQUEST, 1000);
    }
    Atomics.store(box.words, MailboxState.INDEX, MailboxState.IDLE);
  };
  const fatal = (code: number, detail: string): void => {
    box.setText(`${detail}\n${describeVcpu(vcpu)}`);
    box.set(Mailbox.CODE, code);
    request(MailboxKind.FATAL);
  };
  try {
    while (!box.stopping) {
      let exit;
      try {
        exit = vcpu.run();
      } catch (e) {
        // An AP waiting for INIT/SIPI returns EAGAIN when woken: run it again (as QEMU does).
        if (e instanceof KvmError && e.errno === Errno.EAGAIN) continue;
        throw e;
      }
      switch (exit.reason) {
        case "io":
          box.setIo(exit.direction, exit.port, exit.size, exit.count, exit.data);
          request(MailboxKind.IO);
          if (exit.direction === "in") exit.data.set(box.data.subarray(0, exit.data.length));
          break;
        case "mmio":
          box.setMmio(exit.address, exit.isWrite, exit.data);
          request(MailboxKind.MMIO);
          if (!exit.isWrite) exit.data.set(box.data.subarray(0, exit.length));
          break;
        case "interrupted":
        case "hlt":
          break;
        case "shutdown":
          fatal(Mailbox.FATAL_SHUTDOWN, `vCPU ${msg.id}: triple fault (KVM_EXIT_SHUTDOWN)`);
          break;
        case "internalError":
          // int3/fwait that the KVM's emulator gave up on (kvm_pvm): finished here, as on the BSP.
          if (completeUnemulated(exit, undefined, vcpu)) break;
          fatal(
            Mailbox.FATAL_INTERNAL,
            `vCPU ${msg.id}: KVM internal error, suberror ${exit.suberror}${
              exit.instruction ? ` on ${exit.instruction}` : ""
            }`,
          );
          break;
        case "systemEvent":
          box.set(Mailbox.EXTRA, exit.type);
          fatal(Mailbox.FATAL_SYSTEM_EVENT, `vCPU ${msg.id}: system event ${exit.type}`);
          break;
        default:
          fatal(Mailbox.FATAL_OTHER, `vCPU ${msg.id}: unexpected exit ${exit.reason}`);
      }
    }
  } catch (e) {
    if (!box.stopping) fatal(Mailbox.FATAL_OTHER, `vCPU ${msg.id}: ${(e as Error).message}`);
  } finally {
    vcpu.close();
    Atomics.store(box.words, Mailbox.DONE, 1);
    Atomics.notify(box.words, Mailbox.DONE);
  }
}

scope.onmessage = (event) => runAp(event.data);
