/**
 * virtio throughput comparison (issue 16): this library's VMM (the boot CLI,
 * `examples/boot_linux.ts --disk IMG --net TAP`, virtio-pci with MSI-X by
 * default) against QEMU (`-accel kvm`, `virtio-blk-pci` on the same raw image,
 * `virtio-net-pci` on a tap; QEMU's devices sit on PCI too), in one run, same
 * kernel (Debian's 6.1, `/vmlinuz`), initramfs, vCPUs and memory. Each boot is
 * a fresh process; the ways alternate round by round.
 *
 * The guest's `/init` (an initramfs only: no root switch) loads the virtio
 * modules of both transports (virtio_pci for QEMU's and ours, virtio_mmio for
 * ours with `KVM_VIRTIO_BENCH_TRANSPORT=mmio`),
 * then measures with a small static helper compiled from the C source below
 * (busybox has no random-read or timed-send applet) and prints
 * `VBENCH-RESULT` lines on the serial console:
 * - sequential read: `read(2)` of the whole disk with `O_DIRECT`, 1 MiB at a
 *   time (three passes; the median), plus busybox
 *   `dd if=/dev/vda of=/dev/null bs=1M iflag=direct` as a cross-check;
 * - 4 KiB random reads: `pread(2)` with `O_DIRECT` at random 4 KiB-aligned
 *   offsets, one at a time (queue depth 1: IOPS = 1 / the round trip guest →
 *   device → guest), for a fixed time;
 * - guest-to-host network: a TCP connection from the guest to a listener of
 *   this script on the tap's host side, 64 KiB writes for a fixed time; the
 *   figure is the host's (bytes received between the first byte and EOF), the
 *   guest's own count is printed beside it.
 *   Then the same stream again with the guest's `tcp_min_tso_segs` raised to
 *   44, to a second port: frames of about 64 KB whatever pacing rate TCP's
 *   first round trips settled on (that choice swings the default stream's
 *   figure 20x between boots of the same build), so the data path's
 *   throughput is measured apart from TCP's start-up.
 *
 * Why a stream is as fast as it is: the guest prints its `TCP_INFO` each second
 * (`VBENCH-TCPINFO`: smoothed and minimum RTT, window, pacing rate, time
 * limited by the window or the send buffer), its virtio interrupt counts
 * around the stream, its TCP counters and the card's features; the script
 * prints each thread's CPU time over the stream, of the VMM and of itself
 * (`VBENCH-CPU`, from `/proc`).
 *
 * When a guest stalls: ours writes the device thread's stall report (where the
 * unacknowledged interrupt went: IOAPIC pin, vCPU thread, LAPIC, RIP/RFLAGS,
 * a verdict; src/devices/virtio/stall.ts) to stderr, printed under the round;
 * QEMU's guest, quiet for 40 s, is read through QEMU's monitor (`info
 * registers`, `info lapic`, `info pic`) with its vCPU thread and KVM's debugfs
 * counters. A guest quiet for `KVM_VIRTIO_BENCH_QUIET_S` in its measurements
 * is killed. Finished boots leave the kernel's text symbols on the disk, which
 * name the reports' RIPs at the end (right with `KVM_VIRTIO_BENCH_APPEND=nokaslr`).
 *
 * Both VMMs get 1 vCPU (a nested SMP boot of QEMU hangs in the sandbox now and
 * then, bench/RESULTS.md, issue 17) and 256 MiB, and the same command line,
 * without `pci=off` (both VMMs' virtio devices are on PCI; with
 * `KVM_VIRTIO_BENCH_TRANSPORT=mmio` ours adds `pci=off`, having no PCI bus).
 * QEMU's disk uses its defaults (`cache=writeback`, `aio=threads`: the host's
 * page cache, as ours); its tap runs without vhost-net.
 *
 * Needs /dev/kvm, root (the tap) and QEMU, so it runs in the sandbox with QEMU
 * and the guest's files carried in (both git-ignored, made by `--prepare` on a
 * host with QEMU, gcc with a static libc and the kernel's modules):
 *
 * ```
 * deno run -A bench/virtio_compare.ts --prepare
 * deno run -A tools/sandbox/sandbox.ts --timeout 5400 --include .cache/qemu-sandbox \
 *   --include .cache/virtio-bench -- deno run -A --no-check bench/virtio_compare.ts
 * ```
 *
 * `KVM_VIRTIO_BENCH_TRANSPORT=mmio` puts ours on virtio-mmio (described in the
 * DSDT) instead; `pci`, the default, on virtio-pci with MSI-X.
 * `KVM_VIRTIO_BENCH_RUNS` (default 2) sets the rounds; each process is killed
 * after `KVM_VIRTIO_BENCH_KILL_S` (default 1200; QEMU needed 830+ s to reach the measurements in the 2026-11-30 run) seconds. Not part of
 * `deno task bench` (a sandbox run takes many minutes).
 *
 * @module
 */

import { buildCpio } from "../src/boot/cpio.ts";
import { hostKernelPath } from "../src/boot/initramfs.ts";
import { moduleLoadOrder } from "../tools/sandbox/host.ts";
import { readModule } from "../tools/sandbox/initramfs.ts";
import { buildQemuBundle, carriedLiblzmaEnv, directBootCommand } from "../tools/kut/qemu_bundle.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const QEMU_DIR = `${ROOT}.cache/qemu-sandbox`;
const BENCH_DIR = `${ROOT}.cache/virtio-bench`;
const KILL_S = Number(Deno.env.get("KVM_VIRTIO_BENCH_KILL_S") ?? 1200);
/**
 * A guest in its measurements (after VBENCH-READY) that prints nothing for this long has stalled:
 * its boot is killed then (its remaining figures are lost anyway), not at KILL_S.
 */
const QUIET_KILL_S = Number(Deno.env.get("KVM_VIRTIO_BENCH_QUIET_S") ?? 150);
/** QEMU's guest quiet this long in its measurements: its state is read through QEMU's monitor. */
const QEMU_PROBE_S = 40;
const QEMU_MONITOR = "/tmp/vbench-qemu.monitor";
const RUNS = Number(Deno.env.get("KVM_VIRTIO_BENCH_RUNS") ?? 2);
/**
 * `KVM_VIRTIO_BENCH_TRANSPORT`: `pci` (default) boots ours with `--virtio-transport pci`
 * (virtio-pci with MSI-X, as QEMU's devices, the CLI's default) and without `pci=off`; `mmio`
 * with `--virtio-transport mmio` and `pci=off`.
 */
