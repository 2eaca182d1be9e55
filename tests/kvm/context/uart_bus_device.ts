// A KvmContext device module built from the VMM's bus: three 16550A UARTs,
// the same model at COM1 (0x3f8), COM2 (0x2f8) and in MMIO space (0x20000),
// served in the vCPU's worker through busVcpuDevice. What each UART sends is
// logged into the SharedArrayBuffer given as `options.shared`: Int32 word 0
// counts bytes, then (uart, byte) pairs from byte 4 (uart 1 = COM1, 2 = COM2,
// 3 = the MMIO one).

import type { DeviceContext, VcpuDevice } from "../../../src/context/types.ts";
import { Bus } from "../../../src/devices/bus.ts";
import { busVcpuDevice } from "../../../src/devices/bus_vcpu_device.ts";
import { Uart16550 } from "../../../src/devices/uart_16550.ts";

/** Where the MMIO UART sits (outside the test's 64 KiB of RAM). */
export const MMIO_UART = 0x20000;

export default function create(context: DeviceContext): VcpuDevice {
  const { shared } = context.options as { shared: SharedArrayBuffer };
  const count = new Int32Array(shared, 0, 1);
  const log = new Uint8Array(shared, 4);
  const sink = (uart: number) => (byte: number) => {
    const n = Atomics.add(count, 0, 1);
    if (2 * n + 1 < log.length) {
      log[2 * n] = uart;
      log[2 * n + 1] = byte;
    }
  };
  const pio = new Bus({ space: "pio" });
  pio.insert(0x3f8, 8, new Uart16550({ output: sink(1) }));
  pio.insert(0x2f8, 8, new Uart16550({ output: sink(2) }));
  const mmio = new Bus({ space: "mmio" });
  mmio.insert(MMIO_UART, 8, new Uart16550({ output: sink(3) }));
  return busVcpuDevice({ pio, mmio });
}
