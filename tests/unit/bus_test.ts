// The one bus for port I/O and MMIO: devices see offsets from their base,
// ranges never overlap, unclaimed accesses read as all-ones and are reported
// within a fixed bound, and an exit's fields are checked before any device
// sees an access. No KVM needed.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import {
  Bus,
  describeUnhandled,
  deviceWindow,
  type UnhandledAccess,
} from "../../src/devices/bus.ts";
import { type BusDevice, loadLe, storeLe } from "../../src/devices/bus_device.ts";
import { KvmError } from "../../src/errors.ts";

/** A device that records every access as [kind, offset, bytes] and reads as `offset + 1`. */
function recorder(): BusDevice & { log: [string, number, number[]][] } {
  const log: [string, number, number[]][] = [];
  return {
    log,
    read(offset, data) {
      storeLe(data, offset + 1);
      log.push(["read", offset, [...data]]);
    },
    write(offset, data) {
      log.push(["write", offset, [...data]]);
    },
  };
}

function kvmError(code: string, operation: string) {
  return (e: unknown): true => {
    ok(e instanceof KvmError, `a KvmError, got ${e}`);
    strictEqual(e.code, code);
    strictEqual(e.operation, operation);
    return true;
  };
}

Deno.test("bus: a device sees offsets from its base, on either space", () => {
  for (const [space, base] of [["pio", 0x3f8], ["mmio", 0xfeb0_0000_0000]] as const) {
    const bus = new Bus({ space });
    const dev = recorder();
    bus.insert(base, 8, dev);
    const data = new Uint8Array(2);
    ok(bus.read(base + 5, data));
    deepStrictEqual([...data], [6, 0], "read offset 5 as 5 + 1");
    ok(bus.write(base + 7, new Uint8Array([0xaa])));
    ok(!bus.write(base + 8, new Uint8Array([0xbb])), "past the range: nobody's");
    deepStrictEqual(dev.log, [["read", 5, [6, 0]], ["write", 7, [0xaa]]]);
    strictEqual(bus.deviceAt(base), dev);
    strictEqual(bus.deviceAt(base - 1), undefined);
  }
});

Deno.test("bus: insert refuses overlaps (EEXIST) and ranges outside the space (EINVAL)", () => {
  const pio = new Bus({ space: "pio" });
  pio.insert(0x60, 1, recorder());
  pio.insert(0x64, 1, recorder());
  pio.insert(0x61, 3, recorder()); // exactly the gap
  for (const [base, length] of [[0x60, 1], [0x5f, 2], [0x63, 2], [0x50, 0x100]]) {
    throws(() => pio.insert(base, length, recorder()), kvmError("EEXIST", "insert bus device"));
  }
  for (const [base, length] of [[0xffff, 2], [-1, 1], [0x10, 0], [0.5, 1], [0x10, Number.NaN]]) {
    throws(() => pio.insert(base, length, recorder()), kvmError("EINVAL", "insert bus device"));
  }
  const mmio = new Bus();
  mmio.insert(2 ** 52, 0x1000, recorder());
  throws(() => mmio.insert(2 ** 53, 1, recorder()), kvmError("EINVAL", "insert bus device"));
  deepStrictEqual(pio.ranges().map((r) => [r.base, r.length]), [[0x60, 1], [0x61, 3], [0x64, 1]]);
});

Deno.test("bus: MMIO lookup by binary search over many ranges; remove takes one away", () => {
  const mmio = new Bus({ space: "mmio" });
  const devices: BusDevice[] = [];
  // Inserted out of order: 64 windows of 0x200 bytes, 0x1000 apart, from 0xd000_0000.
  for (let i = 0; i < 64; i++) {
    const k = (i * 37) % 64;
    const dev = recorder();
    devices[k] = dev;
    mmio.insert(0xd000_0000 + k * 0x1000, 0x200, dev);
  }
  for (let k = 0; k < 64; k++) {
    const base = 0xd000_0000 + k * 0x1000;
    strictEqual(mmio.deviceAt(base), devices[k]);
    strictEqual(mmio.deviceAt(base + 0x1ff), devices[k]);
    strictEqual(mmio.deviceAt(base + 0x200), undefined, "the gap after a window");
  }
  strictEqual(mmio.remove(0xd000_0000 + 5 * 0x1000), devices[5]);
  strictEqual(mmio.deviceAt(0xd000_0000 + 5 * 0x1000), undefined);
  strictEqual(mmio.remove(0xd000_0000 + 5 * 0x1000), undefined, "removed already");
  mmio.insert(0xd000_0000 + 5 * 0x1000, 0x1000, devices[5]); // the freed range, now larger
});

Deno.test("bus: unclaimed reads are all-ones, writes dropped; reports are bounded", () => {
  const reports: UnhandledAccess[] = [];
  const bus = new Bus({ space: "mmio", reportLimit: 4, onUnhandled: (a) => reports.push(a) });
  const data = new Uint8Array(4);
  // A guest scanning 10,000 addresses, each twice.
  for (let i = 0; i < 20_000; i++) {
    bus.handleMmio(0x1000 * (i % 10_000), (i & 1) === 1, data);
    if ((i & 1) === 0) deepStrictEqual([...data], [0xff, 0xff, 0xff, 0xff]);
  }
  deepStrictEqual(
    reports.slice(0, 4).map((a) => [a.address, a.unreported]),
    [[0, 0], [0x1000, 0], [0x2000, 0], [0x3000, 0]],
    "the first four addresses, once each",
  );
  deepStrictEqual(
    reports.slice(4).map((a) => a.unreported),
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
    "then only the count, at powers of two",
  );
  // The four reported addresses, seen again, are neither reported nor counted again.
  deepStrictEqual(bus.unhandled, { accesses: 20_000, reported: 4, unreported: 19_992 });
  strictEqual(describeUnhandled(reports[0]), "MMIO read at 0x0");
  strictEqual(
    describeUnhandled(reports[5], 4),
    "2 MMIO accesses beyond the first 4 addresses (latest 0x5000), not reported one by one",
  );
  const pio = new Bus({ space: "pio", onUnhandled: (a) => reports.push(a) });
  pio.handlePio("out", 0x2f8, 2, 1, new Uint8Array(2));
  strictEqual(describeUnhandled(reports.at(-1)!), "port 0x2f8 out (2 bytes)");
});

