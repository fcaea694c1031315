// Measuring with onnxruntime-node: seeded inputs, session options, latency statistics and interleaved timing,
// shared by the verification (verify.ts), the latency rule (latency-timing.ts) and the benchmarks.
import * as ort from 'onnxruntime-node';

export type GraphOptimizationLevel = 'disabled' | 'basic' | 'extended' | 'all';
export type ExecutionMode = 'sequential' | 'parallel';

export const MIN_TIMED_RUNS = 20;

export interface LatencyStats {
  runs: number;
  medianMs: number;
  p90Ms: number;
  meanMs: number;
  minMs: number;
  /**
   * Median CPU time of this process per run (all its threads; spinning pool threads included).
   * Unlike wall time it does not grow while other processes hold the cores, so on a shared
   * machine its ratio is the steadier estimate of how much less work a model needs.
   */
  cpuMedianMs: number | null;
}

/** mulberry32: small, fast, and reproducible across platforms for a given seed */
export function seededUniform(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal samples (Box–Muller): inputs look like normalised images, not [0, 1) noise. */
export function fillNormal(data: Float32Array, uniform: () => number): Float32Array {
  for (let i = 0; i < data.length; i += 2) {
    const u1 = 1 - uniform(); // (0, 1]: log stays finite
    const u2 = uniform();
    const radius = Math.sqrt(-2 * Math.log(u1));
    data[i] = radius * Math.cos(2 * Math.PI * u2);
    if (i + 1 < data.length) data[i + 1] = radius * Math.sin(2 * Math.PI * u2);
  }
  return data;
}

export function median(sorted: readonly number[]): number {
  const n = sorted.length;
  if (n === 0) throw new RangeError('median of no samples');
  const mid = n >> 1;
  return n % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** nearest-rank percentile of ascending samples */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) throw new RangeError('percentile of no samples');
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1]!;
}

export function latencyStats(wallMs: readonly number[], cpuMs?: readonly number[]): LatencyStats {
  const sorted = [...wallMs].sort((a, b) => a - b);
  return {
    runs: sorted.length,
    medianMs: median(sorted),
    p90Ms: percentile(sorted, 90),
    meanMs: sorted.reduce((s, v) => s + v, 0) / sorted.length,
    minMs: sorted[0]!,
    cpuMedianMs: cpuMs && cpuMs.length > 0 ? median([...cpuMs].sort((a, b) => a - b)) : null,
  };
}

export const ratioOf = (a: number | null, b: number | null): number | null => (a !== null && b !== null && b > 0 ? a / b : null);

export interface SessionSettings {
  threads: number;
  graphOptimizationLevel: GraphOptimizationLevel;
  executionMode: ExecutionMode;
  /**
   * Whether the intra-op pool's threads spin between operators (onnxruntime's default) instead of blocking.
   * Off by default here: measured on VGG-16 at 2 threads (BENCHMARKS.md, threads table) blocking ran both
   * models faster and the compressed one more so (idle: 3.66× → 4.03×; loaded: 2.4–2.6× → 3.1–3.3×), since
   * a Tucker chain's many short convolutions leave a spinning thread waiting, on a core the other needs.
   */
  spinning?: boolean;
}

export function sessionOptions(settings: SessionSettings): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: ['cpu'],
    intraOpNumThreads: settings.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: settings.graphOptimizationLevel,
    executionMode: settings.executionMode,
    logSeverityLevel: 3,
    ...(settings.spinning ? {} : { extra: { session: { intra_op: { allow_spinning: '0' } } } }),
  };
}

type Session = ort.InferenceSession;

export interface TimingSamples {
  wallMs: number[];
  cpuMs: number[];
}

/**
 * Times two sessions on the same feeds, alternating which goes first each round so that neither
 * systematically benefits from a warmer cache or a quieter moment.
 */
export async function timeInterleaved(
  a: Session, b: Session, feeds: Record<string, ort.Tensor>, runs: number, warmup: number,
): Promise<{ a: TimingSamples; b: TimingSamples }> {
  const once = async (s: Session, into?: TimingSamples): Promise<void> => {
    const cpuStart = process.cpuUsage();
    const start = process.hrtime.bigint();
    const out = await s.run(feeds);
    const wall = Number(process.hrtime.bigint() - start) / 1e6;
    const cpu = process.cpuUsage(cpuStart);
    for (const v of Object.values(out)) v.dispose();
    into?.wallMs.push(wall);
    into?.cpuMs.push((cpu.user + cpu.system) / 1000);
  };
  for (let i = 0; i < warmup; i++) {
    await once(a);
    await once(b);
  }
  const samples = { a: { wallMs: [], cpuMs: [] } as TimingSamples, b: { wallMs: [], cpuMs: [] } as TimingSamples };
  for (let i = 0; i < runs; i++) {
    if (i % 2 === 0) {
      await once(a, samples.a);
      await once(b, samples.b);
    } else {
      await once(b, samples.b);
      await once(a, samples.a);
    }
  }
  return samples;
}
