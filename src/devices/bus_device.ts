/**
 * The one device contract of the VMM: a device model inserted on a bus (port
 * I/O or MMIO) at a base and a length sees only offsets into its own range,
 * as with Firecracker's `BusDevice`. The same model can therefore sit at any
 * port or address, on either bus.
 *
 * Accesses carry their bytes in a `Uint8Array` of exactly the access's size
 * (1, 2, 4 or 8), little-endian, as the guest put them on the bus. The bus
 * hands out views it made once (never a fresh array per access), so a device
 * must not keep `data` beyond the call.
 *
 * @module
 */

/** A device model on a port I/O or MMIO bus. */
export interface BusDevice {
  /**
   * The guest reads `data.length` bytes (1, 2, 4 or 8) at `offset` from the
   * device's base: fill `data`, little-endian. What is not written reads as
   * whatever the bus put there (zeroes).
   */
  read(offset: number, data: Uint8Array): void;
  /** The guest writes `data` (1, 2, 4 or 8 bytes, little-endian) at `offset`. */
  write(offset: number, data: Uint8Array): void;
}

/**
 * The little-endian value of an access's bytes, as a number. Eight-byte
 * accesses give the exact value up to 2^53 and the nearest double beyond;
 * devices with 64-bit registers read the halves with `data.subarray` or a
 * `DataView` instead.
 */
export function loadLe(data: Uint8Array): number {
  switch (data.length) {
    case 1:
      return data[0];
    case 2:
      return data[0] | data[1] << 8;
    case 4:
      return (data[0] | data[1] << 8 | data[2] << 16 | data[3] << 24) >>> 0;
    default: {
      let value = 0;
      for (let i = data.length - 1; i >= 0; i--) value = value * 256 + data[i];
      return value;
    }
  }
}

/**
 * Stores `value` little-endian into all of `data` (bytes beyond 32 bits come
 * from `Math.floor(value / 2^32)`, so non-negative integers up to 2^53 round
 * trip through {@linkcode loadLe}).
 */
export function storeLe(data: Uint8Array, value: number): void {
  let low = value >>> 0;
  const n = data.length;
  for (let i = 0; i < n && i < 4; i++, low >>>= 8) data[i] = low & 0xff;
  if (n > 4) {
    let high = Math.floor(value / 0x100000000) >>> 0;
    for (let i = 4; i < n; i++, high >>>= 8) data[i] = high & 0xff;
  }
}
