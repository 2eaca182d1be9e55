/**
 * The per-user cache directory (the native shim's builds, extracted kernels):
 * `$DENO_KVM_CACHE`, else `$XDG_CACHE_HOME/deno-kvm`, else `~/.cache/deno-kvm`.
 *
 * @module
 */

/** The cache directory, or undefined when no variable names one (or env access is denied). */
export function userCacheDir(): string | undefined {
  const env = (name: string) => {
    try {
      return Deno.env.get(name) || undefined;
    } catch {
      return undefined;
    }
  };
  const explicit = env("DENO_KVM_CACHE");
  if (explicit) return explicit;
  const xdg = env("XDG_CACHE_HOME") ?? (env("HOME") ? `${env("HOME")}/.cache` : undefined);
  return xdg ? `${xdg}/deno-kvm` : undefined;
}
