// What the HTTP layer refuses before a route runs: rate limits (per client address before authentication,
// per API key after it), slow or oversized requests that Node or Fastify answer themselves (408, 414, 431,
// malformed requests), and secrets in URLs kept out of logs and problem documents.
import http from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Authenticator } from './auth.js';
import { ApiError, PROBLEM_CONTENT_TYPE, type Problem } from './errors.js';

const TYPE_BASE = 'https://tuckerize.dev/problems/';
/** Query parameters whose values are credentials wherever they appear; they are never logged nor echoed. */
const SECRET_PARAMS = /^(api[_-]?key|apikey|key|token|access[_-]?token|secret|password|authorization)$/i;
/** Unauthenticated operational routes that the address limit must not throttle (probes, scrapers). */
const UNLIMITED = new Set(['/healthz', '/readyz', '/metrics']);

/** The URL with the values of credential-like query parameters replaced, for logs. */
export function redactUrl(url: string): string {
  const q = url.indexOf('?');
  if (q < 0) return url;
  const query = url
    .slice(q + 1)
    .split('&')
    .map((pair) => {
      const eq = pair.indexOf('=');
      const name = decodeSafely(eq < 0 ? pair : pair.slice(0, eq));
      return SECRET_PARAMS.test(name) ? `${pair.slice(0, eq < 0 ? pair.length : eq)}=[redacted]` : pair;
    })
    .join('&');
  return `${url.slice(0, q)}?${query}`;
}

function decodeSafely(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** The path of a request URL, without its query: what a problem document's `instance` names. */
export function pathOf(url: string): string {
  return url.split('?')[0] ?? '/';
}

function problemBytes(status: number, slug: string, title: string, detail: string): string {
  const problem: Problem = { type: TYPE_BASE + slug, title, status, detail };
  return JSON.stringify(problem);
}

/**
 * Node's `clientError`: a request the HTTP parser refused or the server timed out before Fastify saw it.
 * Answered as problem+json when the socket can still take a response, then closed.
 */
export function clientErrorHandler(this: FastifyInstance, err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  let status: number;
  let slug: string;
  let detail: string;
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      status = 408;
      slug = 'request-timeout';
      detail = 'the request (headers and body) did not arrive in time; send it faster or in smaller parts';
      break;
    case 'HPE_HEADER_OVERFLOW':
      status = 431;
      slug = 'headers-too-large';
      detail = 'the request line and headers exceed 16 KiB; send a shorter URL and fewer or smaller headers';
      break;
    default:
      status = 400;
      slug = 'bad-request';
      detail = 'the request is not valid HTTP/1.1; check the request line, headers and framing';
  }
  this.log.info({ code: err.code, status }, 'client error');
  if (socket.writable) {
    const body = problemBytes(status, slug, http.STATUS_CODES[status] ?? 'Error', detail);
    socket.write(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: ${PROBLEM_CONTENT_TYPE}\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy();
}

/** Fastify's router-level refusals (a bad URL component, a path parameter over maxParamLength). */
export function frameworkErrors(error: Error & { code?: string }, request: FastifyRequest, reply: FastifyReply): void {
  const status = error.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 414 : 400;
  const detail =
    status === 414
      ? 'a path segment of the URL is too long; check the id in the path'
      : 'the URL contains an invalid percent-encoding; encode the path correctly';
  request.log.info({ code: error.code, status }, 'request refused');
  void reply
    .code(status)
    .type(PROBLEM_CONTENT_TYPE)
    .send({
      type: TYPE_BASE + (status === 414 ? 'uri-too-long' : 'bad-request'),
      title: http.STATUS_CODES[status],
      status,
      detail,
      instance: pathOf(request.url),
    });
}

type Limiter = (request: FastifyRequest) => Promise<{
  isAllowed: boolean;
  isExceeded?: boolean;
  max?: number;
  remaining?: number;
  ttlInSeconds?: number;
}>;

async function enforce(limiter: Limiter, request: FastifyRequest, reply: FastifyReply, what: string): Promise<void> {
  const result = await limiter(request);
  if (result.isAllowed) return;
  reply.header('x-ratelimit-limit', String(result.max));
  reply.header('x-ratelimit-remaining', String(result.remaining ?? 0));
  reply.header('x-ratelimit-reset', String(result.ttlInSeconds ?? 0));
  if (!result.isExceeded) return;
  const after = Math.max(1, result.ttlInSeconds ?? 60);
  reply.header('retry-after', String(after));
  throw new ApiError(429, 'too-many-requests', 'Too many requests', `rate limit of ${result.max} requests per minute exceeded ${what}; retry in ${after} s`);
}

export interface RateLimitSettings {
  perKeyPerMinute: number;
  unauthenticatedPerMinute: number;
}

/**
 * Two limits from @fastify/rate-limit's store (Redis, shared by all API processes):
 * - before authentication, per client address, for every request that does not carry a key this process
 *   found valid at its last database read (missing, malformed, wrong, revoked or never seen keys): a flood
 *   of random keys costs at most that many database lookups per minute and address;
 * - after authentication, per API key: every authenticated request counts.
 * Returns the hook that applies the per-key limit; the caller adds it after its auth hook.
 */
export function addRateLimits(
  app: FastifyInstance,
  auth: Authenticator,
  settings: RateLimitSettings,
): (request: FastifyRequest, reply: FastifyReply) => Promise<void> {
  const perAddress = app.createRateLimit({
    max: settings.unauthenticatedPerMinute,
    timeWindow: 60_000,
    keyGenerator: (request: FastifyRequest) => `ip:${request.ip}`,
  }) as unknown as Limiter;
  const perKey = app.createRateLimit({
    max: settings.perKeyPerMinute,
    timeWindow: 60_000,
    keyGenerator: (request: FastifyRequest) => `key:${request.principal?.apiKeyId ?? request.ip}`,
  }) as unknown as Limiter;
  app.addHook('onRequest', async (request, reply) => {
    if (UNLIMITED.has(pathOf(request.url))) return;
    if (auth.isKnownValid(request.headers.authorization)) return;
    await enforce(perAddress, request, reply, 'for this client address (requests without an API key known to be valid)');
  });
  return async (request, reply) => enforce(perKey, request, reply, 'for this API key');
}
