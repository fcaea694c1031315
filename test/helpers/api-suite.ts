// The setup the API suites share: the test fixtures, one app with two tenants, and uploads through the API.
import assert from 'node:assert/strict';
import type { AppDeps } from '../../src/api/app.js';
import { startTestApp, type TestApp } from './app.js';
import { createFixtures, type Fixtures } from './fixtures.js';

export interface ApiSuite extends TestApp {
  fx: Fixtures;
  /** POSTs the file to /v1/models or /v1/datasets as tenant A (or `auth`) and returns the id it got. */
  upload(resource: 'models' | 'datasets', file: string, auth?: { authorization: string }): Promise<string>;
}

/** Fixtures and an app; close() stops the app and removes both. */
export async function startApiSuite(env: Record<string, string> = {}, deps: AppDeps = {}): Promise<ApiSuite> {
  const fx = await createFixtures();
  let t: TestApp;
  try {
    t = await startTestApp(env, deps);
  } catch (err) {
    await fx.cleanup();
    throw err;
  }
  return {
    ...t,
    fx,
    upload: async (resource, file, auth = t.authA) => {
      const res = await t.http().post(`/v1/${resource}`).set(auth).attach('file', file);
      assert.ok(res.status === 201 || res.status === 200, `upload of ${file} to /v1/${resource}: ${res.status} ${JSON.stringify(res.body)}`);
      return res.body.id as string;
    },
    close: async () => {
      await t.close();
      await fx.cleanup();
    },
  };
}
