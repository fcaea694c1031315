// Upload analysis from the API's side: after a model row is created, its analysis (params, MACs by the
// engine) is queued for the workers (src/worker/analysis.ts). The API process never starts the engine; the
// model's `analysis` field says `pending` until a worker has filled the row (`done`) or given up (`failed`).
import type { Queue } from 'bullmq';
import type { FastifyBaseLogger } from 'fastify';
import { enqueueAnalysis, type AnalysisJobData } from '../queue/index.js';

/** How long an upload waits for Redis before leaving the analysis to the workers' reconciler. */
const ENQUEUE_TIMEOUT_MS = 3000;

export class ModelAnalyzer {
  constructor(
    private readonly queue: Queue<AnalysisJobData>,
    private readonly log: FastifyBaseLogger,
  ) {}

  /** Never rejects: a model whose enqueue failed stays `pending` and a worker's reconciler enqueues it. */
  async schedule(modelId: string): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        enqueueAnalysis(this.queue, modelId),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`timed out after ${ENQUEUE_TIMEOUT_MS} ms`)), ENQUEUE_TIMEOUT_MS);
        }),
      ]);
    } catch (err) {
      this.log.warn({ modelId, err: (err as Error).message }, 'analysis not enqueued; a worker will enqueue it');
    } finally {
      clearTimeout(timer);
    }
  }
}
