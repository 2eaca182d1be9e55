// A device for an AP's worker whose OUT handler blocks in native code until
// the main thread writes to an eventfd: a read(2) with the kick signal
// blocked, so neither a kick nor terminate() can end it. Then it writes the
// exit's data (the run area), which ApWorkers.stop() must have kept mapped.
import { native } from "../../../src/ffi/library.ts";
import type { DeviceContext, VcpuDevice } from "../../../src/context/types.ts";

export default function create({ options }: DeviceContext): VcpuDevice {
  const { fd, shared } = options as { fd: number; shared: SharedArrayBuffer };
  const words = new Int32Array(shared);
  const value = new BigUint64Array(1);
  const libc = Deno.dlopen("libc.so.6", {
    pthread_sigmask: { parameters: ["i32", "buffer", "pointer"], result: "i32" },
  });
  const set = new BigUint64Array(16);
  set[0] = 1n << BigInt(native().kvm_kick_signal() - 1);
  return {
    ioPorts: [[0x10, 0x10]],
    ioOut(_port, _size, data) {
      libc.symbols.pthread_sigmask(0, /* SIG_BLOCK */ new Uint8Array(set.buffer), null);
      Atomics.store(words, 0, 1); // in the handler
      native().kvm_read_u64(fd, new Uint8Array(value.buffer));
      data[0] = 0x5a; // the run area, which must still be mapped
      Atomics.store(words, 0, 2);
    },
  };
}
