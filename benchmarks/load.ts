// Load benchmark of the service (issue 6, item 5; issue 12): autocannon against GET /v1/jobs/:id (alone, then
// while another tenant holds --streams open event streams) and POST /v1/jobs of the real API process on loopback,
// an audit that no accepted job was lost, and job throughput with 1 vs 2 worker processes. Prints a markdown section and writes it into BENCHMARKS.md between <!-- load:begin --> and
// <!-- load:end --> (the rest of that file belongs to benchmarks/run.ts).
//   --duration S       seconds per autocannon run (default 10)
//   --connections N    concurrent connections (default 10)
//   --jobs N           small jobs drained per worker count (default 6; 0 skips the drains)
//   --streams N        event streams another tenant holds open during the second GET run (default 200)
//   --rounds N         GET runs without and with the streams, interleaved after one warm-up run; the table
//                      shows the median of each (default 3)
//   --out FILE         markdown file to update (default BENCHMARKS.md); --no-write prints only
//   --api-log-level L  LOG_LEVEL of the API process (default warn: per-request logs would be written to a pipe
//                      read by this process, which also runs the load generator)
// Uses the machine's PostgreSQL and Redis through a fresh database and queue prefix (test/helpers/env.ts),
// removed at the end.
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { Queue } from 'bullmq';
import { COMPRESSION_QUEUE, type CompressionJobData } from '../src/queue/index.js';
import { createTestEnv, createTestKey, type TestEnv } from '../test/helpers/env.js';
import { freePort } from '../test/fault-support/ports.js';
import { REPO_ROOT, spawnApi, spawnWorker, Teardown, type ServiceProcess } from '../test/fault-support/processes.js';
import { waitUntil } from '../test/fault-support/wait.js';
import { tinyCnn } from '../test/worker-fixtures.js';

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '10' },
    jobs: { type: 'string', default: '6' },
    streams: { type: 'string', default: '200' },
    rounds: { type: 'string', default: '3' },
    out: { type: 'string', default: path.join(REPO_ROOT, 'BENCHMARKS.md') },
    'no-write': { type: 'boolean', default: false },
    'api-log-level': { type: 'string', default: 'warn' },
  },
});

function positiveInt(name: string, raw: string | undefined): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${raw}`);
  return n;
}
const durationS = positiveInt('duration', values.duration);
const connections = positiveInt('connections', values.connections);
const drainJobs = values.jobs === '0' ? 0 : positiveInt('jobs', values.jobs);
const streamCount = positiveInt('streams', values.streams);
const rounds = positiveInt('rounds', values.rounds);
const outFile = path.resolve(values.out!);

const BEGIN = '<!-- load:begin -->';
const END = '<!-- load:end -->';
/** The cheapest real job: the tiny CNN, fixed-ratio ranks, no fine-tuning. */
const SMALL_JOB_OPTIONS = { rule: 'ratio', ratio: 0.5 };
const DRAIN_TIMEOUT_MS = 10 * 60 * 1000;

interface HttpRun {
  label: string;
  requests: number;
  seconds: number;
  perSecond: number;
  p50: number;
  p99: number;
  max: number;
  statusCounts: Record<string, number>;
  errors: number;
  timeouts: number;
  /** 1-minute load average when the run ended */
  load: number;
}

interface DrainRun {
  workers: number;
  jobs: number;
  seconds: number;
  jobsPerMinute: number;
  succeeded: number;
}

interface Audit {
  accepted: number;
  rowsFound: number;
  queuedInBullmq: number;
  rowsTotal: number;
  /** Rows of requests still in flight when autocannon stopped (their 202 was never read): at most `connections`. */
  unansweredRows: number;
  missingRows: string[];
  missingInQueue: string[];
}

/** The run with the median req/s (its p99 and load average come with it), labelled with how many there were. */
function median(label: string, runs: HttpRun[]): HttpRun {
  const sorted = [...runs].sort((a, b) => a.perSecond - b.perSecond);
  const middle = sorted[Math.floor(sorted.length / 2)]!;
  return { ...middle, label: runs.length > 1 ? `${label} (median of ${runs.length} interleaved runs)` : label };
}

async function runCannon(
  label: string,
  options: autocannon.Options,
  onJson?: (status: number, body: string) => void,
  duration = durationS,
): Promise<HttpRun> {
  const result = await autocannon({
    ...options,
    connections,
    duration,
    ...(onJson
      ? {
          requests: [
            {
              method: options.method ?? 'GET',
              ...(options.body !== undefined ? { body: options.body } : {}),
              onResponse: (status: number, body: string) => onJson(status, body),
            },
          ],
        }
      : {}),
  });
  const statusCounts: Record<string, number> = {};
  for (const [code, stat] of Object.entries(result.statusCodeStats ?? {})) statusCounts[code] = Number((stat as { count: number | string }).count);
  const requests = Object.values(statusCounts).reduce((a, b) => a + b, 0);
  return {
    label,
    requests,
    seconds: result.duration,
    perSecond: requests / result.duration,
    p50: result.latency.p50,
    p99: result.latency.p99,
    max: result.latency.max,
    statusCounts,
    errors: result.errors,
    timeouts: result.timeouts,
    load: os.loadavg()[0] ?? 0,
  };
}

/** Opens `count` SSE streams on a job and waits until each answered 200; returns the function that closes them. */
async function openStreams(baseUrl: string, apiKey: string, jobId: string, count: number): Promise<() => void> {
  const controller = new AbortController();
  const deadline = Date.now() + 15_000;
  // The server frees the slots of streams closed just before once it has seen their sockets close: a 429
  // for the per-tenant cap is retried until then.
  const open = async (): Promise<Response> => {
    for (;;) {
      const res = await fetch(`${baseUrl}/v1/jobs/${jobId}/events`, { headers: { authorization: `Bearer ${apiKey}` }, signal: controller.signal });
      if (res.status !== 429 || Date.now() > deadline) return res;
      const problem = (await res.json()) as { type?: string; detail?: string };
      if (!problem.type?.endsWith('/too-many-streams')) throw new Error(`an event stream was refused: ${problem.detail}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };
  const responses = await Promise.all(Array.from({ length: count }, open));
  const refused = responses.filter((r) => r.status !== 200);
  if (refused.length > 0) throw new Error(`${refused.length} of ${count} event streams were refused: ${refused[0]?.status}`);
  // Read (and drop) what the streams carry, as a client would, so the server's writes never back up.
  for (const r of responses) void r.body?.pipeTo(new WritableStream()).catch(() => undefined);
  return () => controller.abort();
}

