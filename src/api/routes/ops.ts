// Unauthenticated operational routes: liveness, readiness, the OpenAPI document and Prometheus metrics.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { Registry } from 'prom-client';
import type { AppContext } from '../context.js';
import { ServiceUnavailableError } from '../errors.js';
import { healthExample, readyExample } from '../examples.js';
import { HealthSchema, ReadySchema } from '../schemas.js';
import { problems } from './common.js';

const READY_TIMEOUT_MS = 1500;

async function timed(name: string, check: () => Promise<unknown>): Promise<{ name: string; ok: boolean; ms: number; error?: string }> {
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      check(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
      }),
    ]);
    return { name, ok: true, ms: Math.round(performance.now() - started) };
  } catch (err) {
    return { name, ok: false, ms: Math.round(performance.now() - started), error: (err as Error).message };
  } finally {
    clearTimeout(timer);
  }
}

export const opsRoutes: FastifyPluginAsyncZod<{ ctx: AppContext; metrics: Registry }> = async (app, { ctx, metrics }) => {
  app.get(
    '/healthz',
    {
      schema: {
        operationId: 'getHealth',
        summary: 'Liveness: the process answers',
        tags: ['ops'],
        security: [],
        response: { 200: HealthSchema },
        docs: { examples: { 200: healthExample } },
      },
    },
    async () => ({ status: 'ok' as const }),
  );

  app.get(
    '/readyz',
    {
      schema: {
        operationId: 'getReadiness',
        summary: 'Readiness: PostgreSQL and Redis answer',
        tags: ['ops'],
        security: [],
        response: { 200: ReadySchema, ...problems(503) },
        docs: { examples: { 200: readyExample } },
      },
    },
    async (request) => {
      const results = await Promise.all([
        timed('postgres', () => ctx.prisma.$queryRaw`SELECT 1`),
        timed('redis', () => ctx.redis.ping()),
      ]);
      const down = results.filter((r) => !r.ok);
      if (down.length > 0) {
        // The drivers' messages name hosts and ports: they go to the log, not to the unauthenticated caller.
        request.log.warn({ down: down.map((r) => ({ name: r.name, error: r.error })) }, 'not ready');
        throw new ServiceUnavailableError(`not ready: ${down.map((r) => `${r.name} is down`).join('; ')}; retry when it is back`);
      }
      return { status: 'ready' as const, checks: Object.fromEntries(results.map((r) => [r.name, { ok: r.ok, ms: r.ms }])) };
    },
  );

  app.get('/openapi.yaml', { schema: { hide: true } }, async (_request, reply) =>
    reply.type('application/yaml; charset=utf-8').send(app.swagger({ yaml: true })),
  );

  app.get('/metrics', { schema: { hide: true } }, async (_request, reply) =>
    reply.type(metrics.contentType).send(await metrics.metrics()),
  );
};
