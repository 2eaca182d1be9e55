/**
 * The application processors of a machine whose devices live on the calling
 * thread (`LinuxMachine`, `MultibootMachine`): one Worker per AP
 * (`ap_worker.ts`), each with a shared {@linkcode Mailbox}. Internal to the
 * machines.
 *
 * An AP's worker posts its port I/O, MMIO and fatal exits in its mailbox and
 * kicks the bootstrap vCPU out of `KVM_RUN`; the machine's run loop then calls
 * {@linkcode ApWorkers.serve}, which hands each waiting request to the
 * machine's handlers and releases the AP. The machine keeps its device wiring
 * and its exit policy; this module owns the workers' lifetime.
 *
 * @module
 */

import { Errno, KvmError } from "../errors.ts";
import { type KickTarget, Vcpu } from "../kvm/vcpu.ts";
import type { ApStartMessage } from "./ap_worker.ts";
import { describeVcpu, Mailbox, MailboxKind, MailboxState } from "./mailbox.ts";

/**
 * What the machine does with the APs' requests, on the bootstrap vCPU's
 * thread. Made once per machine: serving allocates nothing per request.
 */
export interface ApHandlers {
  /** A port access; for `"in"` fill `data` (`size * count` bytes). */
  io(
    vcpu: number,
    direction: "in" | "out",
    port: number,
    size: number,
    count: number,
    data: Uint8Array,
  ): void;
  /** An MMIO access; for a read fill `data`. */
  mmio(vcpu: number, address: number, isWrite: boolean, data: Uint8Array): void;
  /** The AP triple-faulted (`KVM_EXIT_SHUTDOWN`); `detail` has its register dump. */
  tripleFault(vcpu: number, detail: string): void;
  /** The AP reported a system event of `type`. */
  systemEvent(vcpu: number, type: number, detail: string): void;
  /** The AP cannot go on (internal error, unexpected exit, a failing ioctl). */
  error(vcpu: number, detail: string): void;
}

interface Ap {
  vcpu: Vcpu;
  box: Mailbox;
  worker?: Worker;
  /** Why the worker failed to start, if it did. */
  error?: string;
  /** Whether the worker never reported its loop's end when stopped. */
  stuck?: boolean;
}

/** One Worker per application processor, and the mailboxes they share with the bootstrap thread. */
export class ApWorkers {
  #aps: Ap[] = [];

  /** How many APs there are. */
  get count(): number {
    return this.#aps.length;
  }

  /**
   * Starts one Worker per AP without waiting for them (a worker takes about a
   * second to load); {@linkcode waitReady} waits until each has claimed its vCPU.
   * `vcpus` are the APs (not the bootstrap vCPU); `bsp` is the thread they kick
   * when a request waits. Call once.
   */
  start(vcpus: readonly Vcpu[], bsp: KickTarget, mmapSize: number): void {
    this.#aps = vcpus.map((vcpu) => ({ vcpu, box: new Mailbox() }));
    for (const ap of this.#aps) {
      const worker = new Worker(new URL("./ap_worker.ts", import.meta.url).href, {
        type: "module",
      });
      ap.worker = worker;
      worker.onerror = (event) => {
        event.preventDefault();
        ap.error = `AP worker for vCPU ${ap.vcpu.id}: ${event.message}`;
      };
      const start: ApStartMessage = {
        kind: "ap",
        fd: ap.vcpu.unsafeFd,
        id: ap.vcpu.id,
        mmapSize,
        kick: ap.vcpu.kickTarget,
        mailbox: ap.box.buffer,
        bsp,
      };
      worker.postMessage(start);
    }
  }

