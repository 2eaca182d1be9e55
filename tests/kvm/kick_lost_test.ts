// A kick is never lost (issue 11/12 review, finding 1): run() used to read
// immediate_exit, then clear it in a second step; a kick landing between was
// lost, and with the watchdog armed its signal was taken for the watchdog's,
// so KVM_RUN was re-entered and the kicker waited forever (a stdin pump
// stalled). The race runs in a child process (kick/kick_lost.ts), 20 rounds of
// kicks racing watchdog-like signals; the child exits 1 on the first lost kick
// and is killed if it hangs.

import { ok as assert } from "node:assert/strict";

/** A generous bound for 20 rounds; a hang (the old failure) ends the child. */
const CHILD_LIMIT_MS = 240_000;

Deno.test("every kick ends run() while watchdog-like signals race it (20 rounds, child process)", async () => {
  const script = new URL("./kick/kick_lost.ts", import.meta.url).pathname;
  const { code, signal, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, "20", "500"],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(CHILD_LIMIT_MS),
  }).output();
  const out = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  assert(signal === null, `the child was killed by ${signal} (a hang?):\n${out}`);
  assert(code === 0, `the child exited with ${code}:\n${out}`);
  assert(out.includes("20 rounds, no kick lost ok"), out);
});
