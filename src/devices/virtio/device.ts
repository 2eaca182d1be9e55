/**
 * What a virtio device is made of here: a front (what the transport shows the
 * driver: id, features, queue sizes, configuration space), computed where the
 * machine is built, and a backend (the work on the queues), made on the
 * thread that serves the queues from the same plain, postable
 * {@linkcode VirtioDeviceSpec}.
 *
 * @module
 */

import type { KickTarget } from "../../kvm/kick.ts";
import type { ConsoleRings } from "./console.ts";
import type { SplitQueue } from "./queue.ts";

/** A block device backed by a raw image file. */
export interface BlockSpec {
  /** Which device. */
  kind: "block";
  /** The image file (its size rounded down to 512-byte sectors is the capacity). */
  path: string;
  /** Refuse writes (`VIRTIO_BLK_F_RO`); the file is opened read-only. */
  readOnly?: boolean;
  /** The serial the guest reads with GET_ID (at most 20 bytes; default from the path). */
  id?: string;
}

/** An entropy source (virtio-rng) fed by the host's `crypto.getRandomValues`. */
export interface RngSpec {
  /** Which device. */
  kind: "rng";
}

/** A console (the guest's `hvc0`) whose bytes cross threads in shared rings. */
export interface ConsoleSpec {
  /** Which device. */
  kind: "console";
  /** The rings (from `createConsoleRings`; the machine keeps a `ConsoleHost` on them). */
  rings: ConsoleRings;
  /** The thread to kick when output arrives (the machine's vCPU loop drains it). */
  kick?: KickTarget;
}

/** A network card on a tap interface (opened by the machine: `openTap`). */
export interface NetSpec {
  /** Which device. */
  kind: "net";
  /** The tap's fd (non-blocking); the device thread owns and closes it. */
  fd: number;
  /** The card's MAC address (6 bytes). */
  mac: Uint8Array;
}

/** A serializable description of one virtio device. */
export type VirtioDeviceSpec = BlockSpec | RngSpec | ConsoleSpec | NetSpec;

/** What the transport shows the driver. */
export interface VirtioFront {
  /** Device id (`DeviceId`). */
  deviceId: number;
  /** Offered features (including `VIRTIO_F_VERSION_1`). */
  features: bigint;
  /** Each queue's maximum size (a power of two); their count is the device's queue count. */
  queueMax: readonly number[];
  /** The device-specific configuration space (read-only to the driver). */
  config: Uint8Array;
}

/** The work of a device on its queues, on the thread that serves them. */
export interface VirtioBackend {
  /**
   * Serves every chain available on queue `index`; returns whether any was
   * returned on the used ring. Throws `VirtioError` for a malformed request
   * (the device then needs a reset).
   */
  process(index: number, queue: SplitQueue): boolean;
  /**
   * The driver set `DRIVER_OK` with `features` negotiated: called once per
   * driver (after each reset), before its first `process`. Optional.
   */
  activate?(features: bigint): void;
  /** Forgets any per-driver state (a device reset). */
  reset(): void;
  /** Releases host resources (files). Idempotent. */
  close(): void;
}
