// How the routes' zod schemas become openapi.yaml (OpenAPI 3.1): the per-route transform and the
// whole-document pass that @fastify/swagger calls. Routes declare what they do (operationId, schemas, the
// headers they send, an example per response in `docs`); everything a generated client needs beyond that is
// added here in one place: reusable header definitions, the `default` problem response, the rate-limit and
// request-id headers every /v1 response carries, `servers`, and no component that nothing references.
import type { FastifyDynamicSwaggerOptions } from '@fastify/swagger';
import { createJsonSchemaTransform, createJsonSchemaTransformObject } from 'fastify-type-provider-zod';
import { problemExample } from './examples.js';

export const OPENAPI_VERSION = '3.1.0';

/** Response headers, by the name routes use in `docs.headers`; each becomes a component under components.headers. */
export const RESPONSE_HEADERS = {
  Location: { description: 'path of the resource this request created or names', schema: { type: 'string', format: 'uri-reference' } },
  ETag: {
    description: 'entity tag of the representation; send it back in If-None-Match (or If-Range) to revalidate',
    schema: { type: 'string' },
  },
  'X-Content-SHA256': { description: 'sha256 of the whole file, hex', schema: { type: 'string', pattern: '^[0-9a-f]{64}$' } },
  Digest: { description: 'RFC 3230 digest of the whole file: `sha-256=<base64>`', schema: { type: 'string' } },
  'Content-Disposition': { description: 'attachment; filename="<model>.compressed.onnx"', schema: { type: 'string' } },
  'Accept-Ranges': { description: '`bytes`: the download can be resumed with a Range request', schema: { type: 'string', enum: ['bytes'] } },
  'Content-Range': {
    description: '206: `bytes first-last/size`; 416: `bytes */size`',
    schema: { type: 'string' },
  },
  'Idempotent-Replayed': {
    description: '`true` when an earlier request with the same Idempotency-Key created this job',
    schema: { type: 'string', enum: ['true'] },
  },
  'Retry-After': { description: 'seconds to wait before retrying', schema: { type: 'integer', format: 'int32', minimum: 0 } },
  'WWW-Authenticate': { description: '`Bearer`: send "Authorization: Bearer <api key>"', schema: { type: 'string' } },
  'X-Request-Id': {
    description: "the request's id (the caller's X-Request-Id when it is 1..128 of [A-Za-z0-9._:-]); quote it when reporting a problem",
    schema: { type: 'string' },
  },
  'X-RateLimit-Limit': { description: 'requests allowed per minute for this API key', schema: { type: 'integer', format: 'int32' } },
  'X-RateLimit-Remaining': { description: 'requests left in the current minute', schema: { type: 'integer', format: 'int32' } },
  'X-RateLimit-Reset': { description: 'seconds until the window resets', schema: { type: 'integer', format: 'int32' } },
} as const;

export type ResponseHeaderName = keyof typeof RESPONSE_HEADERS;

/** Documentation a route adds to its schema: headers and an example per status; `request` is the body's example. */
export interface OperationDocs {
  headers?: Partial<Record<number, ResponseHeaderName[]>>;
  examples?: Partial<Record<number | 'request', unknown>>;
}

declare module 'fastify' {
  interface FastifySchema {
    docs?: OperationDocs;
  }
}

const DOCS_KEY = 'x-tuckerize-docs';
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

type JsonSchema = Record<string, unknown>;

/**
 * zod's JSON Schema, adjusted for clients: objects that are not strict lose `additionalProperties` (responses
 * stay open to fields added later; requests are `.strict()` and keep `false`), integers lose the ±2^53 bounds
 * zod adds (int64 says it), and formats drop the regular expression zod spells them out with.
 */
