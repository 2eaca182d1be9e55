// Loaded before every test module (`deno test --preload`, see tests/run.ts):
// the native shim stays loaded for the life of the process by design, so it
// is loaded here, outside any test, where the resource sanitizer does not
// count it as a leak of the first test that happens to open KVM.

import { loadNative } from "../mod.ts";

await loadNative();
