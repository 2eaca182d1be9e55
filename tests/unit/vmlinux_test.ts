// Booting without the guest's decompressor: the bzImage's kernel extracted on
// the host, the ELF reader, the plan for an ELF kernel, the per-user cache,
// and every bad input refused with a BootImageError.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { BootParams, HDRS_MAGIC } from "../../src/boot/boot_params.ts";
import { planLinuxBoot } from "../../src/boot/bzimage.ts";
import { isElf, parseElfKernel } from "../../src/boot/elf.ts";
import {
  bzImagePayload,
  cachedVmlinux,
  compactElf,
  extractVmlinux,
} from "../../src/boot/vmlinux.ts";
import { hostKernelPath } from "../../examples/initramfs.ts";
import { refused } from "./boot_refusal.ts";

const MiB = 1024 * 1024;
const kernelPath = hostKernelPath();
const image = kernelPath ? Deno.readFileSync(kernelPath) : undefined;
const xzKernel = image !== undefined && bzImagePayload(image).format === "xz";
let extracted: Uint8Array | undefined;
const vmlinux = () => extracted ??= extractVmlinux(image!);

Deno.test({
  name: "vmlinux: the distribution kernel extracts to an ELF that plans a direct 64-bit entry",
  ignore: !xzKernel,
  fn() {
    const elf = parseElfKernel(vmlinux());
    ok(elf.segments.length >= 2);
    strictEqual(elf.start, 0x1000000, "linked at LOAD_PHYSICAL_ADDR (16 MiB)");
    strictEqual(elf.entry, 0x1000000, "startup_64 first");
    const initrd = new Uint8Array(3 * MiB);
    const plan = planLinuxBoot(image!, {
      memorySize: 256 * MiB,
      cmdline: "console=ttyS0",
      initrd,
      vmlinux: vmlinux(),
    });
    strictEqual(plan.entryMode, "64");
    strictEqual(plan.entry, elf.entry);
    deepStrictEqual(
      plan.segments.map((s) => s.physicalAddress),
      elf.segments.map((s) => s.physicalAddress),
    );
    strictEqual(plan.kernelEnd, elf.end);
    ok(plan.initrdAddress >= plan.kernelEnd, "the initrd lies above the kernel");
    const hdr = new BootParams(plan.zeroPage).hdr;
    strictEqual(hdr.header, HDRS_MAGIC, "the bzImage's setup header is used");
    strictEqual(hdr.ramdiskSize, initrd.length);
    throws(
      () => planLinuxBoot(image!, { memorySize: 32 * MiB, vmlinux: vmlinux() }),
      refused("memory-too-small", "ENOMEM", /segments end at/),
    );
  },
});

Deno.test({
  name: "vmlinux: a bare ELF kernel gets a synthesized setup header",
  ignore: !xzKernel,
  fn() {
    ok(isElf(vmlinux()));
    const plan = planLinuxBoot(vmlinux(), { memorySize: 256 * MiB, cmdline: "quiet" });
    strictEqual(plan.kernel, undefined);
    const hdr = new BootParams(plan.zeroPage).hdr;
    strictEqual(hdr.header, HDRS_MAGIC);
    strictEqual(hdr.bootFlag, 0xaa55);
    strictEqual(hdr.cmdlineSize, 2048);
    throws(
      () => planLinuxBoot(vmlinux(), { memorySize: 256 * MiB, cmdline: "x".repeat(2049) }),
      refused("cmdline-too-long", "E2BIG", /at most 2048/),
    );
  },
});

