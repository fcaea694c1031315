// Helpers shared by the route plugins.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { z } from 'zod';
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
  where: { OR?: Array<{ createdAt: { lt: Date } } | { createdAt: Date; id: { lt: string } }> };
  orderBy: Array<{ createdAt: 'desc' } | { id: 'desc' }>;
  take: number;
}

/**
 * One page of a tenant's rows, newest first. The cursor is the id of the last row of the previous page;
 * `cursorRow` finds it among this tenant's rows (whatever the list's filter: a job whose status changed since
 * still marks the place), and the page continues strictly after its (createdAt, id) key, so no row is skipped
 * or repeated. One row more than `limit` is fetched to know whether a next page exists.
 */
export async function listPage<Row extends { id: string; createdAt: Date }, View>(
  what: string,
  { limit, cursor }: { limit: number; cursor?: string | undefined },
  cursorRow: (id: string) => Promise<{ id: string; createdAt: Date } | null>,
  fetch: (args: PageArgs) => Promise<Row[]>,
  view: (row: Row) => View,
): Promise<{ items: View[]; nextCursor: string | null }> {
  let after: { id: string; createdAt: Date } | null = null;
  if (cursor) {
    after = await cursorRow(cursor);
    if (!after) throw new BadRequestError(`cursor does not name a ${what} of this tenant; pass the nextCursor of the previous page`);
  }
  const rows = await fetch({
    where: after ? { OR: [{ createdAt: { lt: after.createdAt } }, { createdAt: after.createdAt, id: { lt: after.id } }] } : {},
    orderBy: [{ createdAt: 'desc' }, { id: 'desc' }],
    take: limit + 1,
  });
  const page = rows.slice(0, limit);
  return { items: page.map(view), nextCursor: rows.length > limit ? (page[page.length - 1]?.id ?? null) : null };
}

// ---------------------------------------------------------------- conditional requests (RFC 9110 §13)

/** A strong entity tag for a JSON representation: changes whenever any field of the view changes. */
export function jsonEtag(view: unknown): string {
  return `"${sha256Hex(canonicalJson(view)).slice(0, 32)}"`;
}

/** The entity tags of an If-None-Match / If-Match field value: `*`, or a list of (possibly weak) quoted tags. */
export function parseEntityTags(header: string | string[] | undefined): '*' | string[] {
  const value = Array.isArray(header) ? header.join(',') : (header ?? '');
  if (value.trim() === '*') return '*';
  return [...value.matchAll(/(?:W\/)?"[^"]*"/g)].map((m) => m[0]);
}

/** Weak comparison: two tags match when their opaque parts are equal, whichever is weak. */
export function weakMatch(a: string, b: string): boolean {
  return a.replace(/^W\//, '') === b.replace(/^W\//, '');
}

/** Whether If-None-Match says the client already has `etag` (so GET answers 304). */
export function noneMatch(header: string | string[] | undefined, etag: string): boolean {
  if (header === undefined) return false;
  const tags = parseEntityTags(header);
  return tags === '*' || tags.some((tag) => weakMatch(tag, etag));
}

interface ConditionalReply {
  header(name: string, value: string): unknown;
  code(status: number): { send(payload: undefined): unknown };
}

/**
 * Sets ETag and answers 304 when the request's If-None-Match matches it; returns true when it did (the
 * handler then returns the reply without a body).
 */
export function notModified(request: { headers: Record<string, string | string[] | undefined> }, reply: ConditionalReply, etag: string): boolean {
  reply.header('etag', etag);
  if (!noneMatch(request.headers['if-none-match'], etag)) return false;
  reply.code(304).send(undefined);
  return true;
}

/** The If-None-Match request header, as routes declare it (documentation and validation). */
export const ConditionalHeadersSchema = z.object({
  'if-none-match': z
    .string()
    .optional()
    .describe('ETag(s) of a copy the client has: `"…"`, `W/"…"`, a comma-separated list, or `*`; a match answers 304 without a body'),
});

/** 304 in a route's response map. */
export const NOT_MODIFIED = { 304: z.undefined().describe('not modified: the If-None-Match tag matches the current ETag') };
