// openapi.yaml is generated from the routes (npm run openapi) and committed; this fails when they drift.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import SwaggerParser from '@apidevtools/swagger-parser';
import { parse } from 'yaml';
import { generateOpenApi, OPENAPI_PATH } from '../scripts/write-openapi.js';

test('the committed openapi.yaml matches the routes', async () => {
  const committed = await readFile(OPENAPI_PATH, 'utf8');
  const generated = await generateOpenApi();
  assert.equal(committed, generated, 'openapi.yaml is stale: run `npm run openapi` and commit the result');
});

test('openapi.yaml is a valid OpenAPI 3 document with every public route', async () => {
  const document = parse(await readFile(OPENAPI_PATH, 'utf8')) as Record<string, unknown>;
  const api = (await SwaggerParser.validate(document as never)) as { openapi: string; paths: Record<string, Record<string, unknown>> };
  assert.match(api.openapi, /^3\./);
  const routes = Object.entries(api.paths).flatMap(([p, methods]) => Object.keys(methods).map((m) => `${m.toUpperCase()} ${p}`));
  for (const route of [
    'POST /v1/models',
    'GET /v1/models',
    'GET /v1/models/{id}',
    'POST /v1/datasets',
    'GET /v1/datasets',
    'GET /v1/datasets/{id}',
    'POST /v1/jobs',
    'GET /v1/jobs',
    'GET /v1/jobs/{id}',
    'POST /v1/jobs/{id}/cancel',
    'GET /v1/jobs/{id}/events',
    'GET /v1/jobs/{id}/artifact',
    'GET /v1/jobs/{id}/report',
    'GET /healthz',
    'GET /readyz',
  ]) {
    assert.ok(routes.includes(route), `${route} is documented`);
  }
});