const TRANSPORT = Deno.env.get("KVM_VIRTIO_BENCH_TRANSPORT") ?? "pci";
if (TRANSPORT !== "pci" && TRANSPORT !== "mmio") {
  throw new Error(`KVM_VIRTIO_BENCH_TRANSPORT=${TRANSPORT}: pci (default) or mmio`);
}
const PCI = TRANSPORT === "pci";
/**
 * QEMU's CPU model (`KVM_VIRTIO_BENCH_QEMU_CPU`): by default `host`, the CPUID
 * KVM supports, as ours gets, less the paravirtual EOI ours hides too.
 */
const QEMU_CPU = Deno.env.get("KVM_VIRTIO_BENCH_QEMU_CPU") ?? "host,-kvm-pv-eoi";
const DISK_MIB = 128;
/** Where on the disk the guest leaves its kernel's symbols (see INIT). */
const KALLSYMS_MIB = 96;
const RAND_MS = 3000;
const NET_MS = 4000;
const PORT = 5201;
/** The second stream's port: frames of at least BIG_TSO_SEGS segments (see INIT). */
const BIG_PORT = 5202;
/**
 * The second stream sets the guest's `tcp_min_tso_segs` to this (default 2): TSO autosizing then
 * never sends frames below 44 segments (~64 KB), whatever the pacing rate its first round trips
 * gave (bench/RESULTS.md: that decides a 20x swing of the default stream). The same setting for
 * both VMMs, so it measures the data path with large frames, not TCP's start-up.
 */
const BIG_TSO_SEGS = 44;
const HOST_IP = "10.203.9.1";
const GUEST_IP = "10.203.9.2";
const TAP = "vbench0";
const CPUS = 1;
const MEMORY_MIB = 256;

/** Modules for both transports, disk and network, each after its dependencies (modules.dep). */
const MODULES = ["virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net"];

/** The guest's measuring helper (compiled static by `--prepare`). */
const HELPER_C = String.raw`
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void *aligned(size_t n) {
  void *p;
  if (posix_memalign(&p, 4096, n) != 0) { perror("posix_memalign"); exit(1); }
  memset(p, 0, n);
  return p;
}

static int seq(const char *dev) {
  int fd = open(dev, O_RDONLY | O_DIRECT);
  if (fd < 0) { perror(dev); return 1; }
  void *buf = aligned(1 << 20);
  long long total = 0;
  double t0 = now();
  for (;;) {
    ssize_t r = read(fd, buf, 1 << 20);
    if (r < 0) { perror("read"); return 1; }
    if (r == 0) break;
    total += r;
  }
  double dt = now() - t0;
  printf("VBENCH-RESULT seq bytes=%lld seconds=%.4f MBps=%.1f\n", total, dt, total / dt / 1e6);
  close(fd);
  return 0;
}

static int rnd(const char *dev, int ms) {
  int fd = open(dev, O_RDONLY | O_DIRECT);
  if (fd < 0) { perror(dev); return 1; }
  unsigned long long size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) { perror("BLKGETSIZE64"); return 1; }
  unsigned long long blocks = size / 4096;
  void *buf = aligned(4096);
  unsigned long long x = 0x9e3779b97f4a7c15ull;
  long long ops = 0;
  double t0 = now(), t = t0, end = t0 + ms / 1000.0;
  while (t < end) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17; /* xorshift64 */
    if (pread(fd, buf, 4096, (off_t)((x % blocks) * 4096)) != 4096) { perror("pread"); return 1; }
    ops++;
    t = now();
  }
  double dt = t - t0;
  printf("VBENCH-RESULT rand ops=%lld seconds=%.4f IOPS=%.0f latency_us=%.1f\n", ops, dt,
         ops / dt, dt / ops * 1e6);
  close(fd);
  return 0;
}

/* Why a stream is slow: the sender's view (smoothed RTT, window, pacing rate, what limited it). */
static void tcpinfo(int fd, double at) {
  struct tcp_info i;
  socklen_t n = sizeof i;
  memset(&i, 0, sizeof i);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &i, &n) != 0) { perror("TCP_INFO"); return; }
  printf("VBENCH-TCPINFO t=%.1f rtt_us=%u rttvar_us=%u min_rtt_us=%u cwnd=%u ssthresh=%u unacked=%u "
         "retrans=%u pacing_Bps=%llu delivery_Bps=%llu busy_us=%llu rwnd_limited_us=%llu "
         "sndbuf_limited_us=%llu segs_out=%u data_segs_out=%u notsent=%u app_limited=%u\n",
         at, i.tcpi_rtt, i.tcpi_rttvar, i.tcpi_min_rtt, i.tcpi_snd_cwnd, i.tcpi_snd_ssthresh,
         i.tcpi_unacked, i.tcpi_total_retrans, (unsigned long long)i.tcpi_pacing_rate,
         (unsigned long long)i.tcpi_delivery_rate, (unsigned long long)i.tcpi_busy_time,
         (unsigned long long)i.tcpi_rwnd_limited, (unsigned long long)i.tcpi_sndbuf_limited,
         i.tcpi_segs_out, i.tcpi_data_segs_out, i.tcpi_notsent_bytes,
         (unsigned)i.tcpi_delivery_rate_app_limited);
}

static int net(const char *ip, int port, int ms) {
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.sin_addr);
  int fd = -1;
  /* The host side of the tap gets its address only once the VMM created the tap. */
  for (int i = 0; i < 600; i++) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) break;
    close(fd);
    fd = -1;
    usleep(200000);
  }
  if (fd < 0) { printf("VBENCH-RESULT net connect-failed\n"); return 1; }
  static char buf[65536];
  memset(buf, 0x5a, sizeof buf);
  long long total = 0;
  double t0 = now(), t = t0, end = t0 + ms / 1000.0, next = t0 + 1;
  while (t < end) {
    ssize_t w = write(fd, buf, sizeof buf);
    if (w <= 0) { perror("write"); return 1; }
    total += w;
    t = now();
    if (t >= next || t >= end) { tcpinfo(fd, t - t0); next += 1; }
  }
  close(fd);
  double dt = now() - t0;
  printf("VBENCH-RESULT net bytes=%lld seconds=%.4f Mbps=%.1f\n", total, dt, total * 8 / dt / 1e6);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc == 3 && !strcmp(argv[1], "seq")) return seq(argv[2]);
  if (argc == 4 && !strcmp(argv[1], "rand")) return rnd(argv[2], atoi(argv[3]));
  if (argc == 5 && !strcmp(argv[1], "net")) return net(argv[2], atoi(argv[3]), atoi(argv[4]));
  fprintf(stderr, "usage: vbench seq DEV | rand DEV MS | net IP PORT MS\n");
  return 2;
}
`;

