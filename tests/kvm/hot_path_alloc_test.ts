// The run loop's hot path allocates nothing per exit: 100k PIO exits (and
// 20k MMIO exits) through Vcpu.run(), the exit decoder and the handler's
// reads leave V8's heap where it was. Counted, not timed: the heap's used
// bytes are sampled around chunks of 1000 exits; a chunk without a garbage
// collection grows by exactly what it allocated. A control step makes the
// handler allocate one small object per exit and checks that the same
// measurement sees it, so the bound is known to be able to fail.

import { ok } from "node:assert/strict";
import { loadNative, type Vcpu } from "../../mod.ts";
import { realModeGuest } from "./real_mode_guest.ts";

await loadNative(); // outside the test, so the resource sanitizer does not count the library

// deno-fmt-ignore
const PIO_LOOP = [
  0xe6, 0x10, // out 0x10, al
  0x40,       // inc ax
  0xeb, 0xfb, // jmp short back to the out
];

// deno-fmt-ignore
const MMIO_LOOP = [
  0xbb, 0x00, 0x20,       // mov bx, 0x2000
  0x8e, 0xc3,             // mov es, bx           ; ES base 0x20000: no RAM there
  0x26, 0xa2, 0x10, 0x00, // mov [es:0x10], al    ; MMIO write at 0x20010
  0x26, 0xa0, 0x20, 0x00, // mov al, [es:0x20]    ; MMIO read at 0x20020
  0x40,                   // inc ax
  0xeb, 0xf5,             // jmp short back to the write
];

const CHUNK = 1000;

/** What a run of chunks showed. */
interface Allocation {
  /** The median chunk's heap growth per exit, in bytes. */
  bytesPerExit: number;
  /** Chunks whose heap shrank: a garbage collection ran inside them. */
  collections: number;
}

/** Runs `chunks` chunks of CHUNK exits and samples the heap around each. */
function measure(chunk: () => void, chunks: number): Allocation {
  const growth: number[] = [];
  for (let c = 0; c < chunks; c++) {
    const before = Deno.memoryUsage().heapUsed;
    chunk();
    growth.push(Deno.memoryUsage().heapUsed - before);
  }
  growth.sort((a, b) => a - b);
  return {
    bytesPerExit: growth[growth.length >> 1] / CHUNK,
    collections: growth.filter((g) => g < 0).length,
  };
}

/** Where the control keeps its objects, so the JIT cannot elide them. */
const sink: unknown[] = [null];

/** The PIO handler of a VMM: check the exit, read what the guest wrote. */
function pioChunk(vcpu: Vcpu, allocate: boolean): () => void {
  let expected = 0;
  return () => {
    for (let i = 0; i < CHUNK; i++) {
      const exit = vcpu.run();
      if (exit.reason !== "io" || exit.port !== 0x10 || exit.direction !== "out") {
        throw new Error(`unexpected exit ${exit.reason}`);
      }
      if (exit.value !== (expected & 0xff) || exit.data[0] !== exit.value) {
        throw new Error(`guest sent ${exit.value}, expected ${expected & 0xff}`);
      }
      expected++;
      if (allocate) sink[0] = { expected }; // the control: one small object per exit
    }
  };
}

/** The MMIO handler: remember writes, answer reads with the last write + 1. */
function mmioChunk(vcpu: Vcpu): () => void {
  let last = 0;
  return () => {
    for (let i = 0; i < CHUNK; i++) {
      const exit = vcpu.run();
      if (exit.reason !== "mmio") throw new Error(`unexpected exit ${exit.reason}`);
      if (exit.isWrite) {
        if (exit.address !== 0x20010 || exit.length !== 1) throw new Error("wrong MMIO write");
        last = exit.value;
      } else {
        if (exit.address !== 0x20020 || exit.length !== 1) throw new Error("wrong MMIO read");
        exit.value = last + 1;
      }
    }
  };
}

Deno.test("hot path: no allocation per exit", async (t) => {
  await t.step("control: a handler allocating one object per exit is detected", () => {
    using guest = realModeGuest(PIO_LOOP);
    const chunk = pioChunk(guest.vcpu, true);
    measure(chunk, 10); // warm-up: let the JIT optimise the loop
    const seen = measure(chunk, 20);
    console.log("allocating control:", seen);
    ok(
      seen.bytesPerExit >= 8 || seen.collections >= 2,
      `the measurement missed an allocation per exit: ${JSON.stringify(seen)}`,
    );
  });

  await t.step("100k PIO exits allocate nothing", () => {
    using guest = realModeGuest(PIO_LOOP);
    const chunk = pioChunk(guest.vcpu, false);
    measure(chunk, 10);
    const seen = measure(chunk, 100);
    console.log("PIO:", seen);
    ok(
      seen.bytesPerExit < 1 && seen.collections <= 2,
      `PIO exits allocate: ${JSON.stringify(seen)}`,
    );
  });

  await t.step("20k MMIO exits allocate nothing", () => {
    using guest = realModeGuest(MMIO_LOOP);
    const chunk = mmioChunk(guest.vcpu);
    measure(chunk, 10);
    const seen = measure(chunk, 20);
    console.log("MMIO:", seen);
    ok(
      seen.bytesPerExit < 1 && seen.collections <= 2,
      `MMIO exits allocate: ${JSON.stringify(seen)}`,
    );
  });
});
