// openapi.yaml is generated from the routes (npm run openapi) and committed; this fails when they drift.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import SwaggerParser from '@apidevtools/swagger-parser';
import { parse } from 'yaml';
import { generateOpenApi, OPENAPI_PATH } from '../scripts/write-openapi.js';
import type { ErrorCategory } from '../src/jobs/state.js';

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

test('every operation has an operationId, examples and a default problem response', async () => {
  const document = parse(await readFile(OPENAPI_PATH, 'utf8')) as {
    paths: Record<string, Record<string, { operationId?: string; responses: Record<string, { $ref?: string; content?: Record<string, { example?: unknown }> }> }>>;
  };
  const ids = new Set<string>();
  for (const [route, methods] of Object.entries(document.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const name = `${method.toUpperCase()} ${route}`;
      assert.match(op.operationId ?? '', /^[a-z][A-Za-z]+$/, `${name} has a camelCase operationId`);
      assert.ok(!ids.has(op.operationId ?? ''), `${name}: operationId is unique`);
      ids.add(op.operationId ?? '');
      assert.ok(op.responses.default, `${name} documents a default (problem) response`);
      const examples = Object.values(op.responses).flatMap((r) => Object.entries(r.content ?? {}))
        .filter(([type]) => type === 'application/json')
        .map(([, media]) => media.example);
      assert.ok(examples.every((e) => e !== undefined), `${name}: every JSON response has an example`);
    }
  }
});

test('the examples in the document are valid for their zod schemas', async () => {
  const examples = await import('../src/api/examples.js');
  const schemas = await import('../src/api/schemas.js');
  const pairs: Array<[string, { safeParse(v: unknown): { success: boolean; error?: unknown } }, unknown]> = [
    ['model', schemas.ModelSchema, examples.modelExample],
    ['model page', schemas.ModelPageSchema, examples.modelPageExample],
    ['dataset', schemas.DatasetSchema, examples.datasetExample],
    ['create job', schemas.CreateJobBodySchema, examples.createJobExample],
    ['running job', schemas.JobSchema, examples.runningJobExample],
    ['succeeded job', schemas.JobSchema, examples.succeededJobExample],
    ['job page', schemas.JobPageSchema, examples.jobPageExample],
    ['report', schemas.ReportSchema, examples.reportExample],
  ];
  for (const status of [400, 401, 404, 409, 413, 415, 416, 422, 429, 503, 500]) {
    pairs.push([`problem ${status}`, schemas.ProblemSchema, examples.problemExample(status)]);
  }
  for (const [name, schema, value] of pairs) {
    const result = schema.safeParse(value);
    assert.ok(result.success, `${name} example: ${JSON.stringify(result.error)}`);
  }
});

test('JOB_STAGES is exactly the set of stages the engine and the worker emit', async () => {
  const { JOB_STAGES } = await import('../src/api/schemas.js');
  const { STAGE_ORDER } = await import('../src/worker/progress.js');
  const { readdir } = await import('node:fs/promises');
  const emitted = new Set<string>(STAGE_ORDER);
  const scan = async (dir: string, pattern: RegExp) => {
    for (const file of await readdir(dir, { recursive: true })) {
      if (!/\.(py|ts)$/.test(file)) continue;
      for (const m of (await readFile(`${dir}/${file}`, 'utf8')).matchAll(pattern)) emitted.add(m[1]!);
    }
  };
  await scan('engine/tuckerize', /(?:\.progress\(|"stage":\s*)"([a-z_]+)"/g);
  await scan('src/worker', /\bstage: '([a-z_]+)'/g);
  await scan('src/jobs', /\bstage: '([a-z_]+)'/g);
  assert.deepEqual([...emitted].sort(), [...JOB_STAGES].sort(), 'update JOB_STAGES in src/api/schemas.ts (and the docs) when a stage is added or removed');
});

test('every problem type the code can answer is documented under /problems, in one naming style', async () => {
  const { PROBLEM_TYPES } = await import('../src/api/problem-types.js');
  const { readdir } = await import('node:fs/promises');
  const used = new Set<string>();
  for (const file of await readdir('src', { recursive: true })) {
    if (!file.endsWith('.ts')) continue;
    const code = await readFile(`src/${file}`, 'utf8');
    for (const m of code.matchAll(/(?:ApiError\(|super\()\d{3}, '([a-z_-]+)'|TYPE_BASE \+ '([a-z_-]+)'|problems\/([a-z_-]+)'/g)) {
      used.add((m[1] ?? m[2] ?? m[3])!.replaceAll('_', '-'));
    }
  }
  for (const slug of used) assert.ok(PROBLEM_TYPES[slug], `problem type ${slug} is in src/api/problem-types.ts`);
  for (const slug of Object.keys(PROBLEM_TYPES)) assert.match(slug, /^[a-z0-9]+(-[a-z0-9]+)*$/, `${slug} is kebab-case`);
});

test('Redocly `recommended` finds no error in openapi.yaml', async () => {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const run = promisify(execFile);
  const redocly = 'node_modules/.bin/redocly';
  const env = { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', NO_COLOR: '1' };
  const result = await run(redocly, ['lint', OPENAPI_PATH, '--extends=recommended', '--format=json'], { env, maxBuffer: 16 * 1024 * 1024 }).catch(
    (err: { stdout?: string; stderr?: string }) => ({ stdout: err.stdout ?? '', stderr: err.stderr ?? '' }),
  );
  const start = result.stdout.indexOf('{');
  assert.ok(start >= 0, `redocly printed no JSON report: ${result.stderr}`);
  const report = JSON.parse(result.stdout.slice(start)) as { totals: { errors: number; warnings: number }; problems: Array<{ ruleId: string; severity: string; message: string }> };
  const errors = report.problems.filter((p) => p.severity === 'error');
  assert.equal(report.totals.errors, 0, errors.map((p) => `${p.ruleId}: ${p.message}`).join('\n'));
});

test('ERROR_CATEGORIES is the state module\'s ErrorCategory', async () => {
  const { ERROR_CATEGORIES } = await import('../src/api/schemas.js');
  // Compile-time: each side assignable to the other (tsc fails here when one of them gains a category).
  type Documented = (typeof ERROR_CATEGORIES)[number];
  const both: [Documented, ErrorCategory] extends [ErrorCategory, Documented] ? true : false = true;
  assert.equal(both, true);
  assert.equal(new Set(ERROR_CATEGORIES).size, ERROR_CATEGORIES.length);
});
