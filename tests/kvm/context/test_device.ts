// An in-worker device for the KvmContext tests. Its state lives in a
// SharedArrayBuffer given in the options, so the test (main thread) reads what
// every vCPU's worker saw.
//
// Per vCPU, 8 Int32 words at `vcpuId * 8`:
//   0 last count written to port 0x40     1 reports on port 0x41 naming another vCPU
//   2 OUTs seen                            3 counts out of sequence
//   4 APIC id reported on port 0x30 (+1)   5 IN answered on port 0x51
// Port 0x42 stops the vCPU ("done"), 0x43 stops the whole VM, 0x50 throws.

// Imports only the context's types module: every worker loads its imports.
import { type DeviceContext, stopVcpu, type VcpuDevice } from "../../../src/context/types.ts";

/** Options posted to every worker. */
export interface TestDeviceOptions {
  shared: SharedArrayBuffer;
  /** Throw a timer-driven uncaught error once the worker is idle (kills the worker). */
  crashWorker?: boolean;
}

export default function create(context: DeviceContext): VcpuDevice {
  const options = context.options as TestDeviceOptions;
  const words = new Int32Array(options.shared);
  const base = context.vcpuId * 8;
  if (options.crashWorker) {
    setTimeout(() => {
      throw new Error("uncaught error in the worker");
    }, 0);
  }
  return {
    ioPorts: [[0x30, 0x30], [0x40, 0x43], [0x50, 0x51]],
    ioOut(port, size, data, vcpuId) {
      words[base + 2]++;
      const value = size === 1 ? data[0] : data[0] | (data[1] << 8);
      switch (port) {
        case 0x30: // the AP's APIC id
          words[base + 4] = value + 1;
          return stopVcpu(`apic id ${value}`);
        case 0x40: // the vCPU's count
          if (value !== words[base] + 1) words[base + 3]++;
          words[base] = value;
          return;
        case 0x41: // the vCPU names itself (BX = its id)
          if (value !== vcpuId) words[base + 1]++;
          return;
        case 0x42:
          return stopVcpu("done");
        case 0x43: // end the whole VM
          context.stopVm("the guest asked");
          return;
        case 0x50:
          throw new Error("device exploded");
      }
      return false;
    },
    ioIn(port, _size, data) {
      if (port !== 0x51) return false;
      data[0] = 0x34;
      words[base + 5]++;
    },
  };
}
