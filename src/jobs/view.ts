// A job as the API shows it (GET /v1/jobs/:id, the SSE `status` event, the job-events channel, webhooks).
import type { Job } from '@prisma/client';
import { apiJobError, apiMetrics, apiStage, type ApiJobOptions } from '../api/schemas.js';

function numberRecord(value: unknown): Record<string, number> | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const out: Record<string, number> = {};
  for (const [key, v] of Object.entries(value)) if (typeof v === 'number') out[key] = v;
  return out;
}

export function jobView(job: Job) {
  const report = job.report as { timings?: unknown } | null;
  return {
    id: job.id,
    status: job.status,
    stage: apiStage(job.stage),
    progress: job.progress,
    percent: Math.round(job.progress * 1000) / 10,
    modelId: job.modelId,
    datasetId: job.datasetId ?? job.builtinDataset,
    options: job.options as ApiJobOptions,
    attempts: job.attempts,
    createdAt: job.createdAt.toISOString(),
    startedAt: job.startedAt?.toISOString() ?? null,
    finishedAt: job.finishedAt?.toISOString() ?? null,
    timings: numberRecord(report?.timings),
    metrics: apiMetrics(job.metrics),
    error: apiJobError(job.errorCategory, job.errorMessage),
  };
}

export type JobView = ReturnType<typeof jobView>;