async function uploadModel(baseUrl: string, apiKey: string, file: string): Promise<string> {
  const form = new FormData();
  form.append('file', new Blob([await readFile(file)]), path.basename(file));
  const res = await fetch(`${baseUrl}/v1/models`, { method: 'POST', headers: { authorization: `Bearer ${apiKey}` }, body: form });
  const body = (await res.json()) as { id?: string };
  if (res.status !== 201 || !body.id) throw new Error(`model upload answered ${res.status}: ${JSON.stringify(body)}`);
  return body.id;
}

async function createJob(baseUrl: string, apiKey: string, modelId: string): Promise<string> {
  const res = await fetch(`${baseUrl}/v1/jobs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ modelId, options: SMALL_JOB_OPTIONS }),
  });
  const body = (await res.json()) as { id?: string };
  if (res.status !== 202 || !body.id) throw new Error(`POST /v1/jobs answered ${res.status}: ${JSON.stringify(body)}`);
  return body.id;
}

/** Every 202 must have its row, and (no worker runs during the load) a waiting BullMQ job of the same id. */
async function auditJobs(env: TestEnv, queue: Queue<CompressionJobData>, acceptedIds: string[], otherIds: string[]): Promise<Audit> {
  const rows = await env.prisma.job.findMany({ where: { id: { in: acceptedIds } }, select: { id: true } });
  const rowIds = new Set(rows.map((r) => r.id));
  const missingRows = acceptedIds.filter((id) => !rowIds.has(id));
  const known = new Set([...acceptedIds, ...otherIds]);
  const unanswered = (await env.prisma.job.findMany({ select: { id: true } })).map((r) => r.id).filter((id) => !known.has(id));
  const missingInQueue: string[] = [];
  let queued = 0;
  // The unanswered ones were created by the server all the same: they must be on the queue as well.
  for (const id of [...acceptedIds, ...unanswered]) {
    const job = await queue.getJob(id);
    const state = job ? await job.getState() : 'missing';
    if (state === 'waiting' || state === 'prioritized' || state === 'delayed') {
      if (!unanswered.includes(id)) queued += 1;
    } else {
      missingInQueue.push(`${id} (${state})`);
    }
  }
  return {
    accepted: acceptedIds.length,
    rowsFound: rowIds.size,
    queuedInBullmq: queued,
    rowsTotal: await env.prisma.job.count(),
    unansweredRows: unanswered.length,
    missingRows,
    missingInQueue,
  };
}

/** Enqueues `jobs` small jobs through the API with `workers` worker processes running; time until all ended. */
async function drain(
  env: TestEnv,
  workerEnv: Record<string, string>,
  teardown: Teardown,
  baseUrl: string,
  apiKey: string,
  modelId: string,
  workers: number,
): Promise<DrainRun> {
  const started: ServiceProcess[] = [];
  for (let i = 0; i < workers; i += 1) {
    const worker = spawnWorker(`worker-${workers}-${i + 1}`, workerEnv);
    teardown.defer(`kill ${worker.name}`, () => worker.kill('SIGKILL'));
    started.push(worker);
  }
  await Promise.all(started.map((w) => w.waitForOutput(/"msg":"worker ready"/, 'its ready line', 60_000)));
  // One warm-up job so the first job's onnxruntime load is not counted against either configuration.
  const warm = await createJob(baseUrl, apiKey, modelId);
  await waitForEnd(env, [warm], started);

  const t0 = performance.now();
  const ids: string[] = [];
  for (let i = 0; i < drainJobs; i += 1) ids.push(await createJob(baseUrl, apiKey, modelId));
  const succeeded = await waitForEnd(env, ids, started);
  const seconds = (performance.now() - t0) / 1000;
  await Promise.all(started.map((w) => w.stop()));
  return { workers, jobs: drainJobs, seconds, jobsPerMinute: (drainJobs / seconds) * 60, succeeded };
}

async function waitForEnd(env: TestEnv, ids: string[], workers: ServiceProcess[]): Promise<number> {
  try {
    await waitUntil(
      `${ids.length} jobs to finish`,
      async () => (await env.prisma.job.count({ where: { id: { in: ids }, status: { in: ['succeeded', 'failed', 'canceled'] } } })) === ids.length,
      { timeoutMs: DRAIN_TIMEOUT_MS, intervalMs: 200 },
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${workers.map((w) => w.output().slice(-3000)).join('\n')}`);
  }
  return env.prisma.job.count({ where: { id: { in: ids }, status: 'succeeded' } });
}

