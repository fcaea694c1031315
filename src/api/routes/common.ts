// Helpers shared by the route plugins.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { BadRequestError, PROBLEM_CONTENT_TYPE } from '../errors.js';
import { ProblemSchema } from '../schemas.js';

const PROBLEM_DESCRIPTIONS: Record<number, string> = {
  400: 'invalid request (problem+json names the field)',
  401: 'missing or invalid API key',
  404: 'no such resource for this API key',
  409: 'the resource is not in a state that allows this',
  413: 'upload larger than the configured limit',
  415: 'wrong content type',
  416: 'the requested byte range lies outside the file',
  422: 'the upload is not usable (the detail says why)',
  429: 'rate limit exceeded',
  503: 'a dependency (database or Redis) is unavailable',
};

/** Problem+json responses for the given status codes (OpenAPI documentation and serialization). */
export function problems(...statuses: number[]) {
  const out: Record<number, { description: string; content: { 'application/problem+json': { schema: typeof ProblemSchema } } }> = {};
  for (const status of statuses) {
    out[status] = {
      description: PROBLEM_DESCRIPTIONS[status] ?? 'error',
      content: { [PROBLEM_CONTENT_TYPE]: { schema: ProblemSchema } } as { 'application/problem+json': { schema: typeof ProblemSchema } },
    };
  }
  return out;
}

export const AUTH = [{ bearerAuth: [] as string[] }];

/** A display name from an uploaded file name: no directories, no control characters, bounded length. */
export function cleanFileName(fileName: string | undefined, fallback: string): string {
  const base = path.posix.basename((fileName ?? '').replaceAll('\\', '/'));
  const clean = base.replace(/[\u0000-\u001f\u007f"]/g, '').trim().slice(0, 200);
  return clean === '' || clean === '.' || clean === '..' ? fallback : clean;
}

/** JSON with object keys sorted at every level, so equal values hash equally. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** Prisma's unique-constraint violation. */
export function isUniqueViolation(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === 'P2002';
}

/** The Prisma arguments every tenant list route pages with: newest first, keyset on (createdAt, id). */
export interface PageArgs {
  orderBy: Array<{ createdAt: 'desc' } | { id: 'desc' }>;
  take: number;
  cursor?: { id: string };
  skip?: number;
}

/**
 * One page of a tenant's rows: `cursor` must be a row of this tenant (`cursorExists`), one row more than
 * `limit` is fetched to know whether a next page exists.
 */
export async function listPage<Row extends { id: string }, View>(
  what: string,
  { limit, cursor }: { limit: number; cursor?: string | undefined },
  cursorExists: (id: string) => Promise<boolean>,
  fetch: (args: PageArgs) => Promise<Row[]>,
  view: (row: Row) => View,
): Promise<{ items: View[]; nextCursor: string | null }> {
  if (cursor && !(await cursorExists(cursor))) {
    throw new BadRequestError(`cursor does not name a ${what} of this tenant; pass the nextCursor of the previous page`);
  }
  const rows = await fetch({
    orderBy: [{ createdAt: 'desc' }, { id: 'desc' }],
    take: limit + 1,
    ...(cursor ? { cursor: { id: cursor }, skip: 1 } : {}),
  });
  const page = rows.slice(0, limit);
  return { items: page.map(view), nextCursor: rows.length > limit ? (page[page.length - 1]?.id ?? null) : null };
}
