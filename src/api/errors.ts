// One place maps errors to RFC 9457 problem+json responses. Route code throws the classes below (or lets
// validation, multipart, store and database errors through); clients never see stack traces, and every 4xx
// says what to change.
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { InputRejected } from '../security/index.js';
import { PayloadTooLargeError } from '../store/artifacts.js';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';
/** Each problem type is documented at GET /problems/<slug> (src/api/problem-types.ts). */
export const TYPE_BASE = 'https://tuckerize.dev/problems/';

export interface FieldError {
  /** which part of the request the pointer is into */
  in: 'body' | 'query' | 'path' | 'header';
  /** RFC 6901 JSON Pointer into that part (query, path and headers read as one JSON object each): `/options/ratio` */
  pointer: string;
  detail: string;
}

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  instance?: string;
  errors?: FieldError[];
}

/** An error that knows its HTTP status and problem type; `detail` must tell the client what to fix. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly slug: string,
    readonly title: string,
    detail: string,
    readonly errors?: FieldError[],
  ) {
    super(detail);
    this.name = 'ApiError';
  }
}

export class BadRequestError extends ApiError {
  constructor(detail: string, errors?: FieldError[]) {
    super(400, 'bad-request', 'Bad request', detail, errors);
  }
}
export class UnauthorizedError extends ApiError {
  constructor(detail: string) {
    super(401, 'unauthorized', 'Unauthorized', detail);
  }
}
export class ForbiddenError extends ApiError {
  constructor(detail: string) {
    super(403, 'forbidden', 'Forbidden', detail);
  }
}
export class NotFoundError extends ApiError {
  constructor(detail: string) {
    super(404, 'not-found', 'Not found', detail);
  }
}
export class ConflictError extends ApiError {
  constructor(detail: string) {
    super(409, 'conflict', 'Conflict', detail);
  }
}
export class UnprocessableError extends ApiError {
  constructor(detail: string) {
    super(422, 'unprocessable', 'Unprocessable content', detail);
  }
}
export class UnsupportedMediaTypeError extends ApiError {
  constructor(detail: string) {
    super(415, 'unsupported-media-type', 'Unsupported media type', detail);
  }
}
export class RangeNotSatisfiableError extends ApiError {
  constructor(detail: string) {
    super(416, 'range-not-satisfiable', 'Range not satisfiable', detail);
  }
}
export class ServiceUnavailableError extends ApiError {
  constructor(detail: string) {
    super(503, 'service-unavailable', 'Service unavailable', detail);
  }
}

export function sendProblem(reply: FastifyReply, problem: Problem): FastifyReply {
  return reply.code(problem.status).type(PROBLEM_CONTENT_TYPE).send(problem);
}

function problemOf(error: ApiError, instance: string): Problem {
  const problem: Problem = {
    // One naming style for every type: kebab-case (the inspectors' codes are snake_case identifiers).
    type: TYPE_BASE + error.slug.replaceAll('_', '-'),
    title: error.title,
    status: error.status,
    detail: error.message,
    instance,
  };
  if (error.errors) problem.errors = error.errors;
  return problem;
}

/** Prisma errors that mean "the database is unreachable" rather than "the query is wrong". */
function isDatabaseUnavailable(error: unknown): boolean {
  const e = error as { code?: unknown; name?: unknown; message?: unknown; cause?: unknown };
  const code = typeof e.code === 'string' ? e.code : '';
  if (['P1001', 'P1002', 'P1017', 'P2024', 'ECONNREFUSED', 'ECONNRESET', '57P01', '57P03', 'ETIMEDOUT'].includes(code)) {
    return true;
  }
  const message = typeof e.message === 'string' ? e.message : '';
  if (/ECONNREFUSED|Connection terminated|connect ETIMEDOUT|timeout exceeded when trying to connect|the database system is (starting|shutting) up|terminating connection/i.test(message)) {
    return true;
  }
  return e.cause !== undefined && e.cause !== error && isDatabaseUnavailable(e.cause);
}

function isRedisUnavailable(error: unknown): boolean {
  const message = (error as { message?: unknown }).message;
  // ioredis' messages when a command cannot be sent or was abandoned while reconnecting
  return typeof message === 'string' && /Connection is closed|Stream isn't writeable|max retries per request limit/i.test(message);
}

