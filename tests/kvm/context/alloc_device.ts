// An in-worker device that measures the worker's own V8 heap around chunks of
// PIO exits (port 0x10), to show that KvmContext's in-worker hot path (KVM_RUN,
// exit decode, dispatch to this handler) allocates nothing per exit. With
// `allocate: true` the handler allocates one small object per exit: the
// control that proves the measurement can see an allocation.
//
// Shared Int32 words: [0] chunks measured, then one heap growth (bytes) per chunk.

import { type DeviceContext, stopVcpu, type VcpuDevice } from "../../../src/context/types.ts";

export const CHUNK = 1000;

export default function create(context: DeviceContext): VcpuDevice {
  const { shared, chunks, allocate } = context.options as {
    shared: SharedArrayBuffer;
    chunks: number;
    allocate: boolean;
  };
  const words = new Int32Array(shared);
  const done = stopVcpu("measured");
  let exits = 0;
  // Written per exit in the control run, so the allocation escapes.
  let kept: unknown = null;
  let heap = 0;
  return {
    ioPorts: [[0x10, 0x10]],
    ioOut(_port, _size, data) {
      if (allocate) kept = { value: data[0], previous: kept === null ? 0 : 1 };
      if (++exits % CHUNK !== 0) return;
      const now = Deno.memoryUsage().heapUsed;
      const chunk = exits / CHUNK - 1; // chunk 0 only sets the baseline (JIT warm-up)
      if (chunk > 0) words[chunk] = now - heap;
      heap = now;
      words[0] = chunk;
      if (chunk === chunks) return done;
    },
  };
}
