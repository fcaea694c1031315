// GET /v1/stats: the caller tenant's job throughput, success rate and median compression (dashboards).
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { computeStats } from '../../ops/stats.js';
import { principalOf } from '../auth.js';
import type { AppContext } from '../context.js';
import { AUTH, problems } from './common.js';

const StatsSchema = z
  .object({
    tenantId: z.string().nullable(),
    windowHours: z.number().int(),
    from: z.string(),
    to: z.string(),
    throughputPerHour: z.array(
      z.object({ hour: z.string(), succeeded: z.number().int(), failed: z.number().int(), canceled: z.number().int() }),
    ),
    finished: z.object({ succeeded: z.number().int(), failed: z.number().int(), canceled: z.number().int() }),
    pending: z.object({ queued: z.number().int(), running: z.number().int() }),
    successRate: z.number().nullable().describe('succeeded / (succeeded + failed) in the window'),
    medianCompression: z
      .object({ macs: z.number().nullable(), params: z.number().nullable(), jobs: z.number().int() })
      .describe('medians of before/after ratios over the jobs that succeeded in the window'),
  })
  .meta({ id: 'Stats' });

export const statsRoutes: FastifyPluginAsyncZod<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.get(
    '/v1/stats',
    {
      schema: {
        summary: 'Job throughput per hour, success rate and median compression over the last 24 hours',
        tags: ['ops'],
        security: AUTH,
        response: { 200: StatsSchema, ...problems(401, 429, 503) },
      },
    },
    async (request) => computeStats(ctx.prisma, principalOf(request).tenantId, new Date()),
  );
};
