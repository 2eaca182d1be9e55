// An in-worker device for the callback tests and the context benchmark: IN
// from port 0x60 returns a running counter, OUT to port 0x61 checks that the
// guest echoed it back, HLT stops the vCPU. Mismatches are counted in the
// SharedArrayBuffer given as `options.shared` (Int32 words: 0 reads, 1 bad echoes).

// Imports only the context's types module: every worker loads its imports.
import { type DeviceContext, stopVcpu, type VcpuDevice } from "../../../src/context/types.ts";

export default function create(context: DeviceContext): VcpuDevice {
  const words = new Int32Array((context.options as { shared: SharedArrayBuffer }).shared);
  let next = 0;
  return {
    ioPorts: [[0x60, 0x61]],
    ioIn(_port, _size, data) {
      data[0] = next;
      words[0]++;
    },
    ioOut(_port, _size, data) {
      if (data[0] !== next) words[1]++;
      next = (next + 1) & 0xff;
    },
    halt: () => stopVcpu("halted"),
  };
}
