// Rate and time left of the stage a job is in, for the SSE `progress` events and GET /v1/jobs/:id. The
// worker reports `done` of `total` units per stage (layers, steps, files); the rate is the units done between
// the first and the latest update of the stage seen, over the time between them, and the ETA is what is
// left at that rate. Stages whose total is unknown (0) and a stage seen once have neither.
import type { PrismaClient } from '../db/client.js';
import type { JobProgress } from '../queue/index.js';
import { apiStage, type JobStage } from './schemas.js';

export type StageRate = {
  rate: number | null;
  etaSeconds: number | null;
};

interface Sample {
  at: number;
  done: number;
}

/** Rate (units/s) and ETA (s) from two samples of one stage; nulls when they do not tell. */
export function stageRate(first: Sample, last: Sample, total: number): StageRate {
  const seconds = (last.at - first.at) / 1000;
  const units = last.done - first.done;
  if (total <= 0 || seconds <= 0 || units <= 0) return { rate: null, etaSeconds: null };
  const rate = units / seconds;
  return { rate: round(rate), etaSeconds: round(Math.max(0, total - last.done) / rate) };
}

function round(value: number): number {
  return Math.round(value * 1000) / 1000;
}

/** One per SSE stream: remembers the first update of the current stage and adds rate and ETA to each. */
export class StageRateTracker {
  private stage: string | null = null;
  private first: Sample | null = null;

  constructor(private readonly now: () => number = Date.now) {}

  next(p: JobProgress): JobProgress & StageRate {
    const sample = { at: this.now(), done: p.done };
    if (p.stage !== this.stage || this.first === null || p.done < this.first.done) {
      this.stage = p.stage;
      this.first = sample;
    }
    return { ...p, ...stageRate(this.first, sample, p.total) };
  }
}

/** How many progress rows of the current stage GET /v1/jobs/:id reads back (the rate is over these). */
const RATE_WINDOW_ROWS = 200;

export type StageProgressView = StageRate & {
  stage: JobStage;
  done: number;
  total: number;
  message?: string;
};

function progressOf(data: unknown): JobProgress | null {
  if (typeof data !== 'object' || data === null) return null;
  const p = data as Partial<JobProgress>;
  if (typeof p.stage !== 'string' || typeof p.done !== 'number' || typeof p.total !== 'number') return null;
  return { stage: p.stage, done: p.done, total: p.total, percent: typeof p.percent === 'number' ? p.percent : 0, ...(typeof p.message === 'string' ? { message: p.message } : {}) };
}

/**
 * The current stage of a running job from its progress event rows (written by the state module): the latest
 * row, and the earliest row of the same stage within the last RATE_WINDOW_ROWS since the attempt started.
 */
export async function currentStageProgress(prisma: PrismaClient, jobId: string): Promise<StageProgressView | null> {
  const started = await prisma.jobEvent.findFirst({
    where: { jobId, type: 'status', data: { path: ['status'], equals: 'running' } },
    orderBy: { id: 'desc' },
    select: { id: true },
  });
  const rows = await prisma.jobEvent.findMany({
    where: { jobId, type: 'progress', ...(started ? { id: { gt: started.id } } : {}) },
    orderBy: { id: 'desc' },
    take: RATE_WINDOW_ROWS,
    select: { createdAt: true, data: true },
  });
  const latest = rows[0] ? progressOf(rows[0].data) : null;
  const stage = latest ? apiStage(latest.stage) : null;
  if (!latest || !rows[0] || stage === null) return null;
  let first = { at: rows[0].createdAt.getTime(), done: latest.done };
  for (const row of rows.slice(1)) {
    const p = progressOf(row.data);
    if (!p || p.stage !== latest.stage || p.done > first.done) break;
    first = { at: row.createdAt.getTime(), done: p.done };
  }
  const rate = stageRate(first, { at: rows[0].createdAt.getTime(), done: latest.done }, latest.total);
  return { stage, done: latest.done, total: latest.total, ...(latest.message !== undefined ? { message: latest.message } : {}), ...rate };
}