function fmt(n: number, digits = 1): string {
  return n.toFixed(digits);
}

function render(http: HttpRun[], audit: Audit, drains: DrainRun[], command: string): string {
  const cpu = os.cpus()[0]?.model.trim() ?? 'unknown CPU';
  const lines = [
    BEGIN,
    '## Load: API and queue',
    '',
    `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC on ${os.cpus().length} cores (${cpu}), shared with other work; ` +
      `\`${command}\`. The API is the real \`src/server.ts\` process (LOG_LEVEL=${values['api-log-level']}, per-key rate limit raised out of the way ` +
      'but still evaluated in Redis), on loopback with the machine\'s PostgreSQL 15 and Redis 7; autocannon runs in the benchmark\'s own process, apart from the API\'s.',
    '',
    `| request | connections | seconds | requests | req/s | p50 ms | p99 ms | max ms | status codes | errors | timeouts | load avg (1 min) |`,
    `|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|`,
    ...http.map(
      (r) =>
        `| ${r.label} | ${connections} | ${fmt(r.seconds, 0)} | ${r.requests} | ${fmt(r.perSecond)} | ${r.p50} | ${r.p99} | ${r.max} | ` +
        `${Object.entries(r.statusCounts).map(([c, n]) => `${c}: ${n}`).join(', ')} | ${r.errors} | ${r.timeouts} | ${fmt(r.load, 2)} |`,
    ),
    '',
    `Issue 12's goal for GET /v1/jobs/:id is >= 2,000 req/s with p99 < 20 ms at ${connections} connections while another tenant ` +
      `holds ${streamCount} open event streams: ${goalVerdict(http)}. An open stream costs the API no database query and no ` +
      'Redis command (one job-events subscription per process, fanned out in memory); the two GET rows are the medians of ' +
      `interleaved runs, and their ratio (with / without the streams) is ${streamRatio(http)} in req/s.`,
    '',
    `**No job lost**: ${audit.accepted} POSTs answered 202; ${audit.rowsFound} of them have their database row and ` +
      `${audit.queuedInBullmq} are waiting in BullMQ under the same id (no worker ran during the load); ` +
      `the database holds ${audit.rowsTotal} jobs in all: those, the one read by the GET runs, the streamed one, and ${audit.unansweredRows} created by ` +
      `requests still in flight when autocannon stopped (at most one per connection; also waiting in BullMQ).` +
      (audit.missingRows.length + audit.missingInQueue.length > 0
        ? ` MISSING: rows ${audit.missingRows.join(', ') || 'none'}; queue ${audit.missingInQueue.slice(0, 20).join(', ') || 'none'}.`
        : ''),
    '',
    `Job throughput (tiny CNN, \`${JSON.stringify(SMALL_JOB_OPTIONS)}\`, no fine-tuning; each job = engine start, analyze/plan/rewrite, ` +
      'onnxruntime-node verification and latency runs; ENGINE_THREADS=1, ORT_THREADS=1, one job per worker process; ' +
      'from the first POST to the last job finished, after one warm-up job):',
    '',
    ...(drains.length > 0
      ? [
          '| worker processes | jobs | succeeded | drain s | jobs/min |',
          '|---:|---:|---:|---:|---:|',
          ...drains.map((d) => `| ${d.workers} | ${d.jobs} | ${d.succeeded} | ${fmt(d.seconds)} | ${fmt(d.jobsPerMinute)} |`),
        ]
      : ['not measured in this run (`--jobs 0`).']),
    END,
  ];
  return lines.join('\n');
}

