/**
 * From a {@linkcode VirtioDeviceSpec} to its front (on the machine's thread)
 * and its backend (on the device thread).
 *
 * @module
 */

import { BlockBackend, blockFront } from "./block.ts";
import type { VirtioBackend, VirtioDeviceSpec, VirtioFront } from "./device.ts";
import { RngBackend, rngFront } from "./rng.ts";
import { ConsoleBackend, consoleFront } from "./console.ts";
import { Vcpu } from "../../kvm/vcpu.ts";
import { NetBackend, netFront } from "./net.ts";
import { TapPort } from "./tap.ts";

/** What the driver of `spec`'s device is shown (a block device stats its file). */
export function frontOf(spec: VirtioDeviceSpec): VirtioFront {
  switch (spec.kind) {
    case "block":
      return blockFront(spec);
    case "rng":
      return rngFront();
    case "console":
      return consoleFront();
    case "net":
      return netFront(spec.mac);
  }
}

/**
 * The backend serving `spec`'s queues (a block device opens its file);
 * `stopping` tells a backend that waits (the console, for room) to give up.
 */
export function createBackend(
  spec: VirtioDeviceSpec,
  stopping: () => boolean = () => false,
): VirtioBackend {
  switch (spec.kind) {
    case "block":
      return new BlockBackend(spec);
    case "rng":
      return new RngBackend();
    case "console": {
      const kick = spec.kick;
      return new ConsoleBackend(spec.rings, () => kick && Vcpu.kick(kick), stopping);
    }
    case "net":
      return new NetBackend(new TapPort(spec.fd));
  }
}
