/**
 * The device module every application processor's worker loads (see
 * `ap_runtime.ts`): it finishes, on the AP's own thread, the instructions a
 * KVM's emulator gives up on (`completeUnemulated`, as the bootstrap vCPU's
 * loop does). Everything else goes to the machine through the mailbox.
 *
 * @module
 * @internal
 */

import type { DeviceContext, VcpuDevice } from "../context/types.ts";
import { completeUnemulated } from "./unemulated.ts";

/** The factory the vCPU worker calls (the default export of a device module). */
export default function apDevice(context: DeviceContext): VcpuDevice {
  const vcpu = context.vcpu;
  return {
    exit: (exit) => exit.reason === "internalError" && completeUnemulated(exit, undefined, vcpu),
  };
}
