/**
 * Worker side of `bench/exit_overhead.ts --worker`: opens its own PIO guest
 * and runs one block of a named loop per message, answering its ns per exit.
 *
 * @module
 */

import { openThreadLoops, type ThreadLoops } from "./exit_overhead.ts";

type Request = { open: { loopLib: string; block: number } } | { name: string; n: number } | {
  close: true;
};

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<Request>) => void) | null;
  postMessage(message: unknown): void;
};
let opened: { loops: ThreadLoops; close(): void } | undefined;

scope.onmessage = (e) => {
  const m = e.data;
  try {
    if ("open" in m) {
      opened = openThreadLoops(m.open.loopLib, m.open.block);
      scope.postMessage({ names: Object.keys(opened.loops) });
    } else if ("close" in m) {
      opened?.close();
      opened = undefined;
      scope.postMessage({});
    } else {
      scope.postMessage({ ns: opened!.loops[m.name](m.n) });
    }
  } catch (error) {
    scope.postMessage({ error: String(error) });
  }
};
