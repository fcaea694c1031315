// GET /v1/stats: the caller tenant's job throughput, success rate and median compression (dashboards).
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { computeStats } from '../../ops/stats.js';
import { principalOf } from '../auth.js';
import type { AppContext } from '../context.js';
import { int32, int64 } from '../schemas.js';
import { AUTH, problems } from './common.js';

const StatsSchema = z
  .object({
    tenantId: z.string().nullable(),
    windowHours: int32(),
    from: z.iso.datetime().describe('start of the window (whole hours, UTC)'),
    to: z.iso.datetime().describe('end of the window: the end of the current hour'),
    throughputPerHour: z.array(
      z.object({ hour: z.iso.datetime(), succeeded: int64(), failed: int64(), canceled: int64() }),
    ),
    finished: z.object({ succeeded: int64(), failed: int64(), canceled: int64() }),
    pending: z.object({ queued: int64(), running: int64() }),
    successRate: z.number().nullable().describe('succeeded / (succeeded + failed) in the window'),
    medianCompression: z
      .object({ macs: z.number().nullable(), params: z.number().nullable(), jobs: int64() })
      .describe('medians of before/after ratios over the jobs that succeeded in the window'),
  })
  .meta({ id: 'Stats' });

const statsExample: z.input<typeof StatsSchema> = {
  tenantId: '2f0c9a4e-8b1d-4e6f-9a3b-5c7d1e2f3a4b',
  windowHours: 24,
  from: '2026-11-28T13:00:00.000Z',
  to: '2026-11-29T13:00:00.000Z',
  throughputPerHour: [{ hour: '2026-11-29T12:00:00.000Z', succeeded: 14, failed: 1, canceled: 2 }],
  finished: { succeeded: 14, failed: 1, canceled: 2 },
  pending: { queued: 3, running: 2 },
  successRate: 0.933,
  medianCompression: { macs: 4.1, params: 3.9, jobs: 14 },
};

export const statsRoutes: FastifyPluginAsyncZod<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.get(
    '/v1/stats',
    {
      schema: {
        operationId: 'getStats',
        summary: 'Job throughput per hour, success rate and median compression over the last 24 hours',
        tags: ['ops'],
        security: AUTH,
        response: { 200: StatsSchema, ...problems(401, 429, 503) },
        docs: { examples: { 200: statsExample } },
      },
    },
    async (request) => computeStats(ctx.prisma, principalOf(request).tenantId, new Date()),
  );
};
