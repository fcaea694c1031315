// /v1/webhooks: a tenant's signed webhook endpoints (Standard Webhooks) and the log of their deliveries.
import type { Webhook, WebhookAttempt, WebhookDelivery } from '@prisma/client';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { checkDestination, RefusedDestinationError } from '../../webhooks/destination.js';
import { WEBHOOK_EVENTS } from '../../webhooks/deliveries.js';
import { newWebhookSecret } from '../../webhooks/signing.js';
import { principalOf } from '../auth.js';
import type { AppContext } from '../context.js';
import { ConflictError, NotFoundError, UnprocessableError } from '../errors.js';
import { IdParamsSchema, NEXT_CURSOR, PageQuerySchema } from '../schemas.js';
import { AUTH, listPage, problems } from './common.js';

/** Endpoints per tenant; each terminal job event fans out to all of them. */
export const MAX_WEBHOOKS_PER_TENANT = 20;

const WebhookEventSchema = z.enum(WEBHOOK_EVENTS).meta({ id: 'WebhookEvent' });

const CreateWebhookBodySchema = z
  .object({
    url: z
      .url({ protocol: /^https?$/, error: 'url must be an absolute http(s) URL, e.g. https://example.com/hooks/tuckerize' })
      .max(2048, 'url must be at most 2048 characters'),
    events: z
      .array(WebhookEventSchema)
      .min(1, 'events must name at least one of job.succeeded, job.failed, job.canceled')
      .refine((events) => new Set(events).size === events.length, 'events must not repeat an event'),
  })
  .strict()
  .meta({ id: 'CreateWebhook' });

const WebhookSchema = z
  .looseObject({
    id: z.uuid(),
    url: z.string(),
    events: z.array(WebhookEventSchema),
    createdAt: z.iso.datetime(),
  })
  .meta({ id: 'Webhook' });

const CreatedWebhookSchema = WebhookSchema.extend({
  secret: z
    .string()
    .describe('whsec_ + base64 of the signing key; shown only here. Verify `webhook-signature` with it (Standard Webhooks).'),
}).meta({ id: 'CreatedWebhook' });

const WebhookPageSchema = z
  .looseObject({ items: z.array(WebhookSchema), nextCursor: z.uuid().nullable().describe(NEXT_CURSOR) })
  .meta({ id: 'WebhookPage' });

const DeliverySchema = z
  .looseObject({
    id: z.uuid().describe('the webhook-id header of every attempt'),
    jobId: z.uuid(),
    event: WebhookEventSchema,
    status: z.enum(['pending', 'succeeded', 'failed']).describe('pending: attempts left; failed: every attempt failed'),
    attempts: z.number().int(),
    nextAttemptAt: z.iso.datetime().nullable(),
    deliveredAt: z.iso.datetime().nullable(),
    createdAt: z.iso.datetime(),
    attemptLog: z.array(
      z.object({
        attempt: z.number().int(),
        at: z.iso.datetime(),
        statusCode: z.number().int().nullable().describe('null when no HTTP answer came (timeout, refused address, connection error)'),
        error: z.string().nullable(),
        durationMs: z.number().int(),
      }),
    ),
  })
  .meta({ id: 'WebhookDelivery' });

const DeliveryPageSchema = z
  .looseObject({ items: z.array(DeliverySchema), nextCursor: z.uuid().nullable().describe(NEXT_CURSOR) })
  .meta({ id: 'WebhookDeliveryPage' });

function webhookView(webhook: Webhook) {
  return {
    id: webhook.id,
    url: webhook.url,
    events: webhook.events as (typeof WEBHOOK_EVENTS)[number][],
    createdAt: webhook.createdAt.toISOString(),
  };
}

function deliveryView(delivery: WebhookDelivery & { attemptLog: WebhookAttempt[] }) {
  return {
    id: delivery.id,
    jobId: delivery.jobId,
    event: delivery.event as (typeof WEBHOOK_EVENTS)[number],
    status: delivery.status,
    attempts: delivery.attempts,
    nextAttemptAt: delivery.nextAttemptAt?.toISOString() ?? null,
    deliveredAt: delivery.deliveredAt?.toISOString() ?? null,
    createdAt: delivery.createdAt.toISOString(),
    attemptLog: delivery.attemptLog
      .sort((a, b) => a.attempt - b.attempt)
      .map((a) => ({ attempt: a.attempt, at: a.at.toISOString(), statusCode: a.statusCode, error: a.error, durationMs: a.durationMs })),
  };
}

