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
//   DEMO_MAX_DROP=P            accuracy-target mode: the most compressed model within P points of top-1
//                              (options.maxAccuracyDrop); the report's trade-off curve is printed
//   DEMO_EVAL_IMAGES=N         test images the demo itself scores both models on (default all 10,000;
//                              1,000 with DEMO_QUICK)
//   DEMO_ADMIN_DATABASE_URL    a database to connect to for CREATE DATABASE (default postgres on 127.0.0.1)
//   REDIS_URL                  (default redis://127.0.0.1:6379)
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { access, mkdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { z } from 'zod';
import { deleteRedisPrefix } from './queue/redis-keys.js';
import { ApiClient, type SseMessage } from './demo/client.js';
import { evaluateTop1, readTestSplit } from './demo/evaluate.js';
import { formatCount, formatPlan, formatTable1, num, rec, type Json } from './demo/report-format.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const execFileAsync = promisify(execFile);

const DemoEnvSchema = z.object({
  DEMO_QUICK: z.enum(['0', '1', '']).default(''),
  DEMO_MODEL: z.enum(['fmnist-vgg', 'fmnist-resnet']).default('fmnist-vgg'),
  DEMO_STEPS: z.coerce.number().int().positive().optional(),
  DEMO_EVAL_IMAGES: z.coerce.number().int().positive().optional(),
  // A MACs budget (after/before, e.g. 0.25 for exactly 4× fewer): the budget rule instead of EVBMF's own ranks.
  DEMO_TARGET_MACS: z.coerce.number().gt(0).lte(1).optional(),
  DEMO_MAX_DROP: z.coerce.number().gt(0).lte(100).optional(),
  DEMO_ADMIN_DATABASE_URL: z.string().default('postgresql://postgres@127.0.0.1:5432/postgres'),
  REDIS_URL: z.string().default('redis://127.0.0.1:6379'),
});
type DemoEnv = z.infer<typeof DemoEnvSchema>;
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
async function chooseModel(env: DemoEnv, rawEnv: NodeJS.ProcessEnv, dataDir: string): Promise<{ file: string; job: Json; note: string; fashionMnist: boolean }> {
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
          ...(env.DEMO_TARGET_MACS ? { rule: 'budget', targetMacs: env.DEMO_TARGET_MACS } : { rule: 'vbmf' }),
          ...(env.DEMO_MAX_DROP ? { maxAccuracyDrop: env.DEMO_MAX_DROP } : {}),
          // Quick runs calibrate on 256 images instead of the default 1,024 (calibration time is linear in it).
          ...(quick ? { calibrationSamples: 256 } : {}),
          finetune: { distill: true, ...(steps ? { steps } : { epochs: 1 }), ...(quick ? { batchSize: 32 } : {}) },
        },
      },
      note: `${env.DEMO_MODEL} (trained reference net), ${env.DEMO_TARGET_MACS ? `budget rule at ${env.DEMO_TARGET_MACS} of the MACs` : env.DEMO_MAX_DROP ? `the most compressed within ${env.DEMO_MAX_DROP} points of top-1` : 'EVBMF ranks'}, fine-tuning ${steps ? `${steps} steps` : '1 epoch'} on Fashion-MNIST`,
      fashionMnist: true,
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
    fashionMnist: false,
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
    // Accuracy-target mode: each measured candidate is news, however little the percentage moves.
    const candidate = typeof p.message === 'string' && /^candidate \d+: .* (within|outside) the limit$/.test(p.message);
    if (stage === lastStage && percent - lastPercent < 5 && !candidate) return;
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
    // The job's cost is checked against the per-job limits when it is created: with the analysis done, from
    // the model's own MACs rather than the bound the API must assume for an unanalysed upload.
    const analysed = await client.waitForAnalysis(model.id);
    print(`analysis ${analysed.analysis}: ${analysed.macs === null ? 'MACs unknown' : `${formatCount(analysed.macs)} MACs`}, `
      + `${analysed.params === null ? 'weights unknown' : `${formatCount(analysed.params)} weights`}`);

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

    if (choice.fashionMnist) {
      // The client's own check: both models scored here with onnxruntime-node, not by the engine.
      const split = await readTestSplit(undefined, env.DEMO_EVAL_IMAGES ?? (env.DEMO_QUICK === '1' ? 1000 : undefined));
      const original = await evaluateTop1(choice.file, split);
      const compressed = await evaluateTop1(artifactFile, split);
      const delta = (100 * (compressed.top1 - original.top1)).toFixed(2);
      print(
        `top-1 on ${split.count.toLocaleString('en-US')} Fashion-MNIST test images, measured by this client with onnxruntime-node: ` +
          `original ${(100 * original.top1).toFixed(2)} %, compressed ${(100 * compressed.top1).toFixed(2)} % (${delta} points)`,
      );
    }

    const report = await client.request<Json>('GET', `/v1/jobs/${job.id}/report`);
    await writeFile(path.join(dataDir, 'report.json'), JSON.stringify(report, null, 2));
    const page = path.join(dataDir, 'report.html');
    await writeFile(page, await client.text(`/v1/jobs/${job.id}/report.html`));
    print('');
    print('Per-layer plan');
    print(formatPlan(report));
    print('');
    print('Table 1 (Kim et al. 2016 layout)');
    print(formatTable1(report));
    print('');
    print(`full report: ${path.relative(REPO_ROOT, path.join(dataDir, 'report.json'))}`);
    print(`report page: ${baseUrl}/v1/jobs/${job.id}/report.html while the service runs (same API key); saved to ${path.relative(REPO_ROOT, page)}`);
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