function streamRatio(http: HttpRun[]): string {
  const plain = http.find((r) => r.label.startsWith('GET') && !r.label.includes('event streams'));
  const loaded = http.find((r) => r.label.includes('event streams'));
  return plain && loaded && plain.perSecond > 0 ? fmt(loaded.perSecond / plain.perSecond, 2) : 'not measured';
}

function goalVerdict(http: HttpRun[]): string {
  const loaded = http.find((r) => r.label.includes('event streams'));
  if (!loaded) return 'not measured';
  const met = loaded.perSecond >= 2000 && loaded.p99 < 20;
  return met
    ? `met (${fmt(loaded.perSecond, 0)} req/s, p99 ${loaded.p99} ms)`
    : `not met here (${fmt(loaded.perSecond, 0)} req/s, p99 ${loaded.p99} ms, 1-minute load average ${fmt(loaded.load, 2)} on ` +
        `${os.cpus().length} cores): the API, PostgreSQL, Redis and autocannon share these cores with the other work on the machine`;
}

async function writeSection(file: string, section: string): Promise<void> {
  let text = '';
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const begin = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  if (begin >= 0 && end > begin) {
    text = text.slice(0, begin) + section + text.slice(end + END.length);
  } else {
    text = `${text.replace(/\s*$/, '')}${text ? '\n\n' : ''}${section}\n`;
  }
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  const { rename } = await import('node:fs/promises');
  await rename(tmp, file);
}