// deno-fmt-ignore
const INIT = [
  "#!/bin/busybox sh",
  "/bin/busybox --install -s /bin",
  "mount -t proc proc /proc",
  "mount -t sysfs sysfs /sys",
  "mount -t devtmpfs devtmpfs /dev",
  "for m in /modules/*.ko; do insmod $m 2>/dev/null || echo \"insmod $m failed\"; done",
  "i=0; while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done", // probing is async
  "i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done",
  "echo VBENCH-READY $(cat /sys/block/vda/size 2>/dev/null) sectors",
  // What the guest's CPU model gives it (the two VMMs' models differ unless made equal).
  "echo \"VBENCH-GUEST clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource) flags $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)\"",
  "echo \"VBENCH-GUEST vulnerabilities $(grep -H . /sys/devices/system/cpu/vulnerabilities/* | sed 's,.*/,,' | tr '\\n' ';')\"",
  // Requests per MiB (reads completed, sectors read: /sys/block/vda/stat) and the queue's limits.
  "echo \"VBENCH-BLKSTAT before $(cat /sys/block/vda/stat) max_segments $(cat /sys/block/vda/queue/max_segments) max_sectors_kb $(cat /sys/block/vda/queue/max_sectors_kb)\"",
  "for p in 1 2 3; do /vbench seq /dev/vda; done",
  "echo \"VBENCH-BLKSTAT after $(cat /sys/block/vda/stat)\"",
  // busybox dd prints no rate: its time (busybox time, 10 ms resolution) over the 128 MiB.
  "echo \"VBENCH-RESULT dd $( (time dd if=/dev/vda of=/dev/null bs=1M iflag=direct) 2>&1 | grep real)\"",
  `/vbench rand /dev/vda ${RAND_MS}`,
  `ip addr add ${GUEST_IP}/24 dev eth0 && ip link set eth0 up`,
  `echo "VBENCH-PING $(ping -c 2 -W 5 ${HOST_IP} 2>&1 | grep -E 'loss|round-trip' | tr '\\n' ' ')"`,
  // A stalled stream must not hold the boot: the helper is killed after 90 s.
  // Interrupts per device across the stream (virtio-mmio: one line per device; virtio-pci: per vector).
  "echo \"VBENCH-NETIRQ-BEFORE $(grep -i virtio /proc/interrupts | tr -s ' ' | tr '\\n' ';')\"",
  "echo \"VBENCH-NETDEV-BEFORE $(grep eth0 /proc/net/dev)\"",
  `timeout 90 /vbench net ${HOST_IP} ${PORT} ${NET_MS} || echo VBENCH-NET-FAILED $?`,
  // The same stream with large frames forced (BIG_TSO_SEGS), to its own port (its own figure).
  `echo ${BIG_TSO_SEGS} > /proc/sys/net/ipv4/tcp_min_tso_segs && echo VBENCH-NET-BIG`,
  `timeout 90 /vbench net ${HOST_IP} ${BIG_PORT} ${NET_MS} || echo VBENCH-NET-BIG-FAILED $?`,
  "echo \"VBENCH-NETIRQ-AFTER $(grep -i virtio /proc/interrupts | tr -s ' ' | tr '\\n' ';')\"",
  "echo \"VBENCH-NETDEV $(grep eth0 /proc/net/dev)\"",
  // Why a stream is slow: the guest's TCP counters (RetransSegs) and the card's negotiated features.
  "echo \"VBENCH-NETTCP $(grep Tcp: /proc/net/snmp | tail -1)\"",
  "for d in /sys/bus/virtio/devices/*; do [ \"$(cat $d/device)\" = 0x0001 ] && echo \"VBENCH-NETFEATURES $(cat $d/features)\"; done",
  // The kernel's text symbols, to name a stalled guest's RIP (with nokaslr every boot has the same
  // addresses): written at KALLSYMS_MIB of the disk (the reads measure speed, not content), read
  // back from the image by this script after the boots.
  `grep ' [tT] ' /proc/kallsyms > /ks && dd if=/ks of=/dev/vda bs=1M seek=${KALLSYMS_MIB} conv=fsync 2>/dev/null && echo "VBENCH-KALLSYMS $(wc -c < /ks)"`,
  "echo VBENCH-DONE",
  "poweroff -f",
].join("\n") + "\n";

