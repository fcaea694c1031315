// One API instance on a fresh test environment, with two tenants' keys, for the supertest suites.
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import request from 'supertest';
import { buildApp, type AppDeps } from '../../src/api/app.js';
import { createTestEnv, createTestKey, type TestEnv } from './env.js';

export interface TestApp {
  env: TestEnv;
  app: FastifyInstance;
  /** tenant "acme" */
  keyA: string;
  /** tenant "globex" */
  keyB: string;
  authA: { authorization: string };
  authB: { authorization: string };
  http: () => request.Agent;
  close(): Promise<void>;
}

export async function startTestApp(env: Record<string, string> = {}, deps: AppDeps = {}): Promise<TestApp> {
  const testEnv = await createTestEnv(env);
  let app: FastifyInstance | undefined;
  try {
    // The engine analysis spawns Python per upload; suites that test it opt in.
    app = await buildApp(testEnv.config, { prisma: testEnv.prisma, analyzeModels: false, ...deps });
    const keyA = await createTestKey(testEnv.prisma, 'acme');
    const keyB = await createTestKey(testEnv.prisma, 'globex');
    const server = app.server;
    const started = app;
    return {
      env: testEnv,
      app,
      keyA,
      keyB,
      authA: { authorization: `Bearer ${keyA}` },
      authB: { authorization: `Bearer ${keyB}` },
      http: () => request.agent(server),
      close: async () => {
        await started.close();
        await testEnv.cleanup();
      },
    };
  } catch (err) {
    await app?.close();
    await testEnv.cleanup();
    throw err;
  }
}

/** Every file in the store's objects/ and tmp/ trees (to assert that a refused upload left nothing). */
export async function storedFiles(storageDir: string): Promise<string[]> {
  const { readdir } = await import('node:fs/promises');
  try {
    const entries = await readdir(storageDir, { recursive: true, withFileTypes: true });
    return entries.filter((e) => e.isFile()).map((e) => `${e.parentPath}/${e.name}`).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** A problem+json answer (RFC 9457) with this status whose detail says what to fix. */
export function assertProblem(
  res: { status: number; headers: Record<string, string>; body: Record<string, unknown> },
  status: number,
  detail: RegExp,
): void {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.match(res.headers['content-type'] ?? '', /^application\/problem\+json/);
  assert.equal(res.body.status, status);
  assert.match(String(res.body.detail), detail);
  assert.equal(typeof res.body.type, 'string');
  assert.equal(typeof res.body.title, 'string');
}