function override(ctx: { zodSchema: unknown; jsonSchema: JsonSchema }): void {
  const def = (ctx.zodSchema as { _zod?: { def?: { type?: string; catchall?: { _zod?: { def?: { type?: string } } } } } })._zod?.def;
  const json = ctx.jsonSchema;
  if (def?.type === 'object') {
    const catchall = def.catchall?._zod?.def?.type;
    if (catchall === undefined || catchall === 'unknown' || catchall === 'any') delete json.additionalProperties;
    // A free-form object (no declared fields) says so, so clients type it as a map.
    const declared = json.properties as Record<string, unknown> | undefined;
    if ((catchall === 'unknown' || catchall === 'any') && Object.keys(declared ?? {}).length === 0) json.additionalProperties = true;
  }
  if (def?.type === 'union' && Array.isArray(json.anyOf)) {
    json.anyOf = (json.anyOf as JsonSchema[]).filter((branch) => Object.keys(branch).length > 0);
  }
  if (json.type === 'integer') {
    if (json.minimum === -MAX_SAFE) delete json.minimum;
    if (json.maximum === MAX_SAFE) delete json.maximum;
  }
  if (typeof json.format === 'string' && ['date-time', 'uuid', 'email'].includes(json.format)) delete json.pattern;
  // A `default` makes generators (openapi-typescript's defaultNonNullable) mark the field required in requests;
  // the server applies it, so the document says it in words.
  if (json.default !== undefined) {
    const words = `default: ${JSON.stringify(json.default)}`;
    json.description = typeof json.description === 'string' ? `${json.description} (${words})` : words;
    delete json.default;
  }
}

const zodToJsonConfig = { override } as unknown as Parameters<typeof createJsonSchemaTransform>[0]['zodToJsonConfig'];
const baseTransform = createJsonSchemaTransform({ zodToJsonConfig });
const baseTransformObject = createJsonSchemaTransformObject({ zodToJsonConfig });

/** Per route: zod → JSON Schema, the multipart upload body, and `docs` carried to the document pass. */
export const documentRoute: FastifyDynamicSwaggerOptions['transform'] = (input) => {
  const out = baseTransform(input as Parameters<typeof baseTransform>[0]);
  const schema = input.schema as { consumes?: string[]; docs?: OperationDocs } | undefined;
  const transformed: Record<string, unknown> = { ...out.schema };
  delete transformed.docs;
  if (schema?.docs) transformed[DOCS_KEY] = schema.docs;
  if (schema?.consumes?.includes('multipart/form-data')) {
    // Upload routes read the multipart stream themselves (no body schema to validate); the document gets one.
    transformed.body = { $ref: '#/components/schemas/FileUpload' };
  }
  return { ...out, schema: transformed } as ReturnType<NonNullable<FastifyDynamicSwaggerOptions['transform']>>;
};

type Operation = {
  operationId?: string;
  security?: unknown[];
  requestBody?: { content?: Record<string, { example?: unknown }> };
  responses: Record<string, { description: string; headers?: Record<string, unknown>; content?: Record<string, JsonSchema> }>;
  [DOCS_KEY]?: OperationDocs;
};

const HEADER_REF = (name: ResponseHeaderName) => ({ $ref: `#/components/headers/${name}` });

const PROBLEM_RESPONSE_NAMES: Record<string, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  408: 'RequestTimeout',
  409: 'Conflict',
  413: 'PayloadTooLarge',
  415: 'UnsupportedMediaType',
  416: 'RangeNotSatisfiable',
  422: 'UnprocessableContent',
  429: 'TooManyRequests',
  503: 'ServiceUnavailable',
  default: 'UnexpectedError',
};

type Response = Operation['responses'][string];

function decorateResponse(path: string, status: string, response: Response, docs: OperationDocs): void {
  const code = status === 'default' ? 500 : Number(status);
  const names: ResponseHeaderName[] = ['X-Request-Id'];
  if (path.startsWith('/v1/')) names.push('X-RateLimit-Limit', 'X-RateLimit-Remaining', 'X-RateLimit-Reset');
  if (code === 429 || code === 503) names.push('Retry-After');
  if (code === 401) names.push('WWW-Authenticate');
  names.push(...(docs.headers?.[code] ?? []));
  response.headers = Object.fromEntries(names.map((name) => [name, HEADER_REF(name)]));
  const isProblem = response.content?.['application/problem+json'] !== undefined;
  const example = docs.examples?.[code] ?? (isProblem ? problemExample(code) : undefined);
  if (example !== undefined && response.content) {
    for (const media of Object.values(response.content)) media.example = example;
  }
  if (code === 304) delete response.content;
}

/**
 * Headers, examples and the `default` response of one operation. Problem responses that are the same on every
 * /v1 operation move to components.responses (one definition, one generated type); others stay inline.
 */