function run(cmd: string, args: string[]): string {
  const r = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  if (!r.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(r.stderr).trim()}`);
  }
  return new TextDecoder().decode(r.stdout);
}

/** Builds `.cache/virtio-bench` (the initramfs, the tun module) and the QEMU bundle if missing. */
async function prepare(): Promise<void> {
  const kernel = hostKernelPath();
  if (!kernel) throw new Error("no kernel image (install linux-image-amd64)");
  const version = (await Deno.realPath(kernel)).split("/").pop()!.replace(/^vmlinuz-/, "");
  const modulesDir = `/lib/modules/${version}`;
  const dep = await Deno.readTextFile(`${modulesDir}/modules.dep`);
  const order: string[] = [];
  for (const t of MODULES) {
    const o = moduleLoadOrder(dep, t);
    if (!o) throw new Error(`${modulesDir} has no ${t} module`);
    for (const p of o) if (!order.includes(p)) order.push(p);
  }
  await Deno.mkdir(BENCH_DIR, { recursive: true });
  const src = `${BENCH_DIR}/vbench.c`;
  await Deno.writeTextFile(src, HELPER_C);
  run("cc", ["-O2", "-static", "-Wall", "-o", `${BENCH_DIR}/vbench`, src]);
  const busybox = await Deno.readFile("/bin/busybox");
  const helper = await Deno.readFile(`${BENCH_DIR}/vbench`);
  const initrd = await buildCpio(async (w) => {
    for (const d of ["bin", "dev", "proc", "sys", "modules"]) await w.dir(d);
    await w.charDevice("dev/console", 5, 1);
    await w.file("bin/busybox", busybox, 0o755);
    await w.file("vbench", helper, 0o755);
    await w.file("init", new TextEncoder().encode(INIT), 0o755);
    for (const [i, p] of order.entries()) {
      const name = `${String(i).padStart(2, "0")}-${
        p.split("/").pop()!.replace(/\.ko(\.\w+)?$/, "")
      }.ko`;
      await w.file(`modules/${name}`, await readModule(`${modulesDir}/${p}`), 0o644);
    }
  });
  await Deno.writeFile(`${BENCH_DIR}/initrd.cpio`, initrd);
  const tun = moduleLoadOrder(dep, "tun");
  if (tun) {
    await Deno.writeFile(`${BENCH_DIR}/tun.ko`, await readModule(`${modulesDir}/${tun.at(-1)}`));
  }
  try {
    Deno.statSync(`${QEMU_DIR}/bin/qemu-system-x86_64`);
  } catch {
    await buildQemuBundle(QEMU_DIR);
  }
  console.log(`prepared ${BENCH_DIR} (modules: ${order.join(" ")}) and ${QEMU_DIR}`);
}

/** What one boot measured (-1: not reported). */
interface Figures {
  /** Sequential read passes, MB/s. */
  seq: number[];
  /** busybox dd's time. */
  dd: string;
  /** The guest's diagnostic lines (readiness, ping, network failures, eth0 counters). */
  notes: string[];
  /** busybox ping's summary (2 pings to the host over the tap). */
  ping: string;
  iops: number;
  latencyUs: number;
  /** Guest-to-host, Mbit/s, counted by the guest. */
  netGuest: number;
  /** Guest-to-host, Mbit/s, counted by this script (first byte to EOF). */
  netHost: number;
  /** The stream with large frames forced (`tcp_min_tso_segs`), Mbit/s, counted by the guest. */
  netGuestBig: number;
  /** The same, counted by this script. */
  netHostBig: number;
  /** Spawn to the process's exit, s. */
  seconds: number;
  code: number;
  done: boolean;
}

const exists = (p: string) => {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
};

/**
 * CPU time so far (s, user + system; a vCPU thread's includes its guest's time) of each thread of
 * `pids`, keyed `pid/tid comm`, and of the whole machine (`busy`, `all`: /proc/stat's first line).
 * The difference of two samples around the TCP stream says which thread bounds it.
 */
function cpuSample(pids: number[]): Map<string, number> {
  const out = new Map<string, number>();
  const tick = 100; // USER_HZ
  for (const pid of pids) {
    let tids: string[];
    try {
      tids = [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => e.name);
    } catch {
      continue; // gone
    }
    for (const tid of tids) {
      try {
        const stat = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`);
        const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
        const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        out.set(`${pid}/${tid} ${comm}`, (Number(f[11]) + Number(f[12])) / tick);
      } catch {
        // The thread ended.
      }
    }
  }
  const cpu = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1)
    .map(Number);
  const all = cpu.reduce((a, b) => a + b, 0);
  out.set("all", all / tick);
  out.set("busy", (all - cpu[3] - (cpu[4] ?? 0)) / tick); // less idle and iowait
  return out;
}

/** The threads that used CPU between two samples, busiest first, as one line. */
function cpuReport(a: Map<string, number>, b: Map<string, number>): string {
  const d = (k: string) => (b.get(k) ?? 0) - (a.get(k) ?? 0);
  const all = d("all");
  const threads = [...b.keys()].filter((k) =>
    k !== "all" && k !== "busy" && !k.startsWith("kvm:") && d(k) >= 0.05
  )
    .sort((x, y) => d(y) - d(x)).map((k) => `${k} ${d(k).toFixed(2)}`);
  return `machine busy ${d("busy").toFixed(2)} of ${all.toFixed(2)} CPU-s; threads (CPU-s): ${
    threads.join(", ")
  }`;
}

/** The receiving side of the guests' streams: one connection at a time, each one's Mbit/s. */
class Receiver {
  #listener: Deno.TcpListener;
  /** Mbit/s of each finished connection (first byte to EOF), in order. */
  readonly rates: number[] = [];
  /** Told when a connection's first byte arrives and when it ends (the CPU samples of a boot). */
  onStream: ((phase: "first" | "end") => void) | undefined;
  #open: Deno.Conn | undefined;
  #loop: Promise<void>;

  constructor(port: number) {
    this.#listener = Deno.listen({ hostname: "0.0.0.0", port });
    this.#loop = this.#accept();
  }

  async #accept(): Promise<void> {
    const buf = new Uint8Array(256 * 1024);
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // closed
      }
      this.#open = conn;
      let bytes = 0;
      let first = 0;
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) break;
        if (bytes === 0) {
          first = performance.now();
          this.onStream?.("first");
        }
        bytes += n;
      }
      const seconds = (performance.now() - first) / 1000;
      if (bytes > 0) this.onStream?.("end");
      this.#open = undefined;
      try {
        conn.close();
      } catch {
        // Closed by close().
      }
      this.rates.push(bytes > 0 && seconds > 0 ? bytes * 8 / seconds / 1e6 : -1);
    }
  }

  /** Drops a connection still open (its guest is gone), so the next boot's can be accepted. */
  drop(): void {
    try {
      this.#open?.close();
    } catch {
      // Already closed by the loop.
    }
  }

  /**
   * Stops listening and drops a connection still open: a guest killed mid-stream (its tap gone)
   * never sends EOF, and the read would wait forever.
   */
  async close(): Promise<void> {
    this.#listener.close();
    try {
      this.#open?.close();
    } catch {
      // Already closed by the loop.
    }
    await this.#loop;
  }
}

