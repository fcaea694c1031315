// The whole flow through openapi-fetch with the types openapi-typescript generated from openapi.yaml:
// uploads, a job followed by conditional polling (ETag / 304), the report, the artifact resumed with Range +
// If-Range and checked against X-Content-SHA256, paging, idempotent cancel, and typed problem+json errors.
// No casts: every value comes typed from the generated `paths`.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import createClient from 'openapi-fetch';
import type { paths } from './generated/openapi-typescript/schema.js';
import { joinAndCheck, rangeSize, type FlowInput, type FlowRecord } from './flow.js';

const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);

export async function runOpenapiFetchFlow(input: FlowInput): Promise<FlowRecord> {
  const client = createClient<paths>({ baseUrl: input.baseUrl, headers: { authorization: `Bearer ${input.apiKey}` } });
  // openapi-fetch sends JSON unless told otherwise; multipart is its documented bodySerializer + FormData.
  const asForm = (name: string) => (body: { file: Blob }) => {
    const form = new FormData();
    form.append('file', body.file, name);
    return form;
  };

  const uploaded = await client.POST('/v1/models', { body: { file: input.model }, bodySerializer: asForm(input.modelName) });
  assert.ok(uploaded.data, JSON.stringify(uploaded.error));
  const model = uploaded.data;
  assert.equal(uploaded.response.headers.get('location'), `/v1/models/${model.id}`);
  assert.equal(model.inputs[0]?.dims[1], 3);
  const again = await client.GET('/v1/models/{id}', {
    params: { path: { id: model.id }, header: { 'if-none-match': uploaded.response.headers.get('etag') ?? '"none"' } },
  });
  assert.ok(again.response.status === 200 || again.response.status === 304);

  const datasetUpload = await client.POST('/v1/datasets', { body: { file: input.dataset }, bodySerializer: asForm(input.datasetName) });
  assert.ok(datasetUpload.data, JSON.stringify(datasetUpload.error));
  const dataset = datasetUpload.data;
  assert.equal(dataset.format, 'npz');

  // Errors are typed problem+json: a field error points into the body with an RFC 6901 pointer.
  const invalid = await client.POST('/v1/jobs', { body: { modelId: model.id, options: { rule: 'ratio', ratio: 1.5 } } });
  assert.equal(invalid.response.status, 422);
  assert.equal(invalid.error?.errors?.[0]?.in, 'body');
  assert.equal(invalid.error?.errors?.[0]?.pointer, '/options/ratio');
  const misfit = await client.POST('/v1/jobs', { body: { modelId: model.id, datasetId: 'builtin:fashion-mnist' } });
  assert.equal(misfit.response.status, 422, 'a 3-channel model cannot take Fashion-MNIST');
  assert.match(misfit.error?.type ?? '', /\/problems\/dataset-shape-mismatch$/);
  const unknown = await client.GET('/v1/jobs/{id}', { params: { path: { id: '00000000-0000-4000-8000-000000000000' } } });
  assert.equal(unknown.response.status, 404);
  assert.equal(unknown.error?.status, 404);
  const unauthenticated = await createClient<paths>({ baseUrl: input.baseUrl }).GET('/v1/models', {});
  assert.equal(unauthenticated.response.status, 401);
  assert.match(unauthenticated.response.headers.get('www-authenticate') ?? '', /^Bearer/);

  // A job, followed by polling with If-None-Match: 304 while nothing moved.
  const created = await client.POST('/v1/jobs', {
    body: { modelId: model.id, datasetId: dataset.id, options: { rule: 'ratio', ratio: 0.5 } },
    params: { header: { 'idempotency-key': `openapi-fetch-${model.id}` } },
  });
  assert.equal(created.response.status, 202, JSON.stringify(created.error));
  assert.ok(created.data);
  const jobId = created.data.id;
  assert.equal(created.response.headers.get('location'), `/v1/jobs/${jobId}`);
  const getJob = (ifNoneMatch: string) => client.GET('/v1/jobs/{id}', { params: { path: { id: jobId }, header: { 'if-none-match': ifNoneMatch } } });
  let job: NonNullable<Awaited<ReturnType<typeof getJob>>['data']> | undefined;
  let etag = '"none"';
  let notModified = 0;
  for (let polls = 0; polls < 600 && !(job && TERMINAL.has(job.status)); polls += 1) {
    const got = await getJob(etag);
    if (got.response.status === 304) notModified += 1;
    else {
      assert.ok(got.data, JSON.stringify(got.error));
      job = got.data;
      etag = got.response.headers.get('etag') ?? etag;
    }
    if (!job || !TERMINAL.has(job.status)) await sleep(250);
  }
  assert.ok(job, 'the job was read');
  assert.equal(job.status, 'succeeded', JSON.stringify(job.error));
  assert.ok(notModified > 0, 'polling with the ETag got 304s');
  assert.ok((job.metrics?.macsBefore ?? 0) >= (job.metrics?.macsAfter ?? 0), 'camelCase metrics');

  const report = await client.GET('/v1/jobs/{id}/report', { params: { path: { id: jobId } } });
  assert.ok(report.data, JSON.stringify(report.error));
  assert.ok(report.data.layers.length > 0);
  assert.ok(report.data.totals.macs.before >= report.data.totals.macs.after);
  const reportEtag = report.response.headers.get('etag');
  assert.ok(reportEtag);
  const cached = await client.GET('/v1/jobs/{id}/report', {
    params: { path: { id: jobId }, header: { 'if-none-match': `W/"other", ${reportEtag}` } },
  });
  assert.equal(cached.response.status, 304, 'a list with the (weakly compared) ETag answers 304');

  // The artifact in two ranges, the second one conditional on the first one's ETag.
  const head = await client.GET('/v1/jobs/{id}/artifact', {
    params: { path: { id: jobId }, header: { range: 'bytes=0-99' } },
    parseAs: 'arrayBuffer',
  });
  assert.equal(head.response.status, 206);
  assert.equal(head.response.headers.get('accept-ranges'), 'bytes');
  assert.ok(head.data);
  const size = rangeSize(head.response.headers.get('content-range'));
  const tail = await client.GET('/v1/jobs/{id}/artifact', {
    params: { path: { id: jobId }, header: { range: 'bytes=100-', 'if-range': head.response.headers.get('etag') ?? '' } },
    parseAs: 'arrayBuffer',
  });
  assert.equal(tail.response.status, 206);
  assert.ok(tail.data);
  const whole = joinAndCheck(new Uint8Array(head.data), new Uint8Array(tail.data), head.response.headers.get('x-content-sha256'), size);
  const beyond = await client.GET('/v1/jobs/{id}/artifact', {
    params: { path: { id: jobId }, header: { range: `bytes=${size}-` } },
    parseAs: 'arrayBuffer',
  });
  assert.equal(beyond.response.status, 416);
  assert.equal(beyond.response.headers.get('content-range'), `bytes */${size}`);

  // Cancel twice: the second answer is the same canceled job. No body, no content type needed.
  const doomed = await client.POST('/v1/jobs', { body: { modelId: model.id, options: {} } });
  assert.ok(doomed.data, JSON.stringify(doomed.error));
  const canceled = await client.POST('/v1/jobs/{id}/cancel', { params: { path: { id: doomed.data.id } } });
  assert.equal(canceled.data?.status, 'canceled', JSON.stringify(canceled.error));
  const canceledAgain = await client.POST('/v1/jobs/{id}/cancel', { params: { path: { id: doomed.data.id } } });
  assert.equal(canceledAgain.response.status, 200);
  assert.equal(canceledAgain.data?.status, 'canceled');

  // Paging one job at a time sees every job once.
  const seen: string[] = [];
  let cursor: string | undefined;
  let pages = 0;
  do {
    const page = await client.GET('/v1/jobs', { params: { query: { limit: 1, ...(cursor ? { cursor } : {}) } } });
    assert.ok(page.data, JSON.stringify(page.error));
    seen.push(...page.data.items.map((item) => item.id));
    cursor = page.data.nextCursor ?? undefined;
    pages += 1;
  } while (cursor !== undefined && pages < 100);
  assert.ok(seen.includes(jobId) && seen.includes(doomed.data.id));
  assert.equal(new Set(seen).size, seen.length, 'no job twice');

  return { events: [], progressWithEta: 0, artifactBytes: whole.length, pages };
}
