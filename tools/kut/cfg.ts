/**
 * Reads kvm-unit-tests' `x86/unittests.cfg` (the format of its
 * `scripts/common.bash`) and decides which entries this runner can run the
 * same way on both VMMs. Dev tooling, not part of the published package.
 *
 * @module
 */

/** One `[name]` entry of unittests.cfg. */
export interface KutEntry {
  /** The section name. */
  name: string;
  /** `file`: the program, e.g. `apic.flat`. */
  file: string;
  /** `smp` (default 1). */
  smp: number;
  /** `test_args` (or the older `extra_params = -append ...`), quotes removed; "" when none. */
  testArgs: string;
  /** `qemu_params` / `extra_params` other than `-append`. */
  qemuParams: string;
  /** `groups`, split. */
  groups: string[];
  /** `arch` ("" for any). */
  arch: string;
  /** `timeout` in seconds (90 when absent, as `scripts/runtime.bash`). */
  timeoutS: number;
  /** `check`: `path=value` pairs that must hold on the host. */
  check: string[];
  /** `accel` ("" for any). */
  accel: string;
}

/** The parts of an entry's QEMU parameters both VMMs can honour. */
export interface Applicability {
  /** Why the entry cannot run the same way on both VMMs; undefined when it can. */
  notApplicable?: string;
  /** Memory in MiB (`-m`, default 256). */
  memoryMiB: number;
  /** A remark to show with the result (how a parameter was read). */
  note?: string;
}

function unquote(s: string): string {
  const t = s.trim();
  if (t.length >= 2 && (t[0] === '"' || t[0] === "'") && t[t.length - 1] === t[0]) {
    return t.slice(1, -1);
  }
  return t;
}

/** Parses unittests.cfg text into entries, in file order. */
export function parseUnittestsCfg(text: string): KutEntry[] {
  const entries: KutEntry[] = [];
  let cur: KutEntry | null = null;
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "" || line.startsWith("#")) continue;
    const section = /^\[(.*)\]$/.exec(line);
    if (section) {
      cur = {
        name: section[1],
        file: "",
        smp: 1,
        testArgs: "",
        qemuParams: "",
        groups: [],
        arch: "",
        timeoutS: 90,
        check: [],
        accel: "",
      };
      entries.push(cur);
      continue;
    }
    const kv = /^([a-z_]+)\s*=\s*(.*)$/.exec(line);
    if (!kv || !cur) continue;
    let value = kv[2];
    if (value.startsWith('"""')) {
      // A multi-line value, up to the closing """.
      value = value.slice(3);
      while (!value.includes('"""') && i + 1 < lines.length) value += "\n" + lines[++i];
      value = value.replace(/"""\s*$/, "").replace(/\\\n/g, " ").replace(/\n/g, " ");
    }
    switch (kv[1]) {
      case "file":
        cur.file = value.trim();
        break;
      case "smp":
        cur.smp = Number(value.trim());
        break;
      case "test_args":
        cur.testArgs = unquote(value);
        break;
      case "qemu_params":
      case "extra_params": {
        // The older format put the test's arguments in extra_params as -append '...'.
        const append = /-append\s+('[^']*'|"[^"]*"|\S+)/.exec(value);
        if (append) {
          cur.testArgs = unquote(append[1]);
          value = value.replace(append[0], "");
        }
        cur.qemuParams = value.trim();
        break;
      }
      case "groups":
        cur.groups = value.trim().split(/\s+/).filter(Boolean);
        break;
      case "arch":
        cur.arch = value.trim();
        break;
      case "timeout":
        cur.timeoutS = Number(value.trim().replace(/s$/, ""));
        break;
      case "check":
        cur.check = value.trim().split(/\s+/).filter(Boolean);
        break;
      case "accel":
        cur.accel = value.trim();
        break;
    }
  }
  return entries;
}

/**
 * `-cpu` values that ask QEMU for the CPU KVM supports, which is what both
 * VMMs offer here (`-cpu host`; under KVM `max` is `host`, and
 * `host-phys-bits` is already `host`'s default).
 */
const HOST_LIKE_CPUS = new Set(["host", "max", "max,host-phys-bits", "host,migratable=no"]);

/**
 * Decides whether `entry` can run the same way on our VMM and on QEMU
 * (`-cpu host -m N -smp N`): another CPU model or CPU flags, `-device`,
 * `-machine`/`-M`, `-overcommit`, `-global` and any other QEMU option make it
 * not applicable, with the reason. `arch` other than x86_64, `check` lines
 * the host fails and the `nodefault` group (unless `all`) too, as
 * `run_tests.sh` skips them.
 */
export function applicability(
  entry: KutEntry,
  options: {
    all?: boolean;
    readHostFile?: (path: string) => string | undefined;
    /** The host CPU's vendor string (`GenuineIntel`, `AuthenticAMD`): `vendor=` equal to it is no change. */
    hostVendor?: string;
  } = {},
): Applicability {
  let memoryMiB = 256;
  const notes: string[] = [];
  const na = (why: string): Applicability => ({ notApplicable: why, memoryMiB });
  if (entry.arch && entry.arch !== "x86_64") {
    return na(`arch ${entry.arch} only (the build is x86_64)`);
  }
  if (!options.all && entry.groups.includes("nodefault")) {
    return na("group nodefault: manual runs only");
  }
  if (entry.accel && entry.accel !== "kvm") return na(`accel ${entry.accel} only`);
  const read = options.readHostFile ?? ((p: string) => {
    try {
      return Deno.readTextFileSync(p).trim();
    } catch {
      return undefined;
    }
  });
  for (const c of entry.check) {
    const eq = c.indexOf("=");
    const path = c.slice(0, eq);
    const want = c.slice(eq + 1);
    const got = read(path);
    if (got !== want) return na(`host check ${path}=${want} fails (${got ?? "no such file"})`);
  }
  const tokens = entry.qemuParams.split(/\s+/).filter(Boolean);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    const arg = tokens[i + 1];
    if (t === "-enable-kvm") continue;
    if (t === "-m" && arg !== undefined) {
      const m = /^(\d+)([gGmM]?)$/.exec(arg);
      if (!m) return na(`-m ${arg}`);
      memoryMiB = Number(m[1]) * (m[2].toLowerCase() === "g" ? 1024 : 1);
      i++;
      continue;
    }
    if (t === "-cpu" && arg !== undefined) {
      i++;
      // vendor=X names the host's own vendor: then it changes nothing.
      const vendor = /,vendor=(\w+)$/.exec(arg);
      const model = vendor && vendor[1] === options.hostVendor ? arg.slice(0, vendor.index) : arg;
      if (HOST_LIKE_CPUS.has(model)) {
        if (arg !== "host") notes.push(`-cpu ${arg} run as -cpu host`);
        continue;
      }
      return na(`QEMU CPU model/flags -cpu ${arg}`);
    }
    if (t === "-device") return na(`QEMU device -device ${arg}`);
    if (t === "-machine" || t === "-M") return na(`QEMU machine option ${t} ${arg}`);
    return na(`QEMU option ${t}${arg && !arg.startsWith("-") ? ` ${arg}` : ""}`);
  }
  if (/`/.test(entry.testArgs.replace(/`date \+%s`/g, ""))) {
    return na("test_args with shell substitutions");
  }
  return { memoryMiB, note: notes.length ? notes.join("; ") : undefined };
}

/** `test_args` with the one shell substitution unittests.cfg uses (`` `date +%s` ``) done. */
export function expandTestArgs(testArgs: string, now = Date.now()): string {
  return testArgs.replace(/`date \+%s`/g, String(Math.floor(now / 1000)));
}