/** One thread of `pid` named `comm`: state, wait channel and CPU ns (schedstat), or undefined. */
function threadSample(pid: number, comm: string) {
  try {
    for (const e of Deno.readDirSync(`/proc/${pid}/task`)) {
      const base = `/proc/${pid}/task/${e.name}`;
      if (Deno.readTextFileSync(`${base}/comm`).trim() !== comm) continue;
      const stat = Deno.readTextFileSync(`${base}/stat`);
      const read = (f: string) => {
        try {
          return Deno.readTextFileSync(`${base}/${f}`).trim();
        } catch {
          return "?";
        }
      };
      return {
        tid: e.name,
        state: stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0],
        wchan: read("wchan"),
        runNs: Number(read("schedstat").split(" ")[0]),
      };
    }
  } catch {
    // Gone.
  }
  return undefined;
}

/**
 * Every counter in KVM's debugfs directory of `pid`'s VM (summed over its vCPUs: exits by kind,
 * halts, injections), prefixed `kvm:`, to diff around a stream; empty without debugfs.
 */
function kvmAllStats(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  try {
    const dir = [...Deno.readDirSync("/sys/kernel/debug/kvm")].find((e) =>
      e.name.startsWith(`${pid}-`)
    );
    if (!dir) return out;
    for (const e of Deno.readDirSync(`/sys/kernel/debug/kvm/${dir.name}`)) {
      if (!e.isFile) continue;
      try {
        const v = Number(Deno.readTextFileSync(`/sys/kernel/debug/kvm/${dir.name}/${e.name}`));
        if (Number.isFinite(v)) out.set(`kvm:${e.name}`, v);
      } catch {
        // Not a counter (or not readable).
      }
    }
  } catch {
    // No debugfs.
  }
  return out;
}

/** The KVM counters that moved between two samples, largest first, as one line. */
function kvmReport(a: Map<string, number>, b: Map<string, number>): string {
  return [...b.keys()].filter((k) => k.startsWith("kvm:") && b.get(k)! - (a.get(k) ?? 0) > 0)
    .sort((x, y) => (b.get(y)! - a.get(y)!) - (b.get(x)! - a.get(x)!))
    .map((k) => `${k.slice(4)} ${b.get(k)! - (a.get(k) ?? 0)}`).join(", ") +
    // How the guest's RAM is mapped in the nested page tables now (a count, not a difference).
    `; mapped now: ${
      ["pages_4k", "pages_2m", "pages_1g"].map((k) => `${k} ${b.get(`kvm:${k}`) ?? "-"}`).join(", ")
    }`;
}

/** The counters a stall probe of QEMU's guest shows. */
const PROBE_COUNTERS = ["exits", "halt_exits", "halt_wakeup", "irq_injections", "irq_window_exits"];

/** Those of KVM's debugfs counters of `pid`'s VM (summed over its vCPUs); empty without debugfs. */
function kvmStats(pid: number): Map<string, number> {
  const all = kvmAllStats(pid);
  return new Map(
    PROBE_COUNTERS.flatMap((k) => all.has(`kvm:${k}`) ? [[k, all.get(`kvm:${k}`)!]] : []),
  );
}

/**
 * QEMU's guest has stalled: where its interrupts stand, as QEMU's monitor shows them (registers,
 * local APIC, interrupt controllers; reading them kicks the vCPU out of KVM_RUN, as our stall
 * report does), and its vCPU thread and KVM counters over half a second before that.
 */
async function probeQemu(pid: number, socket: string): Promise<string[]> {
  const lines: string[] = [];
  const a = threadSample(pid, "CPU 0/KVM");
  const ka = kvmStats(pid);
  await new Promise((r) => setTimeout(r, 500));
  const b = threadSample(pid, "CPU 0/KVM");
  const kb = kvmStats(pid);
  if (a && b) {
    lines.push(
      `qemu vCPU thread ${a.tid}: ${a.state}/${b.state} wchan ${a.wchan}/${b.wchan}; on CPU ${
        ((b.runNs - a.runNs) / 1e6).toFixed(1)
      } ms of 500`,
    );
  }
  if (kb.size > 0) {
    lines.push(
      `qemu KVM over 500 ms: ${[...kb].map(([k, v]) => `${k} +${v - (ka.get(k) ?? 0)}`).join(" ")}`,
    );
  }
  try {
    const conn = await Deno.connect({ transport: "unix", path: socket });
    await conn.write(new TextEncoder().encode("info registers\ninfo lapic\ninfo pic\n"));
    let text = "";
    const buf = new Uint8Array(65536);
    const deadline = performance.now() + 4000;
    while (performance.now() < deadline) {
      const n = await Promise.race([
        conn.read(buf),
        new Promise<null>((r) => setTimeout(() => r(null), 500)),
      ]);
      if (n === null) {
        if (text.includes("info pic") && /\(qemu\) $/.test(text.trimEnd() + " ")) break;
        continue;
      }
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    conn.close();
    // QEMU's monitor echoes with terminal escapes; keep the lines that matter.
    // deno-lint-ignore no-control-regex
    const clean = text.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "").split(/\r?\n/);
    lines.push(
      ...clean.filter((l) =>
        /RIP=|EFL=|HLT=|IRR|ISR|TPR|PPR|SVR|LVT|ioapic|pin ?\d|pic|irr|imr|isr/i.test(l)
      ).map((l) => `qemu monitor: ${l.trim()}`).slice(0, 60),
    );
  } catch (e) {
    lines.push(`qemu monitor: ${(e as Error).message}`);
  }
  return lines;
}