Deno.test({
  name: "vmlinux: the compacted kernel loads the same bytes from a smaller file",
  ignore: !xzKernel,
  fn() {
    const full = parseElfKernel(vmlinux());
    const compacted = compactElf(vmlinux());
    const copy = vmlinux().slice();
    const inPlace = compactElf(copy, { inPlace: true });
    strictEqual(inPlace.buffer, copy.buffer, "in place: a view of the same buffer");
    strictEqual(inPlace.length, compacted.length);
    ok(
      inPlace.every((byte, k) => byte === compacted[k]),
      "in place and copied give the same bytes",
    );
    ok(compacted.length < vmlinux().length * 0.8, `${compacted.length} < ${vmlinux().length}`);
    const small = parseElfKernel(compacted);
    strictEqual(small.entry, full.entry);
    strictEqual(small.segments.length, full.segments.length);
    full.segments.forEach((segment, i) => {
      const other = small.segments[i];
      strictEqual(other.physicalAddress, segment.physicalAddress);
      strictEqual(other.memorySize, segment.memorySize);
      const a = new Uint8Array(segment.memorySize);
      a.set(segment.bytes);
      const b = new Uint8Array(other.memorySize);
      b.set(other.bytes);
      ok(a.every((byte, k) => byte === b[k]), `segment ${i} has the same memory image`);
    });
  },
});

Deno.test("vmlinux: malformed ELF kernels are refused", () => {
  const header = new Uint8Array(64);
  header.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  const view = new DataView(header.buffer);
  throws(() => parseElfKernel(header.subarray(0, 20)), refused("bad-elf", "ENOEXEC", /shorter/));
  view.setUint16(18, 3, true); // EM_386
  throws(() => parseElfKernel(header), refused("bad-elf", "ENOEXEC", /not x86-64/));
  view.setUint16(18, 62, true);
  view.setBigUint64(32, 64n, true); // e_phoff
  view.setUint16(54, 56, true);
  view.setUint16(56, 1, true); // one program header, past the end of the file
  throws(() => parseElfKernel(header), refused("bad-elf", "ENOEXEC", /outside the file/));
  const withSegment = new Uint8Array(64 + 56);
  withSegment.set(header);
  const v2 = new DataView(withSegment.buffer);
  v2.setUint32(64, 1, true); // PT_LOAD
  v2.setBigUint64(64 + 8, 0n, true); // offset
  v2.setBigUint64(64 + 24, 0x1000000n, true); // paddr
  v2.setBigUint64(64 + 32, 4096n, true); // filesz past the end
  v2.setBigUint64(64 + 40, 4096n, true);
  throws(() => parseElfKernel(withSegment), refused("bad-elf", "ENOEXEC", /truncated/));
  v2.setBigUint64(64 + 32, 64n, true);
  v2.setBigUint64(24, 0x5000000n, true); // e_entry outside
  throws(() => parseElfKernel(withSegment), refused("bad-elf", "ENOEXEC", /entry point/));
  v2.setBigUint64(24, 0x1000000n, true);
  strictEqual(parseElfKernel(withSegment).entry, 0x1000000);
  v2.setBigUint64(64 + 24, 0x1000n, true); // below 1 MiB
  throws(() => parseElfKernel(withSegment), refused("bad-elf", "ENOEXEC", /below 1 MiB/));
});

Deno.test({
  name: "vmlinux: other compressions and corrupt payloads are refused",
  ignore: !xzKernel,
  fn() {
    const { payload } = bzImagePayload(image!);
    const start = payload.byteOffset - image!.byteOffset;
    const gzip = image!.slice();
    gzip.set([0x1f, 0x8b, 0x08, 0x00], start);
    strictEqual(bzImagePayload(gzip).format, "gzip");
    throws(
      () => extractVmlinux(gzip),
      refused("unsupported-payload", "EOPNOTSUPP", /gzip-compressed/),
    );
    const corrupt = image!.slice();
    corrupt[start + 4096] ^= 0x55;
    throws(() => extractVmlinux(corrupt), refused("bad-payload", "EBADMSG", /xz: /));
    throws(() => extractVmlinux(new Uint8Array(100)), refused("not-bzimage", "ENOEXEC", /bzImage/));
  },
});

