// Shapes every resource shares: integer formats, problem details, paths, pages, and the operations endpoints.
import { z } from 'zod';

/** A count that may pass 2^31 (ResNet-50 has 4.1 G MACs): int64 in the document, a JS number in practice. */
export const int64 = (description?: string) => {
  const schema = z.number().int().meta({ format: 'int64' });
  return description ? schema.describe(description) : schema;
};
export const int32 = (description?: string) => {
  const schema = z.number().int().meta({ format: 'int32' });
  return description ? schema.describe(description) : schema;
};

export const FieldErrorSchema = z
  .looseObject({
    in: z.enum(['body', 'query', 'path', 'header']).describe('the part of the request the pointer is into'),
    pointer: z
      .string()
      .describe('RFC 6901 JSON Pointer into that part, e.g. `/options/ratio` (query, path and headers read as one JSON object each: `/limit`); empty for the whole part'),
    detail: z.string(),
  })
  .meta({ id: 'FieldError' });

export const ProblemSchema = z
  .looseObject({
    type: z.string().describe('a URI naming the problem type; GET /problems/{type} documents each one'),
    title: z.string(),
    status: int32('the HTTP status'),
    detail: z.string().describe('what went wrong and what to change'),
    instance: z.string().optional().describe('the request path'),
    errors: z.array(FieldErrorSchema).optional().describe('one entry per invalid field (400)'),
  })
  .meta({ id: 'Problem', description: 'RFC 9457 problem details' });

export const IdParamsSchema = z.object({ id: z.uuid({ error: 'the id in the path must be a UUID' }) });

export const NEXT_CURSOR = 'pass as `cursor` to get the next page; null on the last page';

export const PageQuerySchema = z
  .object({
    limit: z.coerce.number().int().min(1).max(100).default(20).describe('page size, 1..100'),
    cursor: z
      .uuid({ error: 'cursor must be the nextCursor of a previous page' })
      .optional()
      .describe('the nextCursor of the previous page'),
  })
  .strict();

export const HealthSchema = z.looseObject({ status: z.literal('ok') }).meta({ id: 'Health' });
export const ReadySchema = z
  .looseObject({
    status: z.literal('ready'),
    checks: z.record(z.string(), z.looseObject({ ok: z.boolean(), ms: z.number() })),
  })
  .meta({ id: 'Ready' });
