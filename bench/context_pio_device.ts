/**
 * The in-worker device of bench case 3: answers the PIO guest's `out 0x10, al`
 * inside the vCPU's worker, checks the counter, and stops the vCPU after the
 * number of exits the main thread put in the shared budget word, recording
 * the time of the first and last exit of the block in the worker.
 *
 * Shared layout (`options.shared`): Int32 [0] budget (exits this block),
 * [1] wrong values seen; Float64 [1] first exit's time, [2] last exit's time.
 *
 * @module
 */

import type { DeviceContext, VcpuDevice } from "../src/context/types.ts";
import { stopVcpu } from "../src/context/types.ts";
import { PIO_PORT } from "./guests.ts";

/** The factory the worker calls. */
export default function create(context: DeviceContext): VcpuDevice {
  const shared = (context.options as { shared: SharedArrayBuffer }).shared;
  const words = new Int32Array(shared, 0, 2);
  const times = new Float64Array(shared, 8, 2);
  const stop = stopVcpu("block done"); // made once: the hot path allocates nothing
  let next = 0;
  let seen = 0;
  return {
    ioPorts: [[PIO_PORT, PIO_PORT]],
    ioOut(_port, _size, data) {
      if (data[0] !== (next & 0xff)) words[1]++;
      next++;
      if (seen === 0) times[0] = performance.now();
      if (++seen < words[0]) return;
      times[1] = performance.now();
      seen = 0;
      return stop;
    },
  };
}
