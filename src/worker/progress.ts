// Maps the engine's per-stage progress onto one 0..1 figure for the whole job, and throttles how often
// it is written to Postgres, Redis and the event log (a fine-tuning run emits a line per step).
import type { JobProgress } from '../queue/index.js';

/**
 * Share of the whole job each stage takes. Engine stages first (in the engine's order, ENGINE_STAGES), then the worker's own.
 * Fine-tuning dominates the wall time when present; without it the rewrite and the measurement do.
 */
const WEIGHTS_PLAIN: Record<string, number> = {
  staging: 1,
  analyze: 8,
  plan: 8,
  rewrite: 35,
  evaluate: 8,
  write: 5,
  verify: 30,
  store: 5,
};

const WEIGHTS_FINETUNE: Record<string, number> = {
  staging: 1,
  analyze: 2,
  plan: 2,
  rewrite: 8,
  finetune: 70,
  evaluate: 5,
  write: 2,
  verify: 8,
  store: 2,
};

export const STAGE_ORDER = ['staging', 'latency', 'analyze', 'plan', 'rewrite', 'finetune', 'evaluate', 'write', 'verify', 'store'];

/** The latency rule's candidate timing (before the engine run) takes about as long as the rewrite. */
const LATENCY_WEIGHT = { plain: 30, finetune: 8 };

export function stageWeights(withFinetune: boolean, withLatency = false): Record<string, number> {
  const base = withFinetune ? WEIGHTS_FINETUNE : WEIGHTS_PLAIN;
  if (!withLatency) return base;
  return { ...base, latency: withFinetune ? LATENCY_WEIGHT.finetune : LATENCY_WEIGHT.plain };
}

/** Fraction 0..1 of the job done when `stage` is `done`/`total` through. Unknown stages do not move it. */
export function overallProgress(weights: Record<string, number>, stage: string, done: number, total: number): number | null {
  const index = STAGE_ORDER.indexOf(stage);
  const weight = weights[stage];
  if (index < 0 || weight === undefined) return null;
  let before = 0;
  let sum = 0;
  for (const [i, name] of STAGE_ORDER.entries()) {
    const w = weights[name] ?? 0;
    sum += w;
    if (i < index) before += w;
  }
  const within = total > 0 ? Math.min(1, Math.max(0, done / total)) : 0;
  return (before + weight * within) / sum;
}

export interface ProgressSink {
  (progress: JobProgress): Promise<void>;
}

/**
 * Forwards at most one update per `intervalMs`, except that a stage change is always forwarded at once,
 * after the previous stage's pending update, and the latest pending update is delivered after the interval
 * (so the last step of a stage is never lost).
 * Writes are serialized: a slow database never sees two updates of one job racing.
 */
export class ProgressThrottle {
  private lastSentAt = 0;
  private lastStage: string | null = null;
  private pending: JobProgress | null = null;
  private timer: NodeJS.Timeout | null = null;
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly sink: ProgressSink,
    private readonly onError: (err: unknown) => void,
    private readonly intervalMs = 250,
    private readonly now: () => number = Date.now,
  ) {}

  push(progress: JobProgress): void {
    const stageChanged = progress.stage !== this.lastStage;
    // The previous stage's last figure goes out before the new stage's first: its final count (and the
    // rate clients compute from it) would otherwise be lost whenever a stage ends within the interval.
    if (stageChanged && this.pending) this.send(this.pending);
    if (stageChanged || this.now() - this.lastSentAt >= this.intervalMs) {
      this.send(progress);
      return;
    }
    this.pending = progress;
    if (!this.timer) {
      const wait = Math.max(0, this.intervalMs - (this.now() - this.lastSentAt));
      this.timer = setTimeout(() => {
        this.timer = null;
        const next = this.pending;
        this.pending = null;
        if (next) this.send(next);
      }, wait);
    }
  }

  private send(progress: JobProgress): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.pending = null;
    this.lastSentAt = this.now();
    this.lastStage = progress.stage;
    this.chain = this.chain.then(() => this.sink(progress)).catch(this.onError);
  }

  /** Delivers anything pending and waits for every write to finish. */
  async flush(): Promise<void> {
    const next = this.pending;
    if (next) this.send(next);
    await this.chain;
  }

  /** Drops what is pending (the job ended) and waits for writes in flight. */
  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.pending = null;
    await this.chain;
  }
}
