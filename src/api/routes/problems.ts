// GET /problems and /problems/:type: the documentation pages problem+json `type` URIs name (no auth).
import type { FastifyPluginAsync } from 'fastify';
import { NotFoundError } from '../errors.js';
import { problemPage } from '../problem-types.js';

export const problemRoutes: FastifyPluginAsync = async (app) => {
  const html = 'text/html; charset=utf-8';
  app.get('/problems', { schema: { hide: true } }, async (_request, reply) => reply.type(html).send(problemPage(null)));
  app.get<{ Params: { type: string } }>('/problems/:type', { schema: { hide: true } }, async (request, reply) => {
    const page = problemPage(request.params.type);
    if (page === null) throw new NotFoundError(`no problem type ${JSON.stringify(request.params.type)}; GET /problems lists them all`);
    return reply.type(html).send(page);
  });
};
