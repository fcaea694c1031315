// Clients generated from the committed openapi.yaml (openapi-typescript + openapi-fetch, @hey-api/openapi-ts)
// drive the whole flow against the real API and a real worker and engine: uploads, a job followed by polling
// and by SSE, the report, the artifact resumed with Range and checked, paging, idempotent cancel, errors.
// The flows in test/clients/ are type-checked against the generated code by tsc and contain no casts.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { buildApp } from '../src/api/app.js';
import { startWorker, type RunningWorker } from '../src/worker/runner.js';
import { createFixtures, type Fixtures } from './helpers/fixtures.js';
import { createTestEnv, createTestKey, type TestEnv } from './helpers/env.js';

const CLIENTS_DIR = path.join(import.meta.dirname, 'clients');

/** Loaded at run time: the flows import generated code that exists only after generateClients(). */
async function load<T>(file: string): Promise<T> {
  return (await import(pathToFileURL(path.join(CLIENTS_DIR, file)).href)) as T;
}

interface FlowModule {
  [name: string]: (input: unknown) => Promise<{ events: string[]; progressWithEta: number; artifactBytes: number; pages: number }>;
}

describe('generated clients', () => {
  let env: TestEnv;
  let app: FastifyInstance;
  let worker: RunningWorker;
  let fixtures: Fixtures;
  let input: Record<string, unknown>;

  before(async () => {
    const { generateClients, typecheckClients } = await load<{ generateClients(): Promise<void>; typecheckClients(): Promise<void> }>('generate.ts');
    await generateClients();
    await typecheckClients();
    fixtures = await createFixtures();
    env = await createTestEnv();
    app = await buildApp(env.config, { prisma: env.prisma, analyzeModels: false });
    await app.listen({ port: 0, host: '127.0.0.1' });
    worker = await startWorker(env.config, { logger: pino({ level: 'silent' }) });
    input = {
      baseUrl: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`,
      apiKey: await createTestKey(env.prisma, 'clients'),
      model: new Blob([await readFile(fixtures.tiny)]),
      modelName: 'tiny.onnx',
      dataset: new Blob([await readFile(fixtures.imagesNpz)]),
      datasetName: 'images.npz',
    };
  });

  after(async () => {
    await worker?.close();
    await app?.close();
    await env?.cleanup();
    await fixtures?.cleanup();
  });

  it('the flows use the generated types with no casts', async () => {
    for (const file of (await readdir(CLIENTS_DIR)).filter((f) => f.endsWith('.ts'))) {
      // comments and import aliases (`import { a as b }`) are not casts
      const code = (await readFile(path.join(CLIENTS_DIR, file), 'utf8'))
        .replace(/\/\*[\s\S]*?\*\//g, '')
        .replace(/\/\/.*$/gm, '')
        .replace(/^import .*$/gm, '');
      assert.doesNotMatch(code, /\bas\s+(?!const\b)[A-Za-z{[(]|<[A-Z]\w*>\s*\w/, `${file} casts`);
    }
  });

  it('openapi-typescript + openapi-fetch: upload, poll with ETags, report, resumed artifact, cancel twice, paging, errors', async () => {
    const { runOpenapiFetchFlow } = await load<FlowModule>('openapi-fetch-flow.ts');
    const record = await runOpenapiFetchFlow!(input);
    assert.ok(record.artifactBytes > 0);
    assert.ok(record.pages >= 2);
  });

  it('@hey-api/openapi-ts: upload, SSE with rate and ETA, report, resumed artifact, cancel twice, filtered paging, errors', async () => {
    const { runHeyApiFlow } = await load<FlowModule>('hey-api-flow.ts');
    const record = await runHeyApiFlow!(input);
    assert.equal(record.events[0], 'status');
    assert.ok(record.events.includes('progress'));
    assert.ok(record.progressWithEta > 0, 'some progress events carried a rate and an ETA');
    assert.ok(record.artifactBytes > 0);
  });
});
