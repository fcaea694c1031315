// Best-effort params/MACs for an uploaded model, from the engine (`python3 -m tuckerize analyze FILE --json`).
// It runs after the upload has been answered (the engine imports torch and may take a while on a large
// model) and fills OnnxModel.params/macs when it succeeds; failures are logged and leave them null.
// Analyses run one at a time and are tracked, so the app's close() kills their process groups and waits for them.
import { spawn, type ChildProcess } from 'node:child_process';
import type { FastifyBaseLogger } from 'fastify';
import type { Config } from '../config.js';
import type { PrismaClient } from '../db/client.js';

export interface ModelTotals {
  params: number;
  macs: number;
}

/** Accepts the shapes the engine's analyze --json may print: {totals: {params, macs}} or {params, macs}. */
export function totalsFromAnalysis(output: unknown): ModelTotals | undefined {
  const pick = (o: unknown): ModelTotals | undefined => {
    if (typeof o !== 'object' || o === null) return undefined;
    const { params, macs } = o as Record<string, unknown>;
    const num = (v: unknown) =>
      typeof v === 'number' ? v : typeof v === 'object' && v !== null && typeof (v as { before?: unknown }).before === 'number' ? (v as { before: number }).before : undefined;
    const p = num(params);
    const m = num(macs);
    return p !== undefined && m !== undefined ? { params: Math.round(p), macs: Math.round(m) } : undefined;
  };
  if (typeof output !== 'object' || output === null) return undefined;
  return pick((output as { totals?: unknown }).totals) ?? pick(output);
}

export class ModelAnalyzer {
  private readonly running = new Set<ChildProcess>();
  private readonly pending = new Set<Promise<void>>();
  private closed = false;
  /** analyses run one at a time: each imports torch and may hold a large model in memory */
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly config: Pick<Config, 'enginePython' | 'engineDir' | 'engineThreads'>,
    private readonly prisma: PrismaClient,
    private readonly log: FastifyBaseLogger,
    private readonly timeoutMs = 120_000,
  ) {}

  /** Starts the analysis in the background; the returned promise is for tests and never rejects. */
  schedule(modelId: string, filePath: string): Promise<void> {
    if (this.closed) return Promise.resolve();
    const run = this.tail.then(() => (this.closed ? Promise.reject(new Error('analyzer closed')) : this.analyze(filePath)));
    this.tail = run.catch(() => undefined);
    const task = run
      .then(async (totals) => {
        await this.prisma.onnxModel.update({
          where: { id: modelId },
          data: { params: BigInt(totals.params), macs: BigInt(totals.macs) },
        });
        this.log.info({ modelId, ...totals }, 'model analyzed');
      })
      .catch((err: Error) => {
        if (!this.closed) this.log.warn({ modelId, err: err.message }, 'model analysis failed; params/macs stay null');
      });
    this.pending.add(task);
    void task.finally(() => this.pending.delete(task));
    return task;
  }

  private analyze(filePath: string): Promise<ModelTotals> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.config.enginePython, ['-m', 'tuckerize', 'analyze', filePath, '--json'], {
        env: {
          PATH: '/usr/local/bin:/usr/bin:/bin',
          PYTHONPATH: this.config.engineDir,
          OMP_NUM_THREADS: String(this.config.engineThreads),
        },
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      this.running.add(child);
      let stdout = '';
      let stderr = '';
      child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
        if (stdout.length < 8 * 1024 * 1024) stdout += chunk;
      });
      child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
        stderr = (stderr + chunk).slice(-4000);
      });
      const timer = setTimeout(() => killGroup(child), this.timeoutMs);
      child.on('error', (err) => {
        clearTimeout(timer);
        this.running.delete(child);
        reject(err);
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        this.running.delete(child);
        if (code !== 0) {
          reject(new Error(`engine analyze exited with ${signal ?? code}: ${stderr.trim().split('\n').pop() ?? ''}`));
          return;
        }
        try {
          const totals = totalsFromAnalysis(JSON.parse(stdout));
          if (!totals) throw new Error('no params/macs in the engine output');
          resolve(totals);
        } catch (err) {
          reject(new Error(`cannot read engine analyze output: ${(err as Error).message}`));
        }
      });
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const child of this.running) killGroup(child);
    await Promise.all([...this.pending]);
  }
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