async function main(): Promise<void> {
  const command = `node --import tsx benchmarks/load.ts --duration ${durationS} --connections ${connections} --jobs ${drainJobs} --streams ${streamCount} --rounds ${rounds}`;
  const teardown = new Teardown();
  const env = await createTestEnv({ LOG_LEVEL: 'warn' });
  teardown.defer('drop the benchmark database', () => env.cleanup());
  try {
    const port = await freePort();
    const serviceEnv: Record<string, string> = {
      DATABASE_URL: env.config.databaseUrl,
      REDIS_URL: env.config.redisUrl,
      QUEUE_PREFIX: env.config.queuePrefix,
      STORAGE_DIR: env.config.storageDir,
      ENGINE_THREADS: '1',
      ORT_THREADS: '1',
      WORKER_CONCURRENCY: '1',
    };
    const api = spawnApi('api', {
      ...serviceEnv,
      PORT: String(port),
      HOST: '127.0.0.1',
      LOG_LEVEL: values['api-log-level']!,
      RATE_LIMIT_PER_MINUTE: '100000000',
      // The POST run creates thousands of jobs of one tenant and the drain runs two workers for one tenant:
      // the tenant quotas and the fair dispatcher's per-tenant limit are raised out of the way.
      TENANT_MAX_ACTIVE_JOBS: '100000000',
      TENANT_MAX_RUNNING_JOBS: '100000000',
      TENANT_MAX_COMPUTE_SECONDS_PER_HOUR: '100000000',
      SSE_MAX_STREAMS_PER_TENANT: String(streamCount),
    });
    teardown.defer('stop the API', () => api.stop());
    const baseUrl = `http://127.0.0.1:${port}`;
    await waitUntil(
      'the API to answer /readyz',
      async () => {
        if (!api.alive) throw new Error(`API exited: ${api.output().slice(-3000)}`);
        return (await fetch(`${baseUrl}/readyz`)).status === 200;
      },
      { timeoutMs: 60_000, intervalMs: 200 },
    );
    const apiKey = await createTestKey(env.prisma, 'load');
    const auth = { authorization: `Bearer ${apiKey}` };
    const modelId = await uploadModel(baseUrl, apiKey, await tinyCnn());
    const target = await createJob(baseUrl, apiKey, modelId);

    const streamKey = await createTestKey(env.prisma, 'streams');
    const streamJob = await createJob(baseUrl, streamKey, await uploadModel(baseUrl, streamKey, await tinyCnn()));
    const getOptions = { url: `${baseUrl}/v1/jobs/${target}`, headers: auth };
    console.error('warm-up GET run (not reported)');
    await runCannon('warm-up', getOptions, undefined, Math.min(durationS, 5));
    // Interleaved, so that drift in the machine's load hits both configurations alike.
    const plain: HttpRun[] = [];
    const streamed: HttpRun[] = [];
    for (let round = 1; round <= rounds; round += 1) {
      console.error(`round ${round}/${rounds}: GET /v1/jobs/:id for ${durationS} s with ${connections} connections, then with ${streamCount} open event streams of another tenant`);
      plain.push(await runCannon('GET /v1/jobs/:id', getOptions));
      const closeStreams = await openStreams(baseUrl, streamKey, streamJob, streamCount);
      streamed.push(await runCannon('with streams', getOptions));
      closeStreams();
    }
    const get = median('GET /v1/jobs/:id', plain);
    const getWithStreams = median(`GET /v1/jobs/:id, another tenant holding ${streamCount} event streams`, streamed);
    console.error(`rounds: ${JSON.stringify({ plain: plain.map((r) => [Math.round(r.perSecond), r.p99, r.load]), streamed: streamed.map((r) => [Math.round(r.perSecond), r.p99, r.load]) })}`);

    console.error(`POST /v1/jobs for ${durationS} s with ${connections} connections (no Idempotency-Key: one job per request)`);
    const acceptedIds: string[] = [];
    const post = await runCannon(
      'POST /v1/jobs (no Idempotency-Key)',
      {
        url: `${baseUrl}/v1/jobs`,
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ modelId, options: SMALL_JOB_OPTIONS }),
      },
      (status, body) => {
        if (status !== 202) return;
        const id = (JSON.parse(body) as { id?: unknown }).id;
        if (typeof id === 'string') acceptedIds.push(id);
      },
    );
    const queue = new Queue<CompressionJobData>(COMPRESSION_QUEUE, {
      connection: { url: env.config.redisUrl, maxRetriesPerRequest: null },
      prefix: env.config.queuePrefix,
    });
    teardown.defer('close the queue', () => queue.close());
    const audit = await auditJobs(env, queue, acceptedIds, [target, streamJob]);
    console.error(`audit: ${JSON.stringify({ ...audit, missingRows: audit.missingRows.length, missingInQueue: audit.missingInQueue.length })}`);

    // The load's thousands of jobs are not what the drain measures: take them off the queue and close their rows
    // (canceled, so the workers' reconciler does not enqueue them again).
    await queue.obliterate({ force: true });
    await env.prisma.job.updateMany({ where: { status: 'queued' }, data: { status: 'canceled', errorCategory: 'canceled', errorMessage: 'load benchmark', finishedAt: new Date() } });

    const drains: DrainRun[] = [];
    for (const workers of drainJobs > 0 ? [1, 2] : []) {
      console.error(`draining ${drainJobs} small jobs with ${workers} worker process(es)`);
      drains.push(await drain(env, { ...serviceEnv, LOG_LEVEL: 'info' }, teardown, baseUrl, apiKey, modelId, workers));
    }

    const section = render([get, getWithStreams, post], audit, drains, command);
    console.log(section);
    if (!values['no-write']) {
      await writeSection(outFile, section);
      console.error(`wrote the load section of ${outFile}`);
    }
    // More unanswered rows than connections would mean requests that created a job yet answered non-202.
    const unexplained = Math.max(0, audit.unansweredRows - connections);
    const lost = audit.missingRows.length + audit.missingInQueue.length;
    const failures = [get, getWithStreams, post].reduce((n, r) => n + r.errors + r.timeouts, 0);
    if (lost > 0 || unexplained > 0 || failures > 0 || drains.some((d) => d.succeeded !== d.jobs)) {
      console.error(`FAILED: ${lost} accepted jobs lost, ${unexplained} rows without a 202 beyond the in-flight ones, ${failures} request errors/timeouts, drains ${JSON.stringify(drains)}`);
      process.exitCode = 1;
    }
  } finally {
    await teardown.run();
  }
}

await main();
