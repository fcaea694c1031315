// Dashboard numbers for GET /v1/stats: jobs finished per hour over a window, the success rate and the
// median compression the service achieved, for one tenant or (operators) for all of them.
import { Prisma } from '@prisma/client';
import type { PrismaClient } from '../db/client.js';

export const STATS_WINDOW_HOURS = 24;
const HOUR_MS = 3600 * 1000;

export interface HourStats {
  /** Start of the hour, ISO 8601 UTC. */
  hour: string;
  succeeded: number;
  failed: number;
  canceled: number;
}

export interface ServiceStats {
  tenantId: string | null;
  windowHours: number;
  from: string;
  to: string;
  /** One entry per hour of the window, oldest first, zeros included. */
  throughputPerHour: HourStats[];
  finished: { succeeded: number; failed: number; canceled: number };
  /** Jobs that exist now and have not finished (not windowed). */
  pending: { queued: number; running: number };
  /** succeeded / (succeeded + failed) in the window; cancellations are the user's choice, not failures. Null without any. */
  successRate: number | null;
  /** Medians over jobs that succeeded in the window, of before/after ratios from the engine report; null without any. */
  medianCompression: { macs: number | null; params: number | null; jobs: number };
}

type FinalStatus = 'succeeded' | 'failed' | 'canceled';

export async function computeStats(
  prisma: PrismaClient,
  tenantId: string | null | undefined,
  now: Date,
  windowHours: number = STATS_WINDOW_HOURS,
): Promise<ServiceStats> {
  // Whole hours: the window ends at the end of the current hour so the last bucket is "this hour so far".
  const endHour = Math.floor(now.getTime() / HOUR_MS) + 1;
  const startHour = endHour - windowHours;
  const from = new Date(startHour * HOUR_MS);
  const to = new Date(endHour * HOUR_MS);
  const tenant = tenantId ? Prisma.sql`AND "tenantId" = ${tenantId}::uuid` : Prisma.empty;
  // The window is compared in epoch seconds, the same expression the hour buckets use, so no time-zone
  // conversion of parameters can put a row outside the buckets. extract(epoch) of a timestamp without
  // time zone reads it as UTC, which is how Prisma stores DateTime.
  const inWindow = Prisma.sql`extract(epoch FROM "finishedAt") >= ${startHour * 3600} AND extract(epoch FROM "finishedAt") < ${endHour * 3600}`;

  const [perHour, pending, medians] = await Promise.all([
    prisma.$queryRaw<{ hour: number; status: FinalStatus; n: number }[]>`
      SELECT floor(extract(epoch FROM "finishedAt") / 3600)::int AS hour, status::text AS status, count(*)::int AS n
      FROM "Job"
      WHERE status IN ('succeeded', 'failed', 'canceled') AND ${inWindow} ${tenant}
      GROUP BY 1, 2`,
    prisma.$queryRaw<{ status: 'queued' | 'running'; n: number }[]>`
      SELECT status::text AS status, count(*)::int AS n FROM "Job" WHERE status IN ('queued', 'running') ${tenant} GROUP BY 1`,
    prisma.$queryRaw<{ macs: number | null; params: number | null; jobs: number }[]>`
      SELECT
        percentile_cont(0.5) WITHIN GROUP (ORDER BY (metrics->>'macs_reduction')::float8)
          FILTER (WHERE jsonb_typeof(metrics->'macs_reduction') = 'number') AS macs,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY (metrics->>'params_reduction')::float8)
          FILTER (WHERE jsonb_typeof(metrics->'params_reduction') = 'number') AS params,
        count(*)::int AS jobs
      FROM "Job"
      WHERE status = 'succeeded' AND ${inWindow} AND metrics IS NOT NULL ${tenant}`,
  ]);

  const hours: HourStats[] = [];
  for (let h = startHour; h < endHour; h++) {
    hours.push({ hour: new Date(h * HOUR_MS).toISOString(), succeeded: 0, failed: 0, canceled: 0 });
  }
  const finished = { succeeded: 0, failed: 0, canceled: 0 };
  for (const row of perHour) {
    hours[row.hour - startHour]![row.status] += row.n;
    finished[row.status] += row.n;
  }
  const pendingCounts = { queued: 0, running: 0 };
  for (const row of pending) pendingCounts[row.status] = row.n;

  const decided = finished.succeeded + finished.failed;
  const m = medians[0];
  return {
    tenantId: tenantId ?? null,
    windowHours,
    from: from.toISOString(),
    to: to.toISOString(),
    throughputPerHour: hours,
    finished,
    pending: pendingCounts,
    successRate: decided === 0 ? null : finished.succeeded / decided,
    medianCompression: { macs: m?.macs ?? null, params: m?.params ?? null, jobs: m?.jobs ?? 0 },
  };
}
