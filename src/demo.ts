// `npm run demo` / `make demo`: the whole service on this machine, driven over HTTP like a client would.
// Starts the API and a worker as child processes (fresh database `tuckerize_demo`, storage under
// .data/demo), creates an API key, uploads the reference model, creates a compression job with EVBMF
// ranks and distillation fine-tuning on Fashion-MNIST, follows its progress over SSE, downloads the
// artifact and prints the per-layer plan and the paper's Table 1 from the report. Then stops both.
//
// Environment (demo only; the services read theirs through src/config.ts):
//   DEMO_QUICK=1               200 fine-tuning steps of 32 images instead of one epoch (what the tests run)
//   DEMO_MODEL=fmnist-resnet   the other reference net (default fmnist-vgg)
//   DEMO_STEPS=N               fine-tuning steps (overrides the two above)
//   DEMO_ADMIN_DATABASE_URL    a database to connect to for CREATE DATABASE (default postgres on 127.0.0.1)
//   REDIS_URL                  (default redis://127.0.0.1:6379)
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream, openAsBlob } from 'node:fs';
import { access, mkdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import { deleteRedisPrefix } from './queue/redis-keys.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);
const execFileAsync = promisify(execFile);

const DemoEnvSchema = z.object({
  DEMO_QUICK: z.enum(['0', '1', '']).default(''),
  DEMO_MODEL: z.enum(['fmnist-vgg', 'fmnist-resnet']).default('fmnist-vgg'),
  DEMO_STEPS: z.coerce.number().int().positive().optional(),
  DEMO_ADMIN_DATABASE_URL: z.string().default('postgresql://postgres@127.0.0.1:5432/postgres'),
  REDIS_URL: z.string().default('redis://127.0.0.1:6379'),
});
type DemoEnv = z.infer<typeof DemoEnvSchema>;

// ---------------------------------------------------------------- HTTP client helpers (also used by tests)

export interface SseMessage {
  event: string;
  data: unknown;
}

/**
 * Reads a Server-Sent Events stream and yields its messages until the server ends it.
 * Comments (keep-alives) are skipped; `data:` lines of one message are joined and parsed as JSON.
 */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  let buffer = '';
  let event = 'message';
  let data: string[] = [];
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, '');
      buffer = buffer.slice(newline + 1);
      if (line === '') {
        if (data.length > 0) {
          const text = data.join('\n');
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // not JSON: hand the text over as it is
          }
          yield { event, data: parsed };
        }
        event = 'message';
        data = [];
      } else if (line.startsWith(':')) {
        continue;
      } else if (line.startsWith('event:')) {
        event = line.slice(6).trim();
      } else if (line.startsWith('data:')) {
        data.push(line.slice(5).replace(/^ /, ''));
      }
    }
  }
}