Deno.test("bus: string I/O (count > 1) is one access per element, in order", () => {
  const bus = new Bus({ space: "pio" });
  const dev = recorder();
  bus.insert(0x3f8, 8, dev);
  // rep outsw of three words to 0x3f9.
  bus.handlePio("out", 0x3f9, 2, 3, new Uint8Array([1, 2, 3, 4, 5, 6]));
  deepStrictEqual(dev.log, [["write", 1, [1, 2]], ["write", 1, [3, 4]], ["write", 1, [5, 6]]]);
  // rep insb of four bytes from 0x3fa, into the start of a larger buffer.
  const area = new Uint8Array(6).fill(0xee);
  bus.handlePio("in", 0x3fa, 1, 4, area);
  deepStrictEqual([...area], [3, 3, 3, 3, 0xee, 0xee]);
  // A 4-byte IN of an unclaimed port: all-ones.
  bus.handlePio("in", 0x80, 4, 1, area);
  deepStrictEqual([...area.subarray(0, 4)], [0xff, 0xff, 0xff, 0xff]);
});

Deno.test("bus: handleMmio refuses lengths outside 1..8 and impossible addresses", () => {
  const bus = new Bus();
  const dev = recorder();
  bus.insert(0x1000, 0x10, dev);
  for (const [address, length] of [[0x1000, 0], [0x1000, 9], [-1, 4], [0.5, 1], [2 ** 64, 1]]) {
    throws(
      () => bus.handleMmio(address, false, new Uint8Array(length)),
      kvmError("EINVAL", "handle MMIO"),
    );
  }
  deepStrictEqual(dev.log, [], "no device saw an access");
  const eight = new Uint8Array(8);
  bus.handleMmio(0x1008, false, eight);
  strictEqual(loadLe(eight), 9);
});

Deno.test("bus: deviceWindow shows a device from an offset into its range", () => {
  const bus = new Bus({ space: "pio" });
  const dev = recorder();
  bus.insert(0x60, 1, dev);
  bus.insert(0x64, 1, deviceWindow(dev, 4));
  const data = new Uint8Array(1);
  bus.read(0x64, data);
  bus.write(0x60, data);
  deepStrictEqual(dev.log, [["read", 4, [5]], ["write", 0, [5]]]);
});

// The exit dispatch allocates nothing per access: heap growth sampled around
// chunks of 1000 dispatches (as tests/kvm/hot_path_alloc_test.ts does for the
// run loop), with a control that allocates one object per access to show the
// measurement can fail.
Deno.test("bus: handlePio (single and string I/O) and handleMmio allocate nothing per access", async (t) => {
  const CHUNK = 1000;
  const sink: unknown[] = [null];
  let total = 0;
  const device: BusDevice = {
    read: (offset, data) => storeLe(data, offset),
    write: (_offset, data) => void (total += data[0]),
  };
  const pio = new Bus({ space: "pio" });
  pio.insert(0x3f8, 8, device);
  const mmio = new Bus({ space: "mmio" });
  for (let i = 0; i < 32; i++) mmio.insert(0xd000_0000 + i * 0x1000, 0x100, device);
  const area = new Uint8Array(16);
  const one = area.subarray(0, 1);
  const four = area.subarray(0, 4);
  const eight = area.subarray(0, 8);
  const chunk = (allocate: boolean) => () => {
    for (let i = 0; i < CHUNK; i++) {
      pio.handlePio("out", 0x3f8, 1, 1, one);
      pio.handlePio("in", 0x3fd, 2, 4, area); // rep insw of 4 words
      pio.handlePio("out", 0x3f9, 4, 4, area); // rep outsd of 4 dwords
      mmio.handleMmio(0xd001_f008, false, eight);
      mmio.handleMmio(0xd000_7004, true, four);
      if (allocate) sink[0] = { i };
    }
  };
  const measure = (run: () => void, chunks: number) => {
    const growth: number[] = [];
    for (let c = 0; c < chunks; c++) {
      const before = Deno.memoryUsage().heapUsed;
      run();
      growth.push(Deno.memoryUsage().heapUsed - before);
    }
    growth.sort((a, b) => a - b);
    return {
      bytesPerAccess: growth[growth.length >> 1] / CHUNK,
      collections: growth.filter((g) => g < 0).length,
    };
  };
  await t.step("control: one object per access is seen", () => {
    const run = chunk(true);
    measure(run, 10);
    const seen = measure(run, 20);
    ok(seen.bytesPerAccess >= 8 || seen.collections >= 2, JSON.stringify(seen));
  });
  await t.step("100k dispatches: no growth", () => {
    const run = chunk(false);
    measure(run, 10);
    const seen = measure(run, 100);
    ok(seen.bytesPerAccess < 1 && seen.collections <= 2, JSON.stringify(seen));
    ok(total > 0);
  });
});