export const webhookRoutes: FastifyPluginAsyncZod<{ ctx: AppContext }> = async (app, { ctx }) => {
  const { prisma, config } = ctx;

  const findWebhook = async (tenantId: string, id: string): Promise<Webhook> => {
    const webhook = await prisma.webhook.findFirst({ where: { id, tenantId } });
    if (!webhook) throw new NotFoundError(`webhook ${id} does not exist for this API key`);
    return webhook;
  };

  app.post(
    '/v1/webhooks',
    {
      schema: {
        operationId: 'createWebhook',
        summary: 'Register a webhook endpoint',
        description:
          'Job events (job.succeeded, job.failed, job.canceled) are POSTed as `{type, timestamp, data: {job}}`, signed per ' +
          'Standard Webhooks: headers webhook-id (stable across retries), webhook-timestamp (Unix seconds) and ' +
          'webhook-signature (`v1,` + base64 HMAC-SHA256 of "{id}.{timestamp}.{body}" keyed with the decoded secret). ' +
          'A non-2xx answer or a timeout is retried with exponential backoff. The URL must resolve to a public address.',
        tags: ['webhooks'],
        security: AUTH,
        body: CreateWebhookBodySchema,
        response: { 201: CreatedWebhookSchema, ...problems(400, 401, 409, 422, 429, 503) },
      },
    },
    async (request, reply) => {
      const { tenantId } = principalOf(request);
      const { url, events } = request.body;
      try {
        await checkDestination(new URL(url), config.webhooks.allowPrivate);
      } catch (err) {
        if (err instanceof RefusedDestinationError) throw new UnprocessableError(err.message);
        throw err;
      }
      const count = await prisma.webhook.count({ where: { tenantId } });
      if (count >= MAX_WEBHOOKS_PER_TENANT) {
        throw new ConflictError(`this tenant has ${count} webhooks, the most allowed; delete one first`);
      }
      const secret = newWebhookSecret();
      const webhook = await prisma.webhook.create({ data: { tenantId, url, events, secret } });
      request.log.info({ webhookId: webhook.id, events }, 'webhook registered');
      return reply.code(201).header('location', `/v1/webhooks/${webhook.id}`).send({ ...webhookView(webhook), secret });
    },
  );

  app.get(
    '/v1/webhooks',
    {
      schema: {
        operationId: 'listWebhooks',
        summary: "List this tenant's webhooks, newest first",
        tags: ['webhooks'],
        security: AUTH,
        querystring: PageQuerySchema,
        response: { 200: WebhookPageSchema, ...problems(400, 401, 429, 503) },
      },
    },
    async (request) => {
      const { tenantId } = principalOf(request);
      return listPage(
        'webhook',
        request.query,
        (id) => prisma.webhook.findFirst({ where: { id, tenantId }, select: { id: true, createdAt: true } }),
        ({ where, ...args }) => prisma.webhook.findMany({ where: { tenantId, ...where }, ...args }),
        webhookView,
      );
    },
  );

  app.get(
    '/v1/webhooks/:id',
    {
      schema: {
        operationId: 'getWebhook',
        summary: 'Get one webhook',
        tags: ['webhooks'],
        security: AUTH,
        params: IdParamsSchema,
        response: { 200: WebhookSchema, ...problems(400, 401, 404, 429, 503) },
      },
    },
    async (request) => webhookView(await findWebhook(principalOf(request).tenantId, request.params.id)),
  );

  app.delete(
    '/v1/webhooks/:id',
    {
      schema: {
        operationId: 'deleteWebhook',
        summary: 'Delete a webhook (pending deliveries are dropped)',
        tags: ['webhooks'],
        security: AUTH,
        params: IdParamsSchema,
        response: { 204: z.undefined().describe('deleted'), ...problems(400, 401, 404, 429, 503) },
      },
    },
    async (request, reply) => {
      const webhook = await findWebhook(principalOf(request).tenantId, request.params.id);
      await prisma.webhook.delete({ where: { id: webhook.id } });
      return reply.code(204).send();
    },
  );

  app.get(
    '/v1/webhooks/:id/deliveries',
    {
      schema: {
        operationId: 'listWebhookDeliveries',
        summary: "A webhook's deliveries, newest first, each with its attempts",
        tags: ['webhooks'],
        security: AUTH,
        params: IdParamsSchema,
        querystring: PageQuerySchema,
        response: { 200: DeliveryPageSchema, ...problems(400, 401, 404, 429, 503) },
      },
    },
    async (request) => {
      const webhook = await findWebhook(principalOf(request).tenantId, request.params.id);
      return listPage(
        'delivery',
        request.query,
        (id) => prisma.webhookDelivery.findFirst({ where: { id, webhookId: webhook.id }, select: { id: true, createdAt: true } }),
        ({ where, ...args }) =>
          prisma.webhookDelivery.findMany({ where: { webhookId: webhook.id, ...where }, include: { attemptLog: true }, ...args }),
        deliveryView,
      );
    },
  );
};
