// bull-board at /admin/queues for operators, mounted only when ADMIN_KEY is set. Browsers authenticate with
// HTTP Basic (any user name, the admin key as password); scripts may send `x-admin-key`. Compared in constant time.
import { createHash, timingSafeEqual } from 'node:crypto';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { AppContext } from '../context.js';
import { sendProblem } from '../errors.js';

export const ADMIN_BASE_PATH = '/admin/queues';

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

export function presentedAdminKey(request: FastifyRequest): string | undefined {
  const header = request.headers['x-admin-key'];
  if (typeof header === 'string') return header;
  const basic = /^Basic\s+(\S+)$/i.exec(request.headers.authorization ?? '');
  if (!basic) return undefined;
  const decoded = Buffer.from(basic[1] ?? '', 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon >= 0 ? decoded.slice(colon + 1) : undefined;
}

export async function registerAdmin(app: FastifyInstance, ctx: AppContext, adminKey: string): Promise<void> {
  const expected = digest(adminKey);
  const serverAdapter = new FastifyAdapter();
  serverAdapter.setBasePath(ADMIN_BASE_PATH);
  createBullBoard({ queues: [new BullMQAdapter(ctx.queue)], serverAdapter });
  await app.register(async (admin) => {
    admin.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
      const presented = presentedAdminKey(request);
      // Hashing both sides gives equal lengths for timingSafeEqual whatever was sent.
      if (presented !== undefined && timingSafeEqual(digest(presented), expected)) return;
      reply.header('www-authenticate', 'Basic realm="tuckerize admin", charset="UTF-8"');
      return sendProblem(reply, {
        type: 'https://tuckerize.dev/problems/unauthorized',
        title: 'Unauthorized',
        status: 401,
        detail: 'the queue dashboard needs the admin key: HTTP Basic with the key as password, or an x-admin-key header',
        instance: request.url,
      });
    });
    await admin.register(serverAdapter.registerPlugin(), { prefix: ADMIN_BASE_PATH });
  });
}
