// GET /v1/jobs/:id/report.html: the job's report as a page to look at (src/report), with the same
// authentication and tenant scoping as GET /v1/jobs/:id/report.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { renderReportPage, REPORT_PAGE_CSP } from '../../report/page.js';
import { principalOf } from '../auth.js';
import type { AppContext } from '../context.js';
import { ConflictError, NotFoundError } from '../errors.js';
import { IdParamsSchema } from '../schemas.js';
import { AUTH, problems } from './common.js';

export const reportPageRoutes: FastifyPluginAsyncZod<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.get(
    '/v1/jobs/:id/report.html',
    {
      schema: {
        operationId: 'getJobReportPage',
        summary: 'The report as an HTML page: Table 1, per-layer chart, trade-off curve',
        description:
          'The same report as GET /v1/jobs/{id}/report, rendered on the server as one self-contained page with inline SVG ' +
          'charts (no script, nothing loaded from elsewhere; a Content-Security-Policy allows only its own stylesheet).',
        tags: ['jobs'],
        security: AUTH,
        params: IdParamsSchema,
        produces: ['text/html'],
        response: {
          200: { description: 'the report page', content: { 'text/html': { schema: z.string() } } },
          ...problems(400, 401, 404, 409, 429, 503),
        },
      },
    },
    async (request, reply) => {
      const { tenantId } = principalOf(request);
      const job = await ctx.prisma.job.findFirst({ where: { id: request.params.id, tenantId }, include: { model: { select: { name: true } } } });
      if (!job) throw new NotFoundError(`job ${request.params.id} does not exist for this API key's tenant`);
      if (job.report === null || typeof job.report !== 'object' || Array.isArray(job.report)) {
        throw new ConflictError(`job ${job.id} is ${job.status} and has no report yet; poll GET /v1/jobs/${job.id} until it succeeds`);
      }
      const html = renderReportPage(job.report as Record<string, unknown>, { id: job.id, modelName: job.model.name });
      return reply
        .type('text/html; charset=utf-8')
        .header('content-security-policy', REPORT_PAGE_CSP)
        .header('x-content-type-options', 'nosniff')
        .header('cache-control', 'private, no-cache')
        .send(html);
    },
  );
};
