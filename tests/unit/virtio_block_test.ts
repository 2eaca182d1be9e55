// virtio-blk and virtio-rng against a fake driver: reads and writes go
// between a temporary image file and the fake guest RAM; every malformed
// request is answered with a status byte (IOERR / UNSUPP), and only a chain
// without a status byte stops the device (DEVICE_NEEDS_RESET).

import { deepStrictEqual, notDeepStrictEqual, strictEqual } from "node:assert/strict";
import {
  BlkStatus,
  BlkType,
  BlockBackend,
  blockFront,
  SECTOR_SIZE,
} from "../../src/devices/virtio/block.ts";
import { MmioReg, Status } from "../../src/devices/virtio/constants.ts";
import { RNG_MAX_REQUEST, RngBackend, rngFront } from "../../src/devices/virtio/rng.ts";
import { type Buf, FakeDriver, RAM_BASE, RAM_SIZE } from "./virtio_driver.ts";

const SECTORS = 64;

function header(type: number, sector: number | bigint): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

/** A temporary image whose sector n is filled with byte n. */
function withDisk(
  readOnly: boolean,
  body: (d: FakeDriver, path: string) => void,
): () => void {
  return () => {
    const path = Deno.makeTempFileSync({ suffix: ".img" });
    try {
      const image = new Uint8Array(SECTORS * SECTOR_SIZE + 100); // a partial sector at the end
      for (let s = 0; s < SECTORS; s++) image.fill(s, s * SECTOR_SIZE, (s + 1) * SECTOR_SIZE);
      Deno.writeFileSync(path, image);
      const spec = { kind: "block" as const, path, readOnly, id: "disk-serial-0123456789-extra" };
      const backend = new BlockBackend(spec);
      try {
        const d = new FakeDriver(blockFront(spec), backend);
        strictEqual(d.init() & Status.DRIVER_OK, Status.DRIVER_OK);
        body(d, path);
      } finally {
        backend.close();
      }
    } finally {
      Deno.removeSync(path);
    }
  };
}

/** Submits one request, kicks, and returns its status byte, used length and buffer addresses. */
function request(d: FakeDriver, bufs: Buf[], indirect = false) {
  const before = d.usedIdx;
  const { head, addrs } = d.submit(bufs, { indirect });
  d.kick();
  strictEqual(d.usedIdx, (before + 1) & 0xffff, "the request was used");
  const used = d.usedElem(before);
  strictEqual(used.id, head);
  const last = bufs[bufs.length - 1] as { write: number };
  const status = d.bytes(addrs[addrs.length - 1] + last.write - 1, 1)[0];
  return { status, len: used.len, addrs };
}

