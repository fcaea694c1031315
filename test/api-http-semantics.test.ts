// HTTP semantics a generated client relies on: RFC 9110 conditional requests (weak comparison, lists, `*`),
// ETags that follow a job's progress, keyset paging that survives a filtered cursor, stage rate and ETA,
// WWW-Authenticate, RFC 6901 pointers and the problem type pages.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { noneMatch, parseEntityTags } from '../src/api/routes/common.js';
import { stageRate, StageRateTracker } from '../src/api/progress-rate.js';
import { assertProblem } from './helpers/app.js';
import { startApiSuite, type ApiSuite } from './helpers/api-suite.js';

describe('conditional request matching (RFC 9110 §13.1.2)', () => {
  test('weak comparison, lists and *', () => {
    assert.ok(noneMatch('"abc"', '"abc"'));
    assert.ok(noneMatch('W/"abc"', '"abc"'), 'If-None-Match compares weakly');
    assert.ok(noneMatch('"x", W/"y" , "abc"', '"abc"'), 'a list');
    assert.ok(noneMatch(['"x"', '"abc"'], '"abc"'), 'repeated header fields');
    assert.ok(noneMatch('*', '"abc"'));
    assert.ok(!noneMatch('"abcd"', '"abc"'));
    assert.ok(!noneMatch(undefined, '"abc"'));
    assert.ok(!noneMatch('abc', '"abc"'), 'an unquoted tag is not a tag');
    assert.deepEqual(parseEntityTags('W/"a,b", "c"'), ['W/"a,b"', '"c"'], 'commas inside a tag do not split it');
  });
});

describe('stage rate and ETA', () => {
  test('units per second between the first and the latest update of a stage', () => {
    assert.deepEqual(stageRate({ at: 0, done: 2 }, { at: 4000, done: 10 }, 20), { rate: 2, etaSeconds: 5 });
    assert.deepEqual(stageRate({ at: 0, done: 2 }, { at: 0, done: 2 }, 20), { rate: null, etaSeconds: null }, 'one sample');
    assert.deepEqual(stageRate({ at: 0, done: 0 }, { at: 1000, done: 5 }, 0), { rate: null, etaSeconds: null }, 'unknown total');
  });

  test('the tracker restarts at each stage', () => {
    let now = 0;
    const tracker = new StageRateTracker(() => now);
    assert.equal(tracker.next({ stage: 'rewrite', done: 0, total: 10, percent: 10 }).rate, null);
    now = 2000;
    assert.deepEqual(tracker.next({ stage: 'rewrite', done: 4, total: 10, percent: 20 }), { stage: 'rewrite', done: 4, total: 10, percent: 20, rate: 2, etaSeconds: 3 });
    now = 3000;
    assert.equal(tracker.next({ stage: 'write', done: 1, total: 3, percent: 90 }).rate, null, 'a new stage has no rate yet');
  });
});