async function boot(
  name: string,
  cmd: string,
  args: string[],
  env: Record<string, string>,
  receiver: Receiver,
  bigReceiver: Receiver,
  monitor?: string,
): Promise<Figures> {
  const t0 = performance.now();
  const child = new Deno.Command(cmd, {
    args,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), KILL_S * 1000);
  // The VMM creates the tap: give its host side the address once it appears.
  let addressed = false;
  const poll = setInterval(() => {
    if (addressed || !exists(`/sys/class/net/${TAP}`)) return;
    try {
      run("ip", ["addr", "add", `${HOST_IP}/24`, "dev", TAP]);
      run("ip", ["link", "set", TAP, "up"]);
      addressed = true;
    } catch (e) {
      console.error(`${name}: ${(e as Error).message}`);
    }
  }, 200);
  const before = receiver.rates.length;
  const bigBefore = bigReceiver.rates.length;
  // CPU per thread of the VMM and of this script (the receiver) over the stream.
  const samples: Map<string, number>[] = [];
  const sample = () => new Map([...cpuSample([child.pid, Deno.pid]), ...kvmAllStats(child.pid)]);
  receiver.onStream = () => samples.push(sample());
  const bigSamples: Map<string, number>[] = [];
  bigReceiver.onStream = () => bigSamples.push(sample());
  const stderr = new Response(child.stderr).text();
  let text = "";
  let lastOutput = performance.now();
  let probed = false;
  let quietKilled = false;
  const probes: Promise<string[]>[] = [];
  // A guest quiet in its measurements has stalled: QEMU's is probed through its monitor (ours
  // reports itself on stderr), then the boot is killed.
  const watch = setInterval(() => {
    const quiet = (performance.now() - lastOutput) / 1000;
    // QEMU's guest is probed also when it printed nothing yet (a boot that never reaches init).
    const ready = text.includes("VBENCH-READY");
    if (monitor && !probed && quiet > (ready ? QEMU_PROBE_S : QEMU_PROBE_S + 60)) {
      probed = true;
      probes.push(probeQemu(child.pid, monitor));
    }
    if (!ready) return;
    if (quiet > QUIET_KILL_S && !quietKilled) {
      quietKilled = true;
      child.kill("SIGKILL");
    }
  }, 1000);
  const decoder = new TextDecoder();
  // CPU per thread and KVM's counters over the three sequential passes: from the guest's
  // READY line to its third result line (a few ms late at both ends: the serial console).
  const seqSamples: Map<string, number>[] = [];
  for await (const chunk of child.stdout) {
    text += decoder.decode(chunk, { stream: true });
    lastOutput = performance.now();
    const seqSeen = [...text.matchAll(/VBENCH-RESULT seq /g)].length;
    if (seqSamples.length === 0 && text.includes("VBENCH-READY")) seqSamples.push(sample());
    else if (seqSamples.length === 1 && seqSeen === 3) seqSamples.push(sample());
  }
  const status = await child.status;
  clearTimeout(timer);
  clearInterval(poll);
  clearInterval(watch);
  const probeLines = (await Promise.all(probes)).flat();
  const seconds = (performance.now() - t0) / 1000;
  const errors = await stderr;
  // The guest closed its end before powering off; the last bytes may still be on their way.
  const streamed = text.includes("VBENCH-NET-BIG");
  for (
    let i = 0;
    i < 20 && (receiver.rates.length === before ||
      streamed && bigReceiver.rates.length === bigBefore);
    i++
  ) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const netHost = receiver.rates.length > before ? receiver.rates.at(-1)! : -1;
  const netHostBig = bigReceiver.rates.length > bigBefore ? bigReceiver.rates.at(-1)! : -1;
  receiver.drop();
  bigReceiver.drop();
  receiver.onStream = undefined;
  bigReceiver.onStream = undefined;
  const num = (re: RegExp) => Number(re.exec(text)?.[1] ?? -1);
  const figures: Figures = {
    seq: [...text.matchAll(/VBENCH-RESULT seq .*MBps=([\d.]+)/g)].map((m) => Number(m[1])),
    dd: /VBENCH-RESULT dd (.*)/.exec(text)?.[1].trim() ?? "-",
    ping: /VBENCH-PING (.*)/.exec(text)?.[1].trim() ?? "-",
    notes: [
      ...text.split("\n").filter((l) => /^VBENCH-(READY|GUEST|BLKSTAT|PING|NET|TCPINFO)/.test(l))
        .map((l) => l.trim()),
      ...text.split("\n").filter((l) => /^VBENCH-KALLSYMS/.test(l)).map((l) => l.trim()),
      ...(seqSamples.length === 2
        ? [
          `VBENCH-CPU sequential: ${cpuReport(seqSamples[0], seqSamples[1])}`,
          `VBENCH-KVM sequential: ${kvmReport(seqSamples[0], seqSamples[1])}`,
        ]
        : []),
      ...(samples.length >= 2 ? [`VBENCH-CPU stream: ${cpuReport(samples[0], samples[1])}`] : []),
      ...(samples.length >= 2 ? [`VBENCH-KVM stream: ${kvmReport(samples[0], samples[1])}`] : []),
      ...(bigSamples.length >= 2
        ? [`VBENCH-CPU large frames: ${cpuReport(bigSamples[0], bigSamples[1])}`]
        : []),
      ...(bigSamples.length >= 2
        ? [`VBENCH-KVM large frames: ${kvmReport(bigSamples[0], bigSamples[1])}`]
        : []),
      // The device thread's reports (an interrupt left unacknowledged: where it went), finished
      // boot or not, and QEMU's state read through its monitor when its guest went quiet.
      ...errors.split("\n").filter((l) => /^virtio /.test(l)).slice(0, 40),
      ...probeLines,
      ...(quietKilled ? [`killed after ${QUIET_KILL_S} s without guest output`] : []),
    ],
    iops: num(/VBENCH-RESULT rand .*IOPS=([\d.]+)/),
    latencyUs: num(/VBENCH-RESULT rand .*latency_us=([\d.]+)/),
    netGuest: num(/VBENCH-RESULT net .*Mbps=([\d.]+)/),
    netHost,
    // The second stream's result line comes after the VBENCH-NET-BIG marker.
    netGuestBig: Number(
      /VBENCH-NET-BIG\s[^]*?VBENCH-RESULT net .*Mbps=([\d.]+)/.exec(text)?.[1] ?? -1,
    ),
    netHostBig,
    seconds,
    code: status.code,
    done: text.includes("VBENCH-DONE"),
  };
  if (!figures.done) {
    console.error(`${name}: no VBENCH-DONE (code ${status.code})\n${text.slice(-3000)}\n${errors}`);
  }
  return figures;
}

