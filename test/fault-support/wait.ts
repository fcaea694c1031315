// Synchronisation for fault tests: poll a condition until it holds or a deadline passes. Never a bare sleep:
// every wait names what it waits for, so a timeout says which step of the scenario did not happen.

export interface WaitOptions {
  timeoutMs: number;
  /** Pause between probes. */
  intervalMs?: number;
}

/**
 * Calls `probe` until it returns a value other than undefined/null/false and returns that value. A probe
 * that throws counts as "not yet" (a dependency may be down on purpose); its last error is quoted on timeout.
 */
export async function waitUntil<T>(
  what: string,
  probe: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  options: WaitOptions,
): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  const interval = options.intervalMs ?? 100;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== null && value !== false) return value;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const why = lastError instanceof Error ? `; last probe error: ${lastError.message}` : '';
      throw new Error(`timed out after ${options.timeoutMs} ms waiting for ${what}${why}`);
    }
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

/** Runs `fn` with a deadline; the error names the step that hung. */
export async function withDeadline<T>(what: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      fn(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not finish within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