export class ApiClient {
  constructor(
    readonly baseUrl: string,
    private readonly key: string,
  ) {}

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { authorization: `Bearer ${this.key}`, ...extra };
  }

  async request<T>(method: string, route: string, body?: unknown): Promise<T> {
    const res = await fetch(`${this.baseUrl}${route}`, {
      method,
      headers: this.headers(body === undefined ? {} : { 'content-type': 'application/json' }),
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${route} → ${res.status}: ${text.slice(0, 500)}`);
    return (text ? JSON.parse(text) : null) as T;
  }

  async uploadModel(file: string): Promise<{ id: string; name: string }> {
    const form = new FormData();
    form.set('file', await openAsBlob(file), path.basename(file));
    const res = await fetch(`${this.baseUrl}/v1/models`, { method: 'POST', headers: this.headers(), body: form });
    const text = await res.text();
    if (!res.ok) throw new Error(`upload of ${file} → ${res.status}: ${text.slice(0, 500)}`);
    return JSON.parse(text) as { id: string; name: string };
  }

  /** Follows GET /v1/jobs/:id/events until the terminal status; returns that status message's data. */
  async followJob(jobId: string, onMessage: (message: SseMessage) => void): Promise<Record<string, unknown>> {
    const res = await fetch(`${this.baseUrl}/v1/jobs/${jobId}/events`, { headers: this.headers({ accept: 'text/event-stream' }) });
    if (!res.ok || !res.body) throw new Error(`GET /v1/jobs/${jobId}/events → ${res.status}: ${await res.text()}`);
    let last: Record<string, unknown> | null = null;
    for await (const message of readSse(res.body)) {
      onMessage(message);
      if (message.event === 'status' && typeof message.data === 'object' && message.data !== null) {
        last = message.data as Record<string, unknown>;
        if (TERMINAL.has(String(last.status))) break;
      }
    }
    if (!last || !TERMINAL.has(String(last.status))) {
      throw new Error(`the event stream of job ${jobId} ended before the job finished (last status ${String(last?.status)})`);
    }
    return last;
  }

  /** Streams the artifact to `file` and checks the bytes against the X-Content-SHA256 header. */
  async downloadArtifact(jobId: string, file: string): Promise<{ sha256: string; bytes: number }> {
    const res = await fetch(`${this.baseUrl}/v1/jobs/${jobId}/artifact`, { headers: this.headers() });
    if (!res.ok || !res.body) throw new Error(`GET /v1/jobs/${jobId}/artifact → ${res.status}: ${await res.text()}`);
    const announced = res.headers.get('x-content-sha256');
    const hash = createHash('sha256');
    let bytes = 0;
    const out = createWriteStream(file);
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      hash.update(chunk);
      bytes += chunk.length;
      if (!out.write(chunk)) await once(out, 'drain');
    }
    await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
    const sha256 = hash.digest('hex');
    if (announced !== sha256) throw new Error(`artifact sha256 ${sha256} does not match the announced ${announced}`);
    return { sha256, bytes };
  }
}

// ---------------------------------------------------------------- report formatting (also used by tests)

type Json = Record<string, unknown>;
const rec = (v: unknown): Json => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : {});
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

export function formatCount(n: number | null): string {
  if (n === null) return '—';
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return String(n);
}

const pct = (v: number | null): string => (v === null ? '—' : `${(v * 100).toFixed(2)} %`);
const fixed = (v: number | null, digits: number): string => (v === null ? '—' : v.toFixed(digits));
const times = (before: number | null, after: number | null): string =>
  before !== null && after !== null && after > 0 ? `${(before / after).toFixed(2)}×` : '—';

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** One row per layer of the engine's plan: what it did and what it saved. */
export function formatPlan(report: Json): string {
  const layers = Array.isArray(report.layers) ? report.layers.map(rec) : [];
  const rows = layers.map((l) => {
    const params = rec(l.params);
    const macs = rec(l.macs);
    const ranks = Array.isArray(l.ranks) && l.ranks.length > 0 ? l.ranks.join('/') : '—';
    const shape = Array.isArray(l.weightShape) ? l.weightShape.join('×') : '';
    return [
      String(l.name ?? '?'),
      `${String(l.op ?? '')} ${shape}`.trim(),
      String(l.kind ?? ''),
      ranks,
      `${formatCount(num(params.before))} → ${formatCount(num(params.after))}`,
      `${formatCount(num(macs.before))} → ${formatCount(num(macs.after))}`,
      l.relError === null || l.relError === undefined ? '—' : fixed(num(l.relError), 3),
    ];
  });
  return table(['layer', 'op / weight', 'kind', 'ranks (out/in)', 'weights', 'MACs', '‖W−Ŵ‖/‖W‖'], rows);
}

/**
 * The paper's Table 1: original / compressed / compressed + fine-tuned × weights, MACs, top-1, latency,
 * energy. Weights and MACs come from the engine's plan, top-1 from its held-out evaluation, latency from
 * onnxruntime-node (median, interleaved), energy from the stated estimate model.
 */
export function formatTable1(report: Json): string {
  const totals = rec(report.totals);
  const params = rec(totals.params);
  const macs = rec(totals.macs);
  const accuracy = rec(report.accuracy);
  const m = rec(report.measurement);
  const t1 = rec(m.table1);
  const latency = rec(t1.latencyMs);
  const energy = rec(t1.energyMillijoulesEstimate);
  const finetuned = accuracy.finetuned !== null && accuracy.finetuned !== undefined;
  const top1 = (which: string) => num(rec(accuracy[which]).top1);
  // With calibration (engine/tuckerize/calibrate.py) the report holds the rewrite's top-1 without and with it.
  const calibration = rec(rec(report.calibration).heldout);
  const calibrated = Object.keys(calibration).length > 0;
  const compressedRow = (label: string, value: number | null) =>
    [label, formatCount(num(params.after)), formatCount(num(macs.after)), pct(value), fixed(num(latency.after), 3), fixed(num(energy.after), 4)];
  const rows: string[][] = [
    ['original', formatCount(num(params.before)), formatCount(num(macs.before)), pct(top1('original')), fixed(num(latency.before), 3), fixed(num(energy.before), 4)],
    calibrated
      ? compressedRow('compressed (rewrite only)', num(rec(calibration.withoutCalibration).top1))
      : compressedRow('compressed', top1('compressed')),
  ];
  if (calibrated) rows.push(compressedRow('compressed + calibrated', top1('compressed')));
  if (finetuned) {
    rows.push(['compressed + fine-tuned', formatCount(num(params.after)), formatCount(num(macs.after)), pct(top1('finetuned')), fixed(num(latency.after), 3), fixed(num(energy.after), 4)]);
  }
  const finalTop1 = finetuned ? top1('finetuned') : top1('compressed');
  const original = top1('original');
  rows.push([
    'ratio / change',
    times(num(params.before), num(params.after)),
    times(num(macs.before), num(macs.after)),
    original !== null && finalTop1 !== null ? `${((finalTop1 - original) * 100).toFixed(2)} pt` : '—',
    times(num(latency.before), num(latency.after)),
    times(num(energy.before), num(energy.after)),
  ]);
  const lines = [table(['model', 'weights', 'MACs', 'top-1', 'latency ms', 'energy mJ (est.)'], rows)];
  const runtime = rec(m.runtime);
  if (Object.keys(runtime).length > 0) {
    lines.push(
      `latency: onnxruntime-node ${String(runtime.version ?? '')}, CPU (${String(runtime.cpu ?? '?')}), ` +
        `${String(runtime.intraOpNumThreads ?? '?')} thread(s), batch 1, median of interleaved runs`,
    );
  }
  const est = rec(rec(m.energy).original);
  if (typeof est.statement === 'string') lines.push(`energy is an ESTIMATE, not a measurement: ${est.statement}`);
  if (accuracy.samples !== undefined) {
    lines.push(`top-1: ${String(accuracy.samples)} held-out images (${String(accuracy.split ?? 'held-out split')})`);
  }
  const kept = (Array.isArray(report.layers) ? report.layers : []).filter((l) => String(rec(l).reason ?? '').startsWith('layer selection'));
  lines.push(
    `method: ${String(report.method ?? 'improved')}` +
      (kept.length > 0 ? `; ${kept.length} layer(s) kept by layer selection (small saving, large error)` : '') +
      (calibrated ? `; calibrated on ${String(rec(report.calibration).samples)} training images (no labels)` : ''),
  );
  const search = rec(report.search);
  if (typeof search.message === 'string') {
    lines.push(`accuracy target (≤ ${String(search.maxAccuracyDrop)} points): ${search.met ? 'met' : 'NOT met'}: ${search.message}`);
  }
  const ft = rec(report.finetune);
  if (num(ft.steps) !== null) {
    lines.push(
      `fine-tuning: ${String(ft.steps)} steps (${fixed(num(ft.epochs), 2)} epochs) in ${fixed(num(ft.wallSeconds), 1)} s, ` +
        `${fixed(num(ft.imagesPerSecond), 0)} images/s`,
    );
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------- process orchestration

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

async function recreateDatabase(adminUrl: string, name: string): Promise<string> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await client.query(`CREATE DATABASE ${name}`);
  } finally {
    await client.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

interface Service {
  name: string;
  child: ChildProcess;
  exited: Promise<number | null>;
  logFile: string;
}

function startService(name: string, entry: string, env: NodeJS.ProcessEnv, logDir: string): Service {
  const logFile = path.join(logDir, `${name}.log`);
  const log = createWriteStream(logFile);
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO_ROOT, entry)], {
    cwd: REPO_ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.pipe(log, { end: false });
  child.stderr!.pipe(log, { end: false });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { name, child, exited, logFile };
}

async function stopService(service: Service): Promise<void> {
  if (service.child.exitCode !== null || service.child.signalCode !== null) return;
  service.child.kill('SIGTERM');
  const timer = setTimeout(() => service.child.kill('SIGKILL'), 20_000);
  await service.exited;
  clearTimeout(timer);
}

/** Waits for /readyz; fails at once if the API process exits first. */
async function waitReady(baseUrl: string, api: Service, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void api.exited.then(() => {
    exited = true;
  });
  for (;;) {
    if (exited) throw new Error(`the API exited during startup; see ${api.logFile}`);
    try {
      const res = await fetch(`${baseUrl}/readyz`);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`the API was not ready after ${timeoutMs} ms; see ${api.logFile}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

/** The reference net, or — before the fine-tuning helper has trained it — a zoo export without fine-tuning. */
async function chooseModel(env: DemoEnv, rawEnv: NodeJS.ProcessEnv, dataDir: string): Promise<{ file: string; job: Json; note: string }> {
  const reference = path.join(REPO_ROOT, 'assets', 'models', `${env.DEMO_MODEL}.onnx`);
  // Quick: 200 steps of 32 images (a tenth of an epoch) — enough to show the recovery, short enough for CI.
  const quick = env.DEMO_QUICK === '1';
  const steps = env.DEMO_STEPS ?? (quick ? 200 : undefined);
  if (await exists(reference)) {
    return {
      file: reference,
      job: {
        datasetId: 'builtin:fashion-mnist',
        // One epoch of distillation (plus cross-entropy on the labels) recovers most of the accuracy (the paper).
        options: {
          rule: 'vbmf',
          // Quick runs calibrate on 256 images instead of the default 1,024 (calibration time is linear in it).
          ...(quick ? { calibrationSamples: 256 } : {}),
          finetune: { distill: true, ...(steps ? { steps } : { epochs: 1 }), ...(quick ? { batchSize: 32 } : {}) },
        },
      },
      note: `${env.DEMO_MODEL} (trained reference net), EVBMF ranks, fine-tuning ${steps ? `${steps} steps` : '1 epoch'} on Fashion-MNIST`,
    };
  }
  const file = path.join(dataDir, 'resnet18-64.onnx');
  if (!(await exists(file))) {
    await execFileAsync('/usr/bin/python3', ['-c', `from tuckerize.zoo import export_zoo_model; export_zoo_model("resnet18", ${JSON.stringify(file)}, opset=13, input_size=64)`], {
      env: { PATH: rawEnv.PATH, PYTHONPATH: path.join(REPO_ROOT, 'engine') },
    });
  }
  return {
    file,
    job: { options: { rule: 'vbmf' } },
    note: `assets/models/${env.DEMO_MODEL}.onnx is missing: torchvision resnet18 (random weights, 64×64), EVBMF ranks, no fine-tuning`,
  };
}

function progressPrinter(print: (line: string) => void): (message: SseMessage) => void {
  let lastStage = '';
  let lastPercent = -100;
  return (message) => {
    if (message.event !== 'progress') return;
    const p = rec(message.data);
    const stage = String(p.stage ?? '');
    const percent = num(p.percent) ?? 0;
    if (stage === lastStage && percent - lastPercent < 5) return;
    lastStage = stage;
    lastPercent = percent;
    const detail = typeof p.message === 'string' ? `  ${p.message}` : '';
    const rate = num(p.rate);
    const eta = num(p.etaSeconds);
    const pace = rate !== null && eta !== null ? `  ${rate.toFixed(2)}/s, ~${Math.ceil(eta)} s left` : '';
    print(`  [${percent.toFixed(1).padStart(5)} %] ${stage.padEnd(9)} ${String(p.done)}/${String(p.total)}${pace}${detail}`);
  };
}

export async function runDemo(rawEnv: NodeJS.ProcessEnv, print: (line: string) => void): Promise<number> {
  const parsed = DemoEnvSchema.safeParse(rawEnv);
  if (!parsed.success) {
    throw new Error(parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  }
  const env = parsed.data;
  const dataDir = path.join(REPO_ROOT, '.data', 'demo');
  const storageDir = path.join(dataDir, 'storage');
  const logDir = path.join(dataDir, 'logs');
  await rm(storageDir, { recursive: true, force: true });
  await mkdir(storageDir, { recursive: true });
  await mkdir(logDir, { recursive: true });

  const databaseUrl = await recreateDatabase(env.DEMO_ADMIN_DATABASE_URL, 'tuckerize_demo');
  const prefix = `tuckerize-demo-${randomBytes(3).toString('hex')}`;
  const port = await freePort();
  const baseUrl = `http://127.0.0.1:${port}`;
  const serviceEnv: NodeJS.ProcessEnv = {
    PATH: rawEnv.PATH,
    HOME: rawEnv.HOME,
    DATABASE_URL: databaseUrl,
    REDIS_URL: env.REDIS_URL,
    STORAGE_DIR: storageDir,
    QUEUE_PREFIX: prefix,
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info',
    ENGINE_THREADS: '2',
  };
  print(`tuckerize demo — API on ${baseUrl}, database tuckerize_demo, storage ${path.relative(REPO_ROOT, storageDir)}`);
  print(`  logs: ${path.relative(REPO_ROOT, logDir)}/{api,worker}.log`);

  const api = startService('api', 'src/server.ts', serviceEnv, logDir);
  const worker = startService('worker', 'src/worker.ts', serviceEnv, logDir);
  try {
    await waitReady(baseUrl, api, 60_000);
    const { stdout } = await execFileAsync(process.execPath, ['--import', 'tsx', path.join(REPO_ROOT, 'src', 'cli.ts'), 'keys', 'create', '--tenant', 'demo'], {
      cwd: REPO_ROOT,
      env: serviceEnv,
    });
    const key = stdout.trim().split('\n').pop()!;
    print(`API key created for tenant "demo" (npm run cli -- keys create --tenant demo)`);
    const client = new ApiClient(baseUrl, key);

    const choice = await chooseModel(env, rawEnv, dataDir);
    print(`model: ${choice.note}`);
    const model = await client.uploadModel(choice.file);
    print(`uploaded ${path.basename(choice.file)} → model ${model.id}`);

    const job = await client.request<{ id: string; status: string }>('POST', '/v1/jobs', { modelId: model.id, ...choice.job });
    print(`job ${job.id} ${job.status}; following GET /v1/jobs/${job.id}/events`);
    const started = Date.now();
    const final = await client.followJob(job.id, progressPrinter(print));
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    if (final.status !== 'succeeded') {
      const error = rec(final.error);
      print(`job ${String(final.status)} after ${seconds} s: [${String(error.category ?? '?')}] ${String(error.message ?? '')}`);
      return 1;
    }
    print(`job succeeded in ${seconds} s`);

    const artifactFile = path.join(dataDir, `${path.basename(choice.file, '.onnx')}.compressed.onnx`);
    const artifact = await client.downloadArtifact(job.id, artifactFile);
    print(`artifact: ${path.relative(REPO_ROOT, artifactFile)}, ${formatCount(artifact.bytes)}B, sha256 ${artifact.sha256} (matches X-Content-SHA256)`);

    const report = await client.request<Json>('GET', `/v1/jobs/${job.id}/report`);
    await writeFile(path.join(dataDir, 'report.json'), JSON.stringify(report, null, 2));
    print('');
    print('Per-layer plan');
    print(formatPlan(report));
    print('');
    print('Table 1 (Kim et al. 2016 layout)');
    print(formatTable1(report));
    print('');
    print(`full report: ${path.relative(REPO_ROOT, path.join(dataDir, 'report.json'))}`);
    return 0;
  } finally {
    await stopService(worker);
    await stopService(api);
    await deleteRedisPrefix(env.REDIS_URL, prefix);
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runDemo(process.env, (line) => process.stdout.write(`${line}\n`)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`tuckerize demo: ${(err as Error).message}\n`);
      process.exitCode = 1;
    },
  );
}