/**
 * Names the RIPs of the stall reports (ours: `RIP 0x...` and the stack's text words; QEMU's
 * monitor: `RIP=...`) from the
 * text symbols a finished boot left on the disk (VBENCH-KALLSYMS); right only with `nokaslr`.
 */
function symbolize(disk: string, results: Record<string, Figures[]>): void {
  const all = Object.values(results).flat();
  const size = Math.max(
    -1,
    ...all.flatMap((f) => f.notes).map((l) => Number(/VBENCH-KALLSYMS (\d+)/.exec(l)?.[1] ?? -1)),
  );
  const rips = [
    ...new Set(
      all.flatMap((f) => f.notes).flatMap((l) =>
        [
          ...l.matchAll(/RIP[ =](?:0x)?([0-9a-f]{16})/gi),
          // The kernel-text words of our stall report's stack line (return addresses, mostly).
          ...(/ stack at RSP .*: text ([^;]*);/.exec(l)?.[1] ?? "").matchAll(/0x([0-9a-f]{16})/g),
        ].map((m) => BigInt(`0x${m[1]}`))
      ),
    ),
  ];
  if (size <= 0 || rips.length === 0) return;
  const f = Deno.openSync(disk);
  const bytes = new Uint8Array(size);
  f.seekSync(KALLSYMS_MIB << 20, Deno.SeekMode.Start);
  let got = 0;
  while (got < size) {
    const n = f.readSync(bytes.subarray(got));
    if (n === null) break;
    got += n;
  }
  f.close();
  const syms = new TextDecoder().decode(bytes.subarray(0, got)).split("\n").flatMap((l) => {
    const [a, , name, mod] = l.split(/\s+/);
    return a && name ? [{ at: BigInt(`0x${a}`), name: mod ? `${name} ${mod}` : name }] : [];
  }).sort((x, y) => (x.at < y.at ? -1 : x.at > y.at ? 1 : 0));
  const kaslr = !(Deno.env.get("KVM_VIRTIO_BENCH_APPEND") ?? "").includes("nokaslr");
  for (const rip of rips) {
    let best: { at: bigint; name: string } | undefined;
    for (const s of syms) {
      if (s.at > rip) break;
      best = s;
    }
    console.log(
      `symbol of RIP 0x${rip.toString(16)}: ${
        best ? `${best.name}+0x${(rip - best.at).toString(16)}` : "-"
      }${kaslr ? " (KASLR on: only right for the boot that wrote the symbols)" : ""}`,
    );
  }
}

const median = (xs: number[]) => {
  const ok = xs.filter((x) => x >= 0).sort((a, b) => a - b);
  return ok.length === 0 ? -1 : ok[ok.length >> 1];
};

const HELP =
  `bench/virtio_compare.ts: virtio disk and network throughput, this VMM against QEMU (issue 16).

  deno run -A bench/virtio_compare.ts --prepare   on the host: QEMU bundle, initramfs, helper
  deno run -A bench/virtio_compare.ts [--only ours|qemu]
                                                  the measurements (needs root, /dev/kvm, QEMU):
                                                  run it in the sandbox, see the module's doc
  --only ours|qemu   boot only one of the two (a quick look at one side)
  KVM_VIRTIO_BENCH_RUNS    rounds (default 2)
  KVM_VIRTIO_BENCH_KILL_S  seconds before a boot is killed (default 1200)
  KVM_VIRTIO_BENCH_QUIET_S seconds without guest output, after VBENCH-READY, before a boot
                           is killed as stalled (default 150)
  KVM_VIRTIO_BENCH_APPEND  words added to both kernel command lines (e.g. nokaslr)`;