describe('API semantics', () => {
  let t: ApiSuite;
  let modelId: string;

  before(async () => {
    t = await startApiSuite();
    modelId = await t.upload('models', t.fx.tiny);
  });
  after(() => t?.close());

  const create = async () => (await t.http().post('/v1/jobs').set(t.authA).send({ modelId })).body.id as string;

  test('?status= paging continues after a cursor that no longer matches the filter', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i += 1) ids.push(await create());
    // newest first: ids[4] … ids[0]; ids[3] is the cursor and has another status than the filter.
    const statuses = ['succeeded', 'succeeded', 'succeeded', 'failed', 'succeeded'] as const;
    for (const [i, id] of ids.entries()) await t.env.prisma.job.update({ where: { id }, data: { status: statuses[i] } });
    const page = await t.http().get(`/v1/jobs?status=succeeded&limit=2&cursor=${ids[3]}`).set(t.authA);
    assert.equal(page.status, 200);
    assert.deepEqual(page.body.items.map((j: { id: string }) => j.id), [ids[2], ids[1]], 'no succeeded job after the cursor is skipped');
    const rest = await t.http().get(`/v1/jobs?status=succeeded&limit=2&cursor=${page.body.nextCursor}`).set(t.authA);
    assert.deepEqual(rest.body.items.map((j: { id: string }) => j.id), [ids[0]]);
    assert.equal(rest.body.nextCursor, null);
  });

  test("a job's ETag holds while nothing moves and changes with progress; the model's with a weak list", async () => {
    const id = await create();
    const first = await t.http().get(`/v1/jobs/${id}`).set(t.authA);
    const etag = first.headers.etag;
    assert.match(etag ?? '', /^"[0-9a-f]{32}"$/);
    for (const header of ['x-request-id', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset']) {
      assert.ok(first.headers[header], `${header}, as openapi.yaml declares on every /v1 response`);
    }
    const same = await t.http().get(`/v1/jobs/${id}`).set(t.authA).set('if-none-match', `"other", W/${etag}`);
    assert.equal(same.status, 304);
    assert.equal(same.headers.etag, etag);
    await t.env.prisma.job.update({ where: { id }, data: { status: 'running', stage: 'rewrite', progress: 0.4 } });
    const moved = await t.http().get(`/v1/jobs/${id}`).set(t.authA).set('if-none-match', etag!);
    assert.equal(moved.status, 200);
    assert.notEqual(moved.headers.etag, etag);
    const model = await t.http().get(`/v1/models/${modelId}`).set(t.authA).set('if-none-match', '*');
    assert.equal(model.status, 304, 'If-None-Match: * matches any current representation');
  });

  test('a running job shows its stage with rate and ETA from its progress events', async () => {
    const id = await create();
    await t.env.prisma.job.update({ where: { id }, data: { status: 'running', stage: 'rewrite', progress: 0.5 } });
    await t.env.prisma.jobEvent.create({ data: { jobId: id, type: 'status', data: { status: 'running' } } });
    const at = Date.now() - 10_000;
    for (const [dt, done] of [[0, 2], [4000, 6], [8000, 10]] as const) {
      await t.env.prisma.jobEvent.create({
        data: { jobId: id, type: 'progress', createdAt: new Date(at + dt), data: { stage: 'rewrite', done, total: 20, percent: 50 } },
      });
    }
    const res = await t.http().get(`/v1/jobs/${id}`).set(t.authA);
    assert.deepEqual(res.body.stageProgress, { stage: 'rewrite', done: 10, total: 20, rate: 1, etaSeconds: 10 });
  });

  test('401 names the Bearer scheme; field errors carry RFC 6901 pointers; problem types have pages', async () => {
    const unauthenticated = await t.http().get('/v1/jobs');
    assertProblem(unauthenticated, 401, /Authorization/);
    assert.match(unauthenticated.headers['www-authenticate'] ?? '', /^Bearer/);

    const bad = await t.http().post('/v1/jobs').set(t.authA).send({ modelId, bogus: 1, options: { rule: 'ratio', ratio: 2 } });
    assertProblem(bad, 400, /request body at/);
    const pointers = (bad.body.errors as Array<{ in: string; pointer: string }>).map((e) => `${e.in} ${e.pointer}`).sort();
    assert.deepEqual(pointers, ['body /bogus', 'body /options/ratio']);
    const query = await t.http().get('/v1/jobs?limit=0').set(t.authA);
    assert.deepEqual(query.body.errors.map((e: { in: string; pointer: string }) => [e.in, e.pointer]), [['query', '/limit']]);

    const page = await t.http().get('/problems/dataset-shape-mismatch');
    assert.equal(page.status, 200);
    assert.match(page.headers['content-type'] ?? '', /^text\/html/);
    assert.match(page.text, /do not fit the model input/);
    assertProblem(await t.http().get('/problems/no-such-type'), 404, /GET \/problems lists them/);
  });
});