  /**
   * Waits on the event loop until every AP's worker has claimed its vCPU. A
   * worker that fails to load rejects at once with a `KvmError` (EIO) saying
   * why; past `deadline` (a `performance.now()` time) it rejects with
   * ETIMEDOUT. `operation` names the caller's operation in the error.
   */
  async waitReady(operation: string, deadline: number): Promise<void> {
    while (!this.#aps.every((ap) => Atomics.load(ap.box.words, Mailbox.THREAD_ID) !== 0)) {
      const error = this.#aps.find((ap) => ap.error)?.error;
      if (error || performance.now() > deadline) {
        throw new KvmError(
          operation,
          error ? Errno.EIO : Errno.ETIMEDOUT,
          error ?? "the vCPU workers did not start in time",
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  }

  /**
   * Serves every AP whose request waits, then releases it: call from the
   * bootstrap vCPU's loop after each of its exits (a waiting AP kicks it).
   */
  serve(handlers: ApHandlers): void {
    // Indexed, not for-of: this runs after every exit of the bootstrap vCPU.
    for (let i = 0; i < this.#aps.length; i++) {
      const ap = this.#aps[i];
      const words = ap.box.words;
      if (Atomics.load(words, MailboxState.INDEX) !== MailboxState.REQUEST) continue;
      const kind = words[MailboxKind.INDEX];
      const id = ap.vcpu.id;
      if (kind === MailboxKind.IO) {
        const size = words[Mailbox.SIZE];
        const count = words[Mailbox.COUNT];
        handlers.io(
          id,
          words[Mailbox.DIRECTION] === 1 ? "out" : "in",
          words[Mailbox.PORT],
          size,
          count,
          ap.box.data.subarray(0, size * count),
        );
      } else if (kind === MailboxKind.MMIO) {
        const address = (words[Mailbox.PORT] >>> 0) + words[Mailbox.ADDRESS_HIGH] * 0x1_0000_0000;
        const data = ap.box.data.subarray(0, words[Mailbox.SIZE]);
        handlers.mmio(id, address, words[Mailbox.DIRECTION] === 1, data);
      } else if (kind === MailboxKind.FATAL) {
        const code = words[Mailbox.CODE];
        const detail = ap.box.text();
        if (code === Mailbox.FATAL_SHUTDOWN) handlers.tripleFault(id, detail);
        else if (code === Mailbox.FATAL_SYSTEM_EVENT) {
          handlers.systemEvent(id, words[Mailbox.EXTRA], detail);
        } else handlers.error(id, detail);
      }
      Atomics.store(words, MailboxState.INDEX, MailboxState.REPLY);
      Atomics.notify(words, MailboxState.INDEX);
    }
  }

  /**
   * Stops every AP and terminates its worker. An AP in `KVM_RUN` is kicked
   * until its loop reports it ended (5 s at most); one that never does is
   * marked stuck: its registers are not read ({@linkcode describeStopped}),
   * and its vCPU's lifetime record keeps the run area mapped (a leak instead
   * of a crash). Idempotent.
   */
  stop(): void {
    for (const ap of this.#aps) {
      Atomics.store(ap.box.words, Mailbox.STOP, 1);
      Atomics.notify(ap.box.words, MailboxState.INDEX);
    }
    for (const ap of this.#aps) {
      if (!ap.worker) continue;
      // -1 keeps a worker that has not claimed its vCPU yet from running it at all.
      const threadId = Atomics.compareExchange(ap.box.words, Mailbox.THREAD_ID, 0, -1);
      if (threadId > 0) {
        // Kick until the loop reports it ended (a kick can land just before KVM_RUN).
        const target = { ...ap.vcpu.kickTarget, threadId };
        for (let i = 0; i < 50 && Atomics.load(ap.box.words, Mailbox.DONE) === 0; i++) {
          try {
            Vcpu.kick(target);
          } catch {
            // The thread is gone (ESRCH): nothing left to stop.
          }
          Atomics.wait(ap.box.words, Mailbox.DONE, 0, 100);
        }
        // Still in KVM_RUN after 5 s of kicks: reading its registers would block.
        ap.stuck = Atomics.load(ap.box.words, Mailbox.DONE) === 0;
      }
      ap.worker.terminate();
      ap.worker = undefined;
    }
  }

  /**
   * After {@linkcode stop}: a register dump of each AP that stopped (not the
   * stuck ones), each on a new line.
   */
  describeStopped(): string {
    let text = "";
    for (const ap of this.#aps) if (!ap.stuck) text += `\n${describeVcpu(ap.vcpu)}`;
    return text;
  }

  /** Why workers failed to start (one line each; empty when none did). */
  get errors(): string[] {
    return this.#aps.flatMap((ap) => ap.error ? [ap.error] : []);
  }
}
