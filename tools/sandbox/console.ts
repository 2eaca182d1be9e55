/**
 * Follows the guest's serial console: strips `\r`, finds the start and exit markers printed by
 * `/init`, and forwards text as it arrives. Text that might be the beginning of a marker is held
 * back until it is known not to be one, so markers never leak into the output.
 *
 * @module
 */

import { exitMarkerPrefix, MARKER_HEAD, startMarker } from "./script.ts";

/** Where the run is, as seen on the console. */
export type ConsolePhase = "boot" | "command" | "done";

/** Options of {@link ConsoleParser}. */
export interface ConsoleParserOptions {
  /** the run's nonce, as given to `initScript` */
  nonce: string;
  /** when true, only the command's output is forwarded; otherwise the whole console */
  quiet: boolean;
  /** receives forwarded text */
  write: (text: string) => void;
  /** called once when the command starts */
  onStart?: () => void;
}

/** Length of the longest suffix of `text` that is a proper prefix of `head`. */
function heldSuffix(text: string, head: string): number {
  for (let n = Math.min(text.length, head.length - 1); n > 0; n--) {
    if (head.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}

/** Incremental console parser; feed it with {@link push}, then call {@link end}. */
export class ConsoleParser {
  /** current phase */
  phase: ConsolePhase = "boot";
  /** the command's exit code once the exit marker was seen */
  exitCode: number | null = null;
  /** console text before the command started (kernel and init noise) */
  bootLog = "";
  /** the command's output */
  output = "";
  #pending = "";
  /** a marker just ended; the line end after it (maybe in a later chunk) is the marker's own */
  #afterMarker = false;
  #start: string;
  #exit: RegExp;
  #opts: ConsoleParserOptions;

  /** @param opts see {@link ConsoleParserOptions} */
  constructor(opts: ConsoleParserOptions) {
    this.#opts = opts;
    this.#start = startMarker(opts.nonce);
    this.#exit = new RegExp(`${escapeRegExp(exitMarkerPrefix(opts.nonce))}(\\d+)@@`);
  }

  #emit(text: string): void {
    if (text === "") return;
    if (this.phase === "boot") this.bootLog += text;
    else if (this.phase === "command") this.output += text;
    if (!this.#opts.quiet || this.phase === "command") this.#opts.write(text);
  }

  /** Feeds decoded console text. */
  push(text: string): void {
    this.#pending += text.replaceAll("\r", "");
    for (;;) {
      if (this.#afterMarker && this.#pending !== "") {
        if (this.#pending.startsWith("\n")) this.#pending = this.#pending.slice(1);
        this.#afterMarker = false;
      }
      if (this.phase === "boot") {
        const i = this.#pending.indexOf(this.#start);
        if (i < 0) break;
        this.#emit(this.#pending.slice(0, i));
        this.#pending = this.#pending.slice(i + this.#start.length);
        this.#afterMarker = true;
        this.phase = "command";
        this.#opts.onStart?.();
      } else if (this.phase === "command") {
        const m = this.#exit.exec(this.#pending);
        if (!m) break;
        this.#emit(this.#pending.slice(0, m.index));
        this.#pending = this.#pending.slice(m.index + m[0].length);
        this.#afterMarker = true;
        this.exitCode = Number(m[1]);
        this.phase = "done";
      } else {
        break;
      }
    }
    // Forward all but a tail that could still grow into a marker.
    const keep = this.phase === "done" ? 0 : heldMarkerTail(this.#pending);
    this.#emit(this.#pending.slice(0, this.#pending.length - keep));
    this.#pending = this.#pending.slice(this.#pending.length - keep);
  }

  /** Flushes held-back text once the console has closed. */
  end(): void {
    this.#emit(this.#pending);
    this.#pending = "";
  }
}

/** How much of the end of `text` may be an unfinished marker. */
function heldMarkerTail(text: string): number {
  // A marker already begun (head seen, neither its closing "@@" nor a line end yet) is held whole.
  const at = text.lastIndexOf(MARKER_HEAD);
  const rest = at >= 0 ? text.slice(at + MARKER_HEAD.length) : "";
  if (at >= 0 && !rest.includes("@@") && !rest.includes("\n")) return text.length - at;
  return heldSuffix(text, MARKER_HEAD);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