Deno.test("virtio-blk: configuration space (capacity in whole sectors, seg_max) and features", () => {
  const path = Deno.makeTempFileSync();
  try {
    Deno.writeFileSync(path, new Uint8Array(10 * SECTOR_SIZE + 1));
    const front = blockFront({ kind: "block", path, readOnly: true });
    const v = new DataView(front.config.buffer);
    strictEqual(v.getBigUint64(0, true), 10n);
    strictEqual(v.getUint32(12, true), 254);
    strictEqual(front.features & (1n << 5n), 1n << 5n, "VIRTIO_BLK_F_RO");
    strictEqual(front.features & (1n << 9n), 1n << 9n, "VIRTIO_BLK_F_FLUSH");
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test(
  "virtio-blk: a read of sectors 3..5 over two data buffers lands in guest RAM",
  withDisk(false, (d) => {
    const r = request(d, [{ read: header(BlkType.IN, 3) }, { write: 512 }, { write: 1024 }, {
      write: 1,
    }]);
    strictEqual(r.status, BlkStatus.OK);
    strictEqual(r.len, 1537);
    strictEqual(d.bytes(r.addrs[1], 512).every((b) => b === 3), true);
    const second = d.bytes(r.addrs[2], 1024);
    strictEqual(second.subarray(0, 512).every((b) => b === 4), true);
    strictEqual(second.subarray(512).every((b) => b === 5), true);
    // The configuration space reads at any width: capacity's low byte.
    const one = new Uint8Array(1);
    d.transport.read(MmioReg.CONFIG, one);
    strictEqual(one[0], SECTORS);
  }),
);

Deno.test(
  "virtio-blk: a write through an indirect table reaches the file, and a flush succeeds",
  withDisk(false, (d, path) => {
    const data = new Uint8Array(1024).fill(0xab);
    const w = request(d, [{ read: header(BlkType.OUT, 10) }, { read: data }, { write: 1 }], true);
    strictEqual(w.status, BlkStatus.OK);
    strictEqual(w.len, 1);
    const f = request(d, [{ read: header(BlkType.FLUSH, 0) }, { write: 1 }]);
    strictEqual(f.status, BlkStatus.OK);
    const image = Deno.readFileSync(path);
    strictEqual(image.subarray(10 * 512, 12 * 512).every((b) => b === 0xab), true);
    strictEqual(image[12 * 512], 12, "the next sector untouched");
  }),
);

Deno.test(
  "virtio-blk: GET_ID answers the first 20 bytes of the serial",
  withDisk(false, (d) => {
    const r = request(d, [{ read: header(BlkType.GET_ID, 0) }, { write: 20 }, { write: 1 }]);
    strictEqual(r.status, BlkStatus.OK);
    strictEqual(r.len, 21);
    strictEqual(new TextDecoder().decode(d.bytes(r.addrs[1], 20)), "disk-serial-01234567");
  }),
);

Deno.test(
  "virtio-blk: a read-only disk refuses writes (IOERR) and leaves the file alone",
  withDisk(true, (d, path) => {
    const w = request(d, [{ read: header(BlkType.OUT, 0) }, { read: new Uint8Array(512) }, {
      write: 1,
    }]);
    strictEqual(w.status, BlkStatus.IOERR);
    strictEqual(Deno.readFileSync(path)[0], 0);
    strictEqual(
      request(d, [{ read: header(BlkType.IN, 1) }, { write: 512 }, { write: 1 }]).status,
      BlkStatus.OK,
    );
  }),
);

Deno.test(
  "virtio-blk: malformed requests get IOERR or UNSUPP, and the device keeps running",
  withDisk(false, (d) => {
    const cases: [string, Buf[], number][] = [
      [
        "past the end",
        [{ read: header(BlkType.IN, SECTORS - 1) }, { write: 1024 }, { write: 1 }],
        1,
      ],
      ["sector 2^64-1", [{ read: header(BlkType.IN, 0xffff_ffff_ffff_ffffn) }, { write: 512 }, {
        write: 1,
      }], 1],
      ["a partial sector", [{ read: header(BlkType.IN, 0) }, { write: 100 }, { write: 1 }], 1],
      ["a short header", [{ read: new Uint8Array(8) }, { write: 1 }], 1],
      ["read data in a read request", [{ read: header(BlkType.IN, 0) }, {
        read: new Uint8Array(512),
      }, { write: 1 }], 1],
      ["an unknown type", [{ read: header(77, 0) }, { write: 1 }], 2],
    ];
    for (const [name, bufs, expected] of cases) {
      strictEqual(request(d, bufs).status, expected, name);
    }
    strictEqual(d.status & Status.DEVICE_NEEDS_RESET, 0);
  }),
);

Deno.test(
  "virtio-blk: one preadv/pwritev per request: the header shares a buffer with the data, the status with the last data, 60 one-sector buffers in an indirect table",
  withDisk(false, (d, path) => {
    // Write: header and sectors 20..21 in one readable buffer.
    const joined = new Uint8Array(16 + 1024);
    joined.set(header(BlkType.OUT, 20));
    joined.fill(0xcd, 16);
    strictEqual(request(d, [{ read: joined }, { write: 1 }]).status, BlkStatus.OK);
    strictEqual(
      Deno.readFileSync(path).subarray(20 * 512, 22 * 512).every((b) => b === 0xcd),
      true,
    );
    // Read: sector 7 and the status byte in one writable buffer.
    const r = request(d, [{ read: header(BlkType.IN, 7) }, { write: 513 }]);
    strictEqual(r.status, BlkStatus.OK);
    strictEqual(r.len, 513);
    strictEqual(d.bytes(r.addrs[1], 512).every((b) => b === 7), true);
    // Read: sectors 1..60, one per buffer, in an indirect table.
    const bufs: Buf[] = [{ read: header(BlkType.IN, 1) }];
    for (let i = 0; i < 60; i++) bufs.push({ write: 512 });
    bufs.push({ write: 1 });
    const many = request(d, bufs, true);
    strictEqual(many.status, BlkStatus.OK);
    strictEqual(many.len, 60 * 512 + 1);
    for (let i = 0; i < 60; i++) {
      const expected = i + 1 === 20 || i + 1 === 21 ? 0xcd : i + 1;
      strictEqual(
        d.bytes(many.addrs[1 + i], 512).every((b) => b === expected),
        true,
        `sector ${i + 1}`,
      );
    }
  }),
);

Deno.test(
  "virtio-blk: an image shortened under the device answers IOERR for what is gone (an early end of file), OK before it",
  withDisk(false, (d, path) => {
    Deno.truncateSync(path, 10 * SECTOR_SIZE); // the capacity the driver saw stays 64 sectors
    strictEqual(
      request(d, [{ read: header(BlkType.IN, 20) }, { write: 512 }, { write: 1 }]).status,
      BlkStatus.IOERR,
      "wholly past the new end",
    );
    strictEqual(
      request(d, [{ read: header(BlkType.IN, 9) }, { write: 512 }, { write: 512 }, { write: 1 }])
        .status,
      BlkStatus.IOERR,
      "a short read, then the end of file",
    );
    const ok = request(d, [{ read: header(BlkType.IN, 2) }, { write: 512 }, { write: 1 }]);
    strictEqual(ok.status, BlkStatus.OK);
    strictEqual(d.bytes(ok.addrs[1], 512).every((b) => b === 2), true);
    strictEqual(d.status & Status.DEVICE_NEEDS_RESET, 0);
  }),
);

Deno.test(
  "virtio-blk: a data buffer reaching past guest RAM needs a reset, and nothing is read or written",
  withDisk(false, (d, path) => {
    const before = Deno.readFileSync(path);
    const h = d.alloc(16);
    d.bytes(h, 16).set(header(BlkType.OUT, 0));
    const status = d.alloc(1);
    d.setDesc(0, h, 16, 1, 1);
    d.setDesc(1, RAM_BASE + RAM_SIZE - 256, 512, 1, 2); // 256 bytes in RAM, 256 past its end
    d.setDesc(2, status, 1, 2, 0);
    d.offer(0);
    d.kick();
    strictEqual(d.status & Status.DEVICE_NEEDS_RESET, Status.DEVICE_NEEDS_RESET);
    deepStrictEqual(Deno.readFileSync(path), before);
  }),
);

Deno.test(
  "virtio-blk: a request without a writable status byte needs a reset",
  withDisk(false, (d) => {
    d.submit([{ read: header(BlkType.IN, 0) }, { read: new Uint8Array(1) }]);
    d.kick();
    strictEqual(d.status & Status.DEVICE_NEEDS_RESET, Status.DEVICE_NEEDS_RESET);
  }),
);

Deno.test("virtio-rng: fills the writable buffers, at most 64 KiB per request", () => {
  const d = new FakeDriver(rngFront(), new RngBackend());
  d.init();
  const { addrs } = d.submit([{ write: 64 }]);
  d.kick();
  strictEqual(d.usedElem(0).len, 64);
  notDeepStrictEqual([...d.bytes(addrs[0], 64)], new Array(64).fill(0));
  d.submit([{ write: RNG_MAX_REQUEST }, { write: 4096 }]);
  d.kick();
  deepStrictEqual(d.usedElem(1).len, RNG_MAX_REQUEST);
});