Deno.test({
  name: "vmlinux: the cache extracts once, then reads back; a damaged entry is replaced",
  ignore: !xzKernel,
  fn() {
    const directory = Deno.makeTempDirSync();
    try {
      const first = cachedVmlinux(image!, { directory });
      strictEqual(first.source, "extracted");
      ok(first.path?.startsWith(directory));
      const second = cachedVmlinux(image!, { directory });
      strictEqual(second.source, "cache");
      strictEqual(second.vmlinux.length, first.vmlinux.length);
      using mapped = cachedVmlinux(image!, { directory, map: true });
      strictEqual(mapped.source, "cache");
      strictEqual(mapped.vmlinux.length, first.vmlinux.length);
      ok(
        mapped.vmlinux.every((byte, k) => byte === first.vmlinux[k]),
        "the mapping holds the file",
      );
      mapped.close();
      strictEqual(mapped.vmlinux.length, 0, "closed: the view is empty");
      Deno.writeFileSync(first.path!, new Uint8Array(10));
      strictEqual(cachedVmlinux(image!, { directory }).source, "extracted");
      strictEqual(Deno.statSync(first.path!).size, first.vmlinux.length);
      // One bit flipped in the middle, the size unchanged: only the MD5 can tell.
      const bytes = Deno.readFileSync(first.path!);
      bytes[bytes.length >> 1] ^= 0x10;
      Deno.writeFileSync(first.path!, bytes);
      using flipped = cachedVmlinux(image!, { directory, map: true });
      strictEqual(flipped.source, "extracted", "a flipped bit in a mapped entry is seen");
      ok(flipped.vmlinux.every((byte, k) => byte === first.vmlinux[k]), "extracted again");
      strictEqual(cachedVmlinux(image!, { directory }).source, "cache", "and replaced");
      deepStrictEqual(
        [...Deno.readDirSync(directory)].map((e) => e.name).sort(),
        [
          first.path!.slice(directory.length + 1),
          `${first.path!.slice(directory.length + 1)}.md5`,
        ],
        "the kernel and its check, no temporary files left",
      );
    } finally {
      Deno.removeSync(directory, { recursive: true });
    }
  },
});

Deno.test("vmlinux: a MappedFile outlives its file's truncation (no SIGBUS; in a child process)", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const path = `${dir}/kernel`;
    // 4 MiB: larger than a huge page, so the huge-page advice is taken too.
    Deno.writeFileSync(path, new Uint8Array(4 << 20).map((_, i) => i % 251));
    const mapped = new URL("../../src/kvm/mapped_file.ts", import.meta.url).href;
    const script = `
      const { MappedFile } = await import(${JSON.stringify(mapped)});
      const file = MappedFile.open(${JSON.stringify(path)});
      Deno.truncateSync(${JSON.stringify(path)}, 4096);
      let sum = 0;
      for (let i = 0; i < file.bytes.length; i += 4096) sum += file.bytes[i + 7];
      file.close();
      console.log(sum);
    `;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    strictEqual(out.signal, null, `the child died of ${out.signal}: ${stderr}`);
    strictEqual(out.code, 0, stderr);
    let expected = 0;
    for (let i = 0; i < 4 << 20; i += 4096) expected += (i + 7) % 251;
    strictEqual(Number(new TextDecoder().decode(out.stdout).trim()), expected, "the bytes read");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("vmlinux: MappedFile reads a file, refuses missing and empty ones, and unmaps", async () => {
  const { MappedFile } = await import("../../src/kvm/mapped_file.ts");
  const { KvmError } = await import("../../src/errors.ts");
  const dir = Deno.makeTempDirSync();
  try {
    Deno.writeFileSync(`${dir}/f`, new Uint8Array([1, 2, 3, 4, 5]));
    const file = MappedFile.open(`${dir}/f`);
    deepStrictEqual([...file.bytes], [1, 2, 3, 4, 5]);
    file.bytes[0] = 9; // its own memory: the file keeps its byte
    strictEqual(Deno.readFileSync(`${dir}/f`)[0], 1);
    file.close();
    file.close();
    strictEqual(file.bytes.length, 0);
    throws(
      () => MappedFile.open(`${dir}/missing`),
      (e: unknown) => e instanceof KvmError && e.code === "ENOENT",
    );
    throws(
      () => MappedFile.open(`${dir}/f`, { maxBytes: 4 }),
      (e: unknown) => e instanceof KvmError && e.code === "EFBIG" && /5 bytes/.test(e.message),
    );
    MappedFile.open(`${dir}/f`, { maxBytes: 5 }).close();
    Deno.writeFileSync(`${dir}/empty`, new Uint8Array());
    throws(
      () => MappedFile.open(`${dir}/empty`),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL",
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