function decorateOperation(path: string, op: Operation, shared: Record<string, Response>): void {
  const docs = op[DOCS_KEY] ?? {};
  delete op[DOCS_KEY];
  op.responses.default ??= {
    description: 'an unexpected error (500) or one not listed here; the detail says what to do',
    content: { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } },
  };
  for (const [status, response] of Object.entries(op.responses)) {
    decorateResponse(path, status, response, docs);
    const name = PROBLEM_RESPONSE_NAMES[status];
    const onlyProblem = response.content !== undefined && Object.keys(response.content).join() === 'application/problem+json';
    if (!name || !onlyProblem || !path.startsWith('/v1/') || (docs.headers?.[Number(status)] ?? []).length > 0) continue;
    const existing = shared[name];
    if (existing && existing.description !== response.description) continue;
    shared[name] ??= response;
    op.responses[status] = { $ref: `#/components/responses/${name}` } as unknown as Response;
  }
  const requestExample = docs.examples?.request;
  if (requestExample !== undefined && op.requestBody?.content) {
    for (const media of Object.values(op.requestBody.content)) media.example = requestExample;
  }
}

/** Every `#/components/<kind>/<name>` reference reachable from the paths. */
function referencedComponents(document: JsonSchema): Set<string> {
  const seen = new Set<string>();
  const components = document.components as Record<string, Record<string, unknown>>;
  const visit = (value: unknown): void => {
    if (Array.isArray(value)) return value.forEach(visit);
    if (value === null || typeof value !== 'object') return;
    for (const [key, child] of Object.entries(value)) {
      if (key === '$ref' && typeof child === 'string' && child.startsWith('#/components/')) {
        if (seen.has(child)) continue;
        seen.add(child);
        const [, , kind, name] = child.split('/');
        visit(components[kind ?? '']?.[name ?? '']);
      } else {
        visit(child);
      }
    }
  };
  visit(document.paths);
  return seen;
}

/**
 * An example built from a schema, for a JSON response whose route gave none: required and optional fields
 * filled with plain values of their type and format (the first enum value, the non-null branch).
 */
function exampleOf(schema: JsonSchema | undefined, schemas: Record<string, unknown>, depth = 0): unknown {
  if (!schema || depth > 8) return null;
  if (typeof schema.$ref === 'string') return exampleOf(schemas[schema.$ref.split('/').pop() ?? ''] as JsonSchema, schemas, depth + 1);
  if (schema.example !== undefined) return schema.example;
  if (Array.isArray(schema.enum)) return schema.enum[0];
  if (schema.const !== undefined) return schema.const;
  const branches = (schema.anyOf ?? schema.oneOf) as JsonSchema[] | undefined;
  if (branches) return exampleOf(branches.find((b) => b.type !== 'null') ?? branches[0], schemas, depth + 1);
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== 'null') : schema.type;
  switch (type) {
    case 'object':
      return Object.fromEntries(
        Object.entries((schema.properties ?? {}) as Record<string, JsonSchema>).map(([key, value]) => [key, exampleOf(value, schemas, depth + 1)]),
      );
    case 'array':
      return [exampleOf(schema.items as JsonSchema, schemas, depth + 1)];
    case 'integer':
      return typeof schema.minimum === 'number' ? schema.minimum : 1;
    case 'number':
      return typeof schema.minimum === 'number' ? schema.minimum : 0.5;
    case 'boolean':
      return true;
    case 'string': {
      const formats: Record<string, string> = { uuid: '5e8f1a2b-3c4d-4e5f-9a6b-7c8d9e0f1a2b', 'date-time': '2026-11-29T12:00:00.000Z', uri: 'https://hooks.example.com/tuckerize' };
      return formats[String(schema.format)] ?? 'string';
    }
    default:
      return null;
  }
}

type Document = JsonSchema & { paths: Record<string, Record<string, Operation>>; components: Record<string, Record<string, unknown>> };

function pruneComponents(document: Document): void {
  const used = referencedComponents(document);
  for (const kind of ['schemas', 'headers', 'responses'] as const) {
    const table = document.components[kind] ?? {};
    for (const name of Object.keys(table)) if (!used.has(`#/components/${kind}/${name}`)) delete table[name];
    document.components[kind] = Object.fromEntries(Object.entries(table).sort(([a], [b]) => a.localeCompare(b)));
  }
}

