// The whole flow through the SDK @hey-api/openapi-ts generated from openapi.yaml: uploads (its own multipart
// serializer), a job followed over Server-Sent Events (its SSE client: status and progress events with rate
// and ETA), the report, the artifact resumed with Range + If-Range and checked against X-Content-SHA256,
// paging, idempotent cancel and typed problem+json errors. No casts.
import assert from 'node:assert/strict';
import { createClient, createConfig } from './generated/hey-api/client/index.js';
import {
  cancelJob,
  createJob,
  getJob,
  getJobArtifact,
  getJobEvents,
  getJobReport,
  listJobs,
  uploadDataset,
  uploadModel,
} from './generated/hey-api/sdk.gen.js';
import { joinAndCheck, rangeSize, type FlowInput, type FlowRecord } from './flow.js';

const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);

export async function runHeyApiFlow(input: FlowInput): Promise<FlowRecord> {
  const client = createClient(createConfig({ baseUrl: input.baseUrl, headers: { authorization: `Bearer ${input.apiKey}` } }));

  const uploaded = await uploadModel({ client, body: { file: new File([input.model], input.modelName) } });
  assert.ok(uploaded.data, JSON.stringify(uploaded.error));
  const model = uploaded.data;
  const datasetUpload = await uploadDataset({ client, body: { file: new File([input.dataset], input.datasetName) } });
  assert.ok(datasetUpload.data, JSON.stringify(datasetUpload.error));
  const dataset = datasetUpload.data;

  const invalid = await createJob({ client, body: { modelId: model.id, options: { rule: 'budget' } } });
  assert.equal(invalid.response?.status, 422);
  assert.ok(invalid.error?.errors?.some((e) => e.in === 'body' && e.pointer === '/options/targetMacs'), JSON.stringify(invalid.error));
  const misfit = await createJob({ client, body: { modelId: model.id, datasetId: 'builtin:fashion-mnist' } });
  assert.equal(misfit.response?.status, 422);
  assert.match(misfit.error?.detail ?? '', /channel|C differs/);

  // A job canceled twice: the second answer is the same canceled job.
  const doomed = await createJob({ client, body: { modelId: model.id } });
  assert.ok(doomed.data, JSON.stringify(doomed.error));
  const cancel = (id: string) => cancelJob({ client, path: { id } });
  for (let i = 0; i < 2; i += 1) {
    const canceled = await cancel(doomed.data.id);
    assert.equal(canceled.data?.status, 'canceled', JSON.stringify(canceled.error));
    assert.equal(canceled.data?.error?.category, 'canceled');
  }

  const created = await createJob({ client, body: { modelId: model.id, datasetId: dataset.id, options: { rule: 'ratio', ratio: 0.5 } } });
  assert.ok(created.data, JSON.stringify(created.error));
  const jobId = created.data.id;

  // Follow it over SSE until the terminal status.
  const events: string[] = [];
  let progressWithEta = 0;
  let final: string | undefined;
  const { stream } = await getJobEvents({
    client,
    path: { id: jobId },
    onSseEvent: (event) => events.push(event.event ?? 'message'),
    sseMaxRetryAttempts: 0,
  });
  for await (const data of stream) {
    if ('done' in data) {
      assert.ok(data.percent >= 0 && data.percent <= 100);
      if (data.rate !== null && data.etaSeconds !== null) progressWithEta += 1;
    } else if (TERMINAL.has(data.status)) {
      final = data.status;
      break;
    }
  }
  assert.equal(final, 'succeeded');
  assert.ok(events.includes('status') && events.includes('progress'), `events: ${events.join(', ')}`);
  const job = await getJob({ client, path: { id: jobId } });
  assert.equal(job.data?.status, 'succeeded');
  assert.equal(job.data?.progress, 1);

  const report = await getJobReport({ client, path: { id: jobId } });
  assert.ok(report.data, JSON.stringify(report.error));
  assert.ok(report.data.layers.every((layer) => layer.macs.before >= layer.macs.after));

  // Resume: the first 64 bytes, then the rest while the ETag still holds.
  const head = await getJobArtifact({ client, path: { id: jobId }, headers: { range: 'bytes=0-63' }, parseAs: 'arrayBuffer' });
  assert.equal(head.response?.status, 206);
  assert.ok(head.data instanceof ArrayBuffer);
  const size = rangeSize(head.response?.headers.get('content-range') ?? null);
  const tail = await getJobArtifact({
    client,
    path: { id: jobId },
    headers: { range: 'bytes=64-', 'if-range': head.response?.headers.get('etag') ?? '' },
    parseAs: 'arrayBuffer',
  });
  assert.equal(tail.response?.status, 206);
  assert.ok(tail.data instanceof ArrayBuffer);
  const whole = joinAndCheck(new Uint8Array(head.data), new Uint8Array(tail.data), head.response?.headers.get('x-content-sha256') ?? null, size);
  const stale = await getJobArtifact({ client, path: { id: jobId }, headers: { range: 'bytes=64-', 'if-range': '"stale"' }, parseAs: 'arrayBuffer' });
  assert.equal(stale.response?.status, 200, 'a stale If-Range gets the whole file');

  // Only canceled jobs, one per page: the cursor of a job that does not match the filter still works.
  const canceledPage = (after: string | undefined) => listJobs({ client, query: { status: 'canceled', limit: 1, ...(after ? { cursor: after } : {}) } });
  const seen: string[] = [];
  let cursor: string | undefined = jobId;
  let pages = 0;
  do {
    const page = await canceledPage(cursor);
    assert.ok(page.data, JSON.stringify(page.error));
    for (const item of page.data.items) assert.equal(item.status, 'canceled');
    seen.push(...page.data.items.map((item) => item.id));
    cursor = page.data.nextCursor ?? undefined;
    pages += 1;
  } while (cursor !== undefined && pages < 100);
  assert.ok(seen.includes(doomed.data.id), 'the older canceled job is listed after the cursor of the newer succeeded one');

  return { events, progressWithEta, artifactBytes: whole.length, pages };
}