async function main(): Promise<void> {
  if (Deno.args.includes("--help") || Deno.args.includes("-h")) return console.log(HELP);
  if (Deno.args.includes("--prepare")) return await prepare();
  const only = Deno.args.includes("--only") ? Deno.args[Deno.args.indexOf("--only") + 1] : "";
  if (only !== "" && only !== "ours" && only !== "qemu") {
    throw new Error(`--only ${only}: ours or qemu\n${HELP}`);
  }
  const kernel = hostKernelPath() ?? "/boot/vmlinuz";
  const initrd = `${BENCH_DIR}/initrd.cpio`;
  if (!exists(initrd) || !exists(`${QEMU_DIR}/bin/qemu-system-x86_64`)) {
    throw new Error("run `deno run -A bench/virtio_compare.ts --prepare` first (on the host)");
  }
  if (!exists("/dev/net/tun") && exists(`${BENCH_DIR}/tun.ko`)) {
    new Deno.Command("insmod", { args: [`${BENCH_DIR}/tun.ko`], stderr: "null" }).outputSync();
  }
  // KVM's counters (exits, halts, injections) for the stall reports of both VMMs, where debugfs
  // can be mounted (the sandbox runs as root); best effort.
  if (!exists("/sys/kernel/debug/kvm")) {
    new Deno.Command("mount", {
      args: ["-t", "debugfs", "debugfs", "/sys/kernel/debug"],
      stderr: "null",
    })
      .outputSync();
  }
  // The disk: DISK_MIB of a repeated random MiB (not sparse, not zeros) in the page cache.
  const disk = await Deno.makeTempFile({ suffix: ".img" });
  {
    const block = new Uint8Array(1 << 20);
    for (let i = 0; i < block.length; i += 65536) {
      crypto.getRandomValues(block.subarray(i, i + 65536));
    }
    const f = await Deno.open(disk, { write: true });
    for (let i = 0; i < DISK_MIB; i++) {
      block[0] = i; // each MiB differs
      await f.write(block);
    }
    f.close();
  }
  // KVM_VIRTIO_BENCH_APPEND adds to both command lines (`nokaslr` makes a stalled guest's RIP
  // match System.map).
  const base = `console=ttyS0 panic=-1 quiet ${Deno.env.get("KVM_VIRTIO_BENCH_APPEND") ?? ""}`
    .trim();
  const cache = await Deno.makeTempDir({ prefix: "virtio-bench-cache-" });
  const env: Record<string, string> = {
    ...carriedLiblzmaEnv(QEMU_DIR),
    DENO_KVM_CACHE: cache,
    // A guest of ours stuck with no interrupt pending: its state after 40 s without device
    // activity (the unacknowledged-interrupt report covers the others).
    DENO_KVM_VIRTIO_QUIET_S: "40",
    // Where the device thread's time went (serving, in preadv), on stderr at the stop.
    DENO_KVM_VIRTIO_TIMING: "1",
  };
  const ours = [
    "run",
    "-A",
    "--no-check",
    `${ROOT}examples/boot_linux.ts`,
    "--kernel",
    kernel,
    "--initrd",
    initrd,
    "--cmdline",
    // With virtio-pci ours has a PCI bus too: the same command line as QEMU's.
    PCI ? base : `${base} pci=off`,
    "--memory",
    `${MEMORY_MIB}M`,
    "--cpus",
    String(CPUS),
    "--disk",
    disk,
    "--net",
    TAP,
    "--virtio-transport",
    PCI ? "pci" : "mmio",
  ];
  const [qemuLoader, ...qemuBoot] = directBootCommand(QEMU_DIR, {
    kernel,
    initrd,
    cmdline: base,
    memoryMiB: MEMORY_MIB,
    cpus: CPUS,
    cpu: QEMU_CPU,
  });
  const qemu = [
    ...qemuBoot,
    "-drive",
    `file=${disk},format=raw,if=none,id=d0`,
    "-device",
    "virtio-blk-pci,drive=d0",
    "-netdev",
    `tap,id=n0,ifname=${TAP},script=no,downscript=no`,
    // No option ROM (the bundle carries no efi-virtio.rom; a -kernel boot needs none).
    "-device",
    "virtio-net-pci,netdev=n0,romfile=",
    "-monitor",
    `unix:${QEMU_MONITOR},server=on,wait=off`,
  ];
  const all: [string, string, string[]][] = [
    [`deno-kvm (virtio-${PCI ? "pci, MSI-X" : "mmio"})`, Deno.execPath(), ours],
    ["qemu (virtio-pci)", qemuLoader, qemu],
  ];
  const ways = all.filter(([n]) => only === "" || n.startsWith(only === "ours" ? "deno" : "qemu"));
  try {
    const thp = Deno.readTextFileSync("/sys/kernel/mm/transparent_hugepage/enabled").trim();
    console.log(`host transparent huge pages: ${thp}`);
  } catch {
    console.log("host transparent huge pages: unknown");
  }
  const receiver = new Receiver(PORT);
  const bigReceiver = new Receiver(BIG_PORT);
  const results: Record<string, Figures[]> = Object.fromEntries(ways.map(([n]) => [n, []]));
  const started = new Date().toISOString();
  try {
    for (let i = 0; i < RUNS; i++) {
      // Alternate which goes first, so neither always meets the warmer host.
      const order = i % 2 === 0 ? ways : [...ways].reverse();
      for (const [name, cmd, args] of order) {
        const isQemu = name.startsWith("qemu");
        const f = await boot(
          name,
          cmd,
          args,
          isQemu ? {} : env,
          receiver,
          bigReceiver,
          isQemu ? QEMU_MONITOR : undefined,
        );
        console.log(
          `round ${i + 1}, ${name}: seq ${f.seq.join("/")} MB/s; dd: ${f.dd}; ` +
            `rand ${f.iops} IOPS (${f.latencyUs} us); net host ${f.netHost.toFixed(1)} ` +
            `(large frames ${f.netHostBig.toFixed(1)}) ` +
            `guest ${f.netGuest} Mbit/s; ${f.seconds.toFixed(0)} s, code ${f.code}` +
            (f.done ? "" : ", INCOMPLETE"),
        );
        for (const note of f.notes) console.log(`  ${note}`);
        results[name].push(f);
      }
    }
    symbolize(disk, results);
  } finally {
    await receiver.close();
    await bigReceiver.close();
    await Deno.remove(disk);
    await Deno.remove(cache, { recursive: true });
  }
  console.log(
    `\n${started} - ${new Date().toISOString()}, ${RUNS} rounds, ${CPUS} vCPU, ` +
      `${MEMORY_MIB} MiB, ${DISK_MIB} MiB raw image; medians over the boots (each boot: median of 3 seq passes)`,
  );
  const [oursName, qemuName] = all.map(([n]) => n);
  const metric = (label: string, pick: (f: Figures) => number, digits = 0) => {
    const a = median((results[oursName] ?? []).map(pick));
    const b = median((results[qemuName] ?? []).map(pick));
    const each = (n: string) => (results[n] ?? []).map((f) => pick(f).toFixed(digits)).join(", ");
    console.log(
      `${label.padEnd(34)} ${a.toFixed(digits).padStart(9)} ${b.toFixed(digits).padStart(9)} ` +
        `${a > 0 && b > 0 ? (a / b).toFixed(2) : "-"}`.padStart(7) +
        `   (ours ${each(oursName)}; qemu ${each(qemuName)})`,
    );
  };
  console.log(`${"metric".padEnd(34)} ${"deno-kvm".padStart(9)} ${"qemu".padStart(9)}   ratio`);
  metric("sequential read, MB/s", (f) => median(f.seq), 1);
  metric("4 KiB random read (QD1), IOPS", (f) => f.iops);
  metric("  its latency, us (lower is better)", (f) => f.latencyUs, 1);
  metric("guest-to-host TCP, Mbit/s (host)", (f) => f.netHost, 1);
  metric("guest-to-host TCP, Mbit/s (guest)", (f) => f.netGuest, 1);
  metric(`  frames >= ${BIG_TSO_SEGS} segs, Mbit/s (host)`, (f) => f.netHostBig, 1);
  metric(`  frames >= ${BIG_TSO_SEGS} segs, Mbit/s (guest)`, (f) => f.netGuestBig, 1);
  for (const [name] of ways) {
    console.log(`${name} dd: ${results[name].map((f) => f.dd).join(" | ")}`);
    console.log(`${name} ping: ${results[name].map((f) => f.ping).join(" | ")}`);
  }
}

if (import.meta.main) await main();
