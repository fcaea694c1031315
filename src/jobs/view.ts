// A job as the API shows it (GET /v1/jobs/:id, the SSE `status` event, the job-events channel, webhooks).
import type { Job } from '@prisma/client';

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
    stage: job.stage,
    progress: job.progress,
    percent: Math.round(job.progress * 1000) / 10,
    modelId: job.modelId,
    datasetId: job.datasetId ?? job.builtinDataset,
    options: job.options as Record<string, unknown>,
    attempts: job.attempts,
    createdAt: job.createdAt.toISOString(),
    startedAt: job.startedAt?.toISOString() ?? null,
    finishedAt: job.finishedAt?.toISOString() ?? null,
    timings: numberRecord(report?.timings),
    metrics: (job.metrics as Record<string, unknown> | null) ?? null,
    error: job.errorCategory ? { category: job.errorCategory, message: job.errorMessage ?? '' } : null,
  };
}

export type JobView = ReturnType<typeof jobView>;
