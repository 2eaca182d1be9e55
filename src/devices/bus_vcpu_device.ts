/**
 * The VMM's buses inside a `KvmContext` worker: {@linkcode busVcpuDevice}
 * turns a port bus and an MMIO bus into the in-worker device a context's
 * device module returns, so the 16550A UART, the legacy PC devices and any
 * other `BusDevice` run on the vCPU's own thread, with no message
 * per exit.
 *
 * A device module is loaded by every vCPU's worker, so each worker builds its
 * own buses and device models: state is per worker. A device that several
 * vCPUs must share keeps its state in a SharedArrayBuffer passed through the
 * module's options (or the guest uses it from one vCPU only, as a console).
 *
 * @example
 * ```ts ignore
 * // uart_device.ts, given to KvmContext.create({ devices: [{ url, options: { shared } }] })
 * import type { DeviceContext } from "@deno-kvm/kvm";
 * import { Bus, busVcpuDevice, COM1_PORT, Uart16550 } from "@deno-kvm/kvm/vmm";
 *
 * export default (context: DeviceContext) => {
 *   const { shared } = context.options as { shared: SharedArrayBuffer };
 *   const out = new Uint8Array(shared);
 *   let n = 0;
 *   const pio = new Bus({ space: "pio" });
 *   pio.insert(COM1_PORT, 8, new Uart16550({ output: (b) => out[n++ % out.length] = b }));
 *   return busVcpuDevice({ pio });
 * };
 * ```
 *
 * @module
 */

import type { VcpuDevice } from "../context/types.ts";
import type { Bus } from "./bus.ts";

/** The buses of {@linkcode busVcpuDevice}. */
export interface VcpuDeviceBuses {
  /** Port I/O devices (a `Bus` of space `"pio"`). */
  pio?: Bus;
  /** MMIO devices (a `Bus` of space `"mmio"`). */
  mmio?: Bus;
}

/**
 * A `KvmContext` in-worker device ({@linkcode VcpuDevice}) serving the
 * ranges of `buses`' devices: it claims exactly those ports and addresses
 * (others go on to the context's next device, callbacks or default) and
 * hands each exit to `Bus.handlePio` / `Bus.handleMmio`, as the machines'
 * run loops do. The ranges are read once, here: insert every device first.
 */
export function busVcpuDevice(buses: VcpuDeviceBuses): VcpuDevice {
  const { pio, mmio } = buses;
  const device: {
    -readonly [K in keyof VcpuDevice]: VcpuDevice[K];
  } = {};
  if (pio) {
    device.ioPorts = pio.ranges().map(({ base, length }) => [base, base + length - 1] as const);
    // `data` holds size * count bytes: count elements of a string instruction.
    device.ioIn = (port, size, data) => pio.handlePio("in", port, size, data.length / size, data);
    device.ioOut = (port, size, data) => pio.handlePio("out", port, size, data.length / size, data);
  }
  if (mmio) {
    device.mmioRanges = mmio.ranges().map(({ base, length }) => [base, base + length - 1] as const);
    device.mmioRead = (address, _length, data) => mmio.handleMmio(address, false, data);
    device.mmioWrite = (address, _length, data) => mmio.handleMmio(address, true, data);
  }
  return device;
}
