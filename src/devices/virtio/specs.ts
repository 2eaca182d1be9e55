/**
 * From a {@linkcode VirtioDeviceSpec} to its front (on the machine's thread)
 * and its backend (on the device thread).
 *
 * @module
 */

import { BlockBackend, blockFront } from "./block.ts";
import type { VirtioBackend, VirtioDeviceSpec, VirtioFront } from "./device.ts";
import { RngBackend, rngFront } from "./rng.ts";

/** What the driver of `spec`'s device is shown (a block device stats its file). */
export function frontOf(spec: VirtioDeviceSpec): VirtioFront {
  switch (spec.kind) {
    case "block":
      return blockFront(spec);
    case "rng":
      return rngFront();
  }
}

/** The backend serving `spec`'s queues (a block device opens its file). */
export function createBackend(spec: VirtioDeviceSpec): VirtioBackend {
  switch (spec.kind) {
    case "block":
      return new BlockBackend(spec);
    case "rng":
      return new RngBackend();
  }
}
