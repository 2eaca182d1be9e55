// A device whose OUT handler blocks in native code until the main thread
// writes to an eventfd: a read(2) with the kick signal blocked, so neither a
// kick nor terminate() can end it. Then it reads guest RAM through a view
// taken before, and writes the exit's data (the run area).
import { native } from "../../../src/ffi/library.ts";
import type { DeviceContext, VcpuDevice } from "../../../src/context/types.ts";

export default function create({ memory, options }: DeviceContext): VcpuDevice {
  const { fd, shared } = options as { fd: number; shared: SharedArrayBuffer };
  const words = new Int32Array(shared);
  const value = new BigUint64Array(1);
  // pthread_sigmask(SIG_BLOCK, {kick signal}): a library call that does not return on signals.
  const libc = Deno.dlopen("libc.so.6", {
    pthread_sigmask: { parameters: ["i32", "buffer", "pointer"], result: "i32" },
  });
  const set = new BigUint64Array(16);
  const signal = native().kvm_kick_signal();
  set[0] = 1n << BigInt(signal - 1);
  return {
    ioPorts: [[0x10, 0x10]],
    ioOut(_port, _size, data) {
      const ram = memory.view(0x1000, 16);
      libc.symbols.pthread_sigmask(0, /* SIG_BLOCK */ new Uint8Array(set.buffer), null);
      Atomics.store(words, 0, 1); // in the handler
      native().kvm_read_u64(fd, new Uint8Array(value.buffer));
      data[0] = ram[0] ^ ram[1]; // both touch memory that close() must keep
      Atomics.store(words, 0, 2);
    },
  };
}