/** Translates any thrown error into an ApiError, or undefined for a genuine internal error. */
export function toApiError(error: unknown): ApiError | undefined {
  if (error instanceof ApiError) return error;
  if (hasZodFastifySchemaValidationErrors(error)) {
    const where = (error as { validationContext?: string }).validationContext ?? 'body';
    const part = ({ body: 'body', querystring: 'query', params: 'path', headers: 'header' } as const)[where] ?? 'body';
    // instancePath is `/` + the zod path joined by `/`: an RFC 6901 pointer except for the whole part (`/` → '');
    // an unknown key is pointed at itself.
    const errors: FieldError[] = error.validation.flatMap((issue) => {
      const pointer = issue.instancePath === '/' ? '' : issue.instancePath;
      const detail = issue.message ?? 'invalid value';
      const unknownKeys = issue.keyword === 'unrecognized_keys' ? (issue.params as { keys?: unknown }).keys : undefined;
      if (!Array.isArray(unknownKeys) || unknownKeys.length === 0) return [{ in: part, pointer, detail }];
      return unknownKeys.map((key) => ({ in: part, pointer: `${pointer}/${String(key).replaceAll('~', '~0').replaceAll('/', '~1')}`, detail }));
    });
    const summary = errors.map((e) => `${e.pointer || '(the whole ' + part + ')'}: ${e.detail}`).join('; ');
    // A well-formed job whose options the engine would refuse is unprocessable, not malformed: the same
    // 422 the engine's own refusals used to produce after the job had waited in the queue.
    if (part === 'body' && errors.length > 0 && errors.every((e) => e.pointer.startsWith('/options/'))) {
      return new ApiError(422, 'invalid-job-options', 'Invalid job options', `invalid job options at ${summary}`, errors);
    }
    const label = { body: 'request body', query: 'query string', path: 'path', header: 'headers' }[part];
    return new BadRequestError(`invalid ${label} at ${summary}`, errors);
  }
  if (error instanceof InputRejected) {
    return new ApiError(422, error.code, 'Unprocessable content', error.detail);
  }
  if (error instanceof PayloadTooLargeError) {
    return new ApiError(413, 'payload-too-large', 'Payload too large', `${error.message}; upload a smaller file`);
  }
  const fastifyError = error as Partial<FastifyError>;
  switch (fastifyError.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new BadRequestError(`the request body is not valid JSON (${fastifyError.message}); send a JSON object`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new UnsupportedMediaTypeError(
        `${fastifyError.message}; send application/json, or multipart/form-data for uploads`,
      );
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
    case 'FST_REQ_FILE_TOO_LARGE':
    case 'FST_FILES_LIMIT':
    case 'FST_FIELDS_LIMIT':
    case 'FST_PARTS_LIMIT':
      return new ApiError(413, 'payload-too-large', 'Payload too large', `${fastifyError.message}; send a smaller request`);
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE':
      return new UnsupportedMediaTypeError('the request is not multipart/form-data; upload the file as the multipart field "file"');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new BadRequestError(`${fastifyError.message}; send a correct Content-Length`);
    default:
      break;
  }
  if (fastifyError.statusCode === 429) {
    return new ApiError(429, 'too-many-requests', 'Too many requests', fastifyError.message ?? 'rate limit exceeded; retry later');
  }
  if (isDatabaseUnavailable(error)) {
    return new ServiceUnavailableError('the database is unavailable; retry in a few seconds');
  }
  if (isRedisUnavailable(error)) {
    return new ServiceUnavailableError('the queue (Redis) is unavailable; retry in a few seconds');
  }
  if (typeof fastifyError.statusCode === 'number' && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
    return new ApiError(fastifyError.statusCode, 'bad-request', 'Bad request', fastifyError.message ?? 'bad request');
  }
  return undefined;
}

export function registerErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((error: unknown, request: FastifyRequest, reply: FastifyReply) => {
    const apiError = toApiError(error);
    if (apiError) {
      if (apiError.status >= 500) request.log.warn({ err: error }, apiError.message);
      else request.log.info({ status: apiError.status, detail: apiError.message }, 'request refused');
      // A request cut for a timeout still has unread body bytes: the connection cannot be reused.
      if (apiError.status === 408) reply.header('connection', 'close');
      if (apiError.status === 401) reply.header('www-authenticate', 'Bearer realm="tuckerize"');
      const retryAfter = (apiError as { retryAfterSeconds?: unknown }).retryAfterSeconds;
      if (typeof retryAfter === 'number') reply.header('retry-after', String(retryAfter));
      return sendProblem(reply, problemOf(apiError, request.url.split('?')[0] ?? '/'));
    }
    request.log.error({ err: error }, 'unhandled error');
    return sendProblem(reply, {
      type: TYPE_BASE + 'internal',
      title: 'Internal server error',
      status: 500,
      detail: `an unexpected error occurred; quote request id ${request.id} when reporting it`,
      instance: request.url.split('?')[0],
    });
  });

  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, {
      type: TYPE_BASE + 'not-found',
      title: 'Not found',
      status: 404,
      detail: `no route ${request.method} ${request.url.split('?')[0]}; see /openapi.yaml for the available routes`,
      instance: request.url.split('?')[0],
    }),
  );
}