/**
 * The zod registry names a schema's request-side variant `<Name>Input`. Where the response side is unused, or
 * both are the same, the document keeps one schema under the plain name.
 */
function mergeInputSchemas(document: Document): Document {
  const schemas = document.components.schemas ?? {};
  let text = JSON.stringify(document);
  for (const name of Object.keys(schemas)) {
    if (!name.endsWith('Input')) continue;
    const base = name.slice(0, -'Input'.length);
    const same = schemas[base] !== undefined && JSON.stringify(schemas[base]) === JSON.stringify(schemas[name]);
    if (schemas[base] !== undefined && !same) continue;
    text = text.replaceAll(`"#/components/schemas/${name}"`, `"#/components/schemas/${base}"`);
    const parsed = JSON.parse(text) as Document;
    const table = parsed.components.schemas ?? {};
    if (!same) table[base] = table[name];
    delete table[name];
    text = JSON.stringify(parsed);
  }
  return JSON.parse(text) as Document;
}

/** The whole document: components from the zod registry, headers, default responses, servers; unused components pruned. */
export const documentObject: FastifyDynamicSwaggerOptions['transformObject'] = (input) => {
  const document = baseTransformObject(input as Parameters<typeof baseTransformObject>[0]) as unknown as JsonSchema & {
    paths: Record<string, Record<string, Operation>>;
    components: Record<string, Record<string, unknown>>;
  };
  const shared: Record<string, Response> = {};
  for (const [path, methods] of Object.entries(document.paths)) {
    for (const op of Object.values(methods)) {
      decorateOperation(path, op, shared);
      for (const response of Object.values(op.responses)) {
        const media = response.content?.['application/json'];
        if (media && media.example === undefined) media.example = exampleOf(media.schema as JsonSchema, document.components.schemas ?? {});
      }
    }
  }
  document.components.responses = shared;
  document.components.schemas = {
    ...document.components.schemas,
    FileUpload: {
      type: 'object',
      required: ['file'],
      properties: { file: { type: 'string', format: 'binary', description: 'the file to upload' } },
      additionalProperties: false,
    },
  };
  document.components.headers = Object.fromEntries(Object.entries(RESPONSE_HEADERS).map(([name, header]) => [name, { ...header }]));
  pruneComponents(document);
  const merged = mergeInputSchemas(document);
  pruneComponents(merged);
  return merged as unknown as ReturnType<NonNullable<FastifyDynamicSwaggerOptions['transformObject']>>;
};

/** The document's info, servers, security and tags. */
export function documentHeader(version: string): NonNullable<FastifyDynamicSwaggerOptions['openapi']> {
  return {
    openapi: OPENAPI_VERSION,
    info: {
      title: 'tuckerize API',
      version,
      description:
        'Compression as a service for CNNs (Kim et al., ICLR 2016): upload an ONNX model, create a compression job ' +
        '(EVBMF ranks, Tucker-2 / SVD rewrites, optional fine-tuning), follow it, download the compressed model and its report.\n\n' +
        'Errors are RFC 9457 problem+json; each `type` is documented at `/problems/{type}` on the server. ' +
        'Every /v1 response carries X-RateLimit-* headers and X-Request-Id. Lists page newest first with `cursor` = the ' +
        'previous page\'s `nextCursor`. Response objects may gain fields: clients must ignore unknown ones.',
    },
    servers: [
      { url: 'http://localhost:8080', description: 'a local `npm start` (PORT=8080)' },
      { url: '{origin}', description: 'your deployment', variables: { origin: { default: 'https://tuckerize.example.com' } } },
    ],
    security: [{ bearerAuth: [] }],
    components: {
      securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer', description: 'tk_<prefix>_<secret> API key' } },
    },
    tags: [
      { name: 'models', description: 'ONNX uploads' },
      { name: 'datasets', description: 'data for fine-tuning and evaluation' },
      { name: 'jobs', description: 'compression jobs' },
      { name: 'ops', description: 'health, readiness and statistics' },
      { name: 'webhooks', description: 'signed notifications of finished jobs (Standard Webhooks)' },
    ],
  };
}
