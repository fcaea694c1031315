// Service configuration: read from the environment once, validated with zod. Nothing else reads process.env.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** When compiled, this file lives in dist/src; the repository root is one level further up. */
const defaultRepoRoot = path.basename(repoRoot) === 'dist' ? path.dirname(repoRoot) : repoRoot;

const MB = 1024 * 1024;

const intFromEnv = (fallback: number, min: number) => z.coerce.number().int().min(min).default(fallback);
const boolFromEnv = z
  .enum(['true', 'false'], { error: 'must be true or false' })
  .default('false')
  .transform((v) => v === 'true');

const configSchema = z.object({
  PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  HOST: z.string().min(1).default('0.0.0.0'),
  DATABASE_URL: z
    .string({ error: 'required, e.g. postgresql://postgres@127.0.0.1:5432/tuckerize' })
    .regex(/^postgres(ql)?:\/\//, 'must be a postgresql:// URL'),
  REDIS_URL: z
    .string()
    .regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL')
    .default('redis://127.0.0.1:6379'),
  STORAGE_DIR: z.string().min(1).default('./.data/storage'),
  STORAGE_URL: z
    .string()
    .regex(/^(file:\/\/\/.|s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/.*)?$)/, 'must be file:///abs/path or s3://bucket[/prefix]')
    .optional(),
  WORK_DIR: z.string().min(1).optional(),
  S3_ENDPOINT: z.url({ error: 'must be a URL, e.g. http://minio:9000' }).optional(),
  S3_FORCE_PATH_STYLE: boolFromEnv,
  S3_PRESIGN_DOWNLOADS: boolFromEnv,
  S3_PRESIGN_EXPIRES_SECONDS: intFromEnv(300, 1),
  AWS_REGION: z.string().min(1).default('us-east-1'),
  CHECKPOINT_SYNC_MS: intFromEnv(60_000, 100),
  // 0: any free port (development, several workers on one host); the images set 9464, what deploy/prometheus.yml scrapes.
  WORKER_METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(0),
  WEBHOOK_ALLOW_PRIVATE: boolFromEnv,
  WEBHOOK_TIMEOUT_MS: intFromEnv(10_000, 100),
  WEBHOOK_ATTEMPTS: intFromEnv(8, 1),
  WEBHOOK_BACKOFF_MS: intFromEnv(60_000, 1),
  ENGINE_PYTHON: z.string().min(1).default('/usr/bin/python3'),
  ENGINE_DIR: z.string().min(1).default(path.join(defaultRepoRoot, 'engine')),
  WORKER_CONCURRENCY: intFromEnv(1, 1),
  JOB_TIMEOUT_MS: intFromEnv(2 * 60 * 60 * 1000, 1000),
  WORKER_LOCK_DURATION_MS: intFromEnv(30_000, 1000),
  WORKER_STALLED_INTERVAL_MS: intFromEnv(30_000, 1000),
  MAX_MODEL_BYTES: intFromEnv(600 * MB, 1),
  MAX_DATASET_BYTES: intFromEnv(1024 * MB, 1),
  QUEUE_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_.:-]+$/, 'may contain letters, digits and _ . : - only')
    .default('tuckerize'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  ADMIN_KEY: z.string().min(16, 'must be at least 16 characters').optional(),
  RATE_LIMIT_PER_MINUTE: intFromEnv(600, 1),
  ORT_THREADS: intFromEnv(1, 1),
  // Upload shape inference: largest initializer, input or activation (at batch 1) a model may have.
  ONNX_MAX_TENSOR_ELEMENTS: intFromEnv(200_000_000, 1),
  ENGINE_THREADS: intFromEnv(2, 1),
  // Address-space limit (RLIMIT_AS) of every engine process; 0 turns it off. See docs/worker.md.
  ENGINE_MEMORY_LIMIT_MB: intFromEnv(12_288, 0),
  // Tenant isolation (issue 12): see docs/security.md for what each limit protects.
  RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE: intFromEnv(120, 1),
  AUTH_CACHE_TTL_MS: intFromEnv(10_000, 0),
  HTTP_HEADERS_TIMEOUT_MS: intFromEnv(10_000, 1000),
  HTTP_REQUEST_TIMEOUT_MS: intFromEnv(10 * 60_000, 1000),
  UPLOAD_IDLE_TIMEOUT_MS: intFromEnv(30_000, 100),
  SSE_MAX_STREAMS_PER_TENANT: intFromEnv(50, 1),
  JOB_MAX_MEMORY_MB: intFromEnv(8192, 64),
  JOB_MAX_COMPUTE_SECONDS: intFromEnv(2 * 3600, 1),
  ENGINE_MACS_PER_SECOND: intFromEnv(3_900_000_000, 1),
  TENANT_MAX_ACTIVE_JOBS: intFromEnv(20, 1),
  TENANT_MAX_RUNNING_JOBS: intFromEnv(1, 1),
  TENANT_MAX_COMPUTE_SECONDS_PER_HOUR: intFromEnv(4 * 3600, 1),
});

export interface Config {
  port: number;
  host: string;
  databaseUrl: string;
  redisUrl: string;
  /** absolute path; the file store's root (STORAGE_URL file:///… or STORAGE_DIR) */
  storageDir: string;
  storage: StorageConfig;
  /** absolute path; local scratch for job directories and the S3 store's cache (WORK_DIR, default storageDir) */
  workDir: string;
  /** how often a running job's engine checkpoints are copied to the store */
  checkpointSyncMs: number;
  /** the worker process serves /metrics on this port (0: any free port) */
  workerMetricsPort: number;
  webhooks: WebhookConfig;
  enginePython: string;
  /** absolute path; PYTHONPATH for the engine */
  engineDir: string;
  workerConcurrency: number;
  jobTimeoutMs: number;
  /** BullMQ lock of a running job; a worker that dies loses it after this long and the job is handed on. */
  workerLockDurationMs: number;
  /** How often BullMQ looks for jobs whose lock expired (stalled: their worker died). */
  workerStalledIntervalMs: number;
  maxModelBytes: number;
  maxDatasetBytes: number;
  queuePrefix: string;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  adminKey: string | undefined;
  rateLimitPerMinute: number;
  ortThreads: number;
  /** elements of the largest tensor (initializer, input, activation at batch 1) an uploaded model may have */
  onnxMaxTensorElements: number;
  engineThreads: number;
  /** RLIMIT_AS of each engine process in MiB (prlimit --as); null: no limit */
  engineMemoryLimitMb: number | null;
  /** per client address, for requests without an API key this process's last database read found valid */
  rateLimitUnauthenticatedPerMinute: number;
  /** how long a verified API key is trusted without a database read (a revocation takes effect within it) */
  authCacheTtlMs: number;
  /** a request's headers must arrive within this; the whole request (body included) within httpRequestTimeoutMs */
  httpHeadersTimeoutMs: number;
  httpRequestTimeoutMs: number;
  /** an upload that sends no byte for this long is cut with 408 and its temp file removed */
  uploadIdleTimeoutMs: number;
  /** open GET /v1/jobs/:id/events streams per tenant and API process */
  sseMaxStreamsPerTenant: number;
  /** per-job limits checked on the resource estimate before a job is queued */
  jobMaxMemoryMb: number;
  jobMaxComputeSeconds: number;
  /** the engine's measured training throughput, multiply-accumulates per second (see docs/security.md) */
  engineMacsPerSecond: number;
  /** per-tenant quotas: queued + running jobs, and estimated compute seconds of the jobs created in the last hour */
  tenantMaxActiveJobs: number;
  tenantMaxComputeSecondsPerHour: number;
  /** a tenant's jobs runnable at once (waiting or running); the rest wait their turn (src/queue/fair.ts) */
  tenantMaxRunningJobs: number;
}

export type StorageConfig =
  | { kind: 'file'; dir: string }
  | {
      kind: 's3';
      bucket: string;
      /** '' or ending in '/' */
      prefix: string;
      endpoint: string | undefined;
      region: string;
      forcePathStyle: boolean;
      presignDownloads: boolean;
      presignExpiresSeconds: number;
    };

export interface WebhookConfig {
  /** deliver to loopback/private/link-local addresses (local development and tests only) */
  allowPrivate: boolean;
  timeoutMs: number;
  attempts: number;
  /** first retry delay; each further one doubles */
  backoffMs: number;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Empty strings count as unset, so `FOO=` in an env file falls back to the default instead of failing. */
function withoutEmpty(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) {
    if (value !== undefined && value !== '') out[key] = value;
  }
  return out;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = configSchema.safeParse(withoutEmpty(env));
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
    throw new ConfigError(`invalid configuration: ${problems.join('; ')}`);
  }
  const e = parsed.data;
  const storage = storageFrom(e);
  const storageDir = storage.kind === 'file' ? storage.dir : path.resolve(e.STORAGE_DIR);
  return {
    port: e.PORT,
    host: e.HOST,
    databaseUrl: e.DATABASE_URL,
    redisUrl: e.REDIS_URL,
    storageDir,
    storage,
    workDir: e.WORK_DIR ? path.resolve(e.WORK_DIR) : storageDir,
    checkpointSyncMs: e.CHECKPOINT_SYNC_MS,
    workerMetricsPort: e.WORKER_METRICS_PORT,
    webhooks: {
      allowPrivate: e.WEBHOOK_ALLOW_PRIVATE,
      timeoutMs: e.WEBHOOK_TIMEOUT_MS,
      attempts: e.WEBHOOK_ATTEMPTS,
      backoffMs: e.WEBHOOK_BACKOFF_MS,
    },
    enginePython: e.ENGINE_PYTHON,
    engineDir: path.resolve(e.ENGINE_DIR),
    workerConcurrency: e.WORKER_CONCURRENCY,
    jobTimeoutMs: e.JOB_TIMEOUT_MS,
    workerLockDurationMs: e.WORKER_LOCK_DURATION_MS,
    workerStalledIntervalMs: e.WORKER_STALLED_INTERVAL_MS,
    maxModelBytes: e.MAX_MODEL_BYTES,
    maxDatasetBytes: e.MAX_DATASET_BYTES,
    queuePrefix: e.QUEUE_PREFIX,
    logLevel: e.LOG_LEVEL,
    adminKey: e.ADMIN_KEY,
    rateLimitPerMinute: e.RATE_LIMIT_PER_MINUTE,
    ortThreads: e.ORT_THREADS,
    onnxMaxTensorElements: e.ONNX_MAX_TENSOR_ELEMENTS,
    engineThreads: e.ENGINE_THREADS,
    engineMemoryLimitMb: e.ENGINE_MEMORY_LIMIT_MB === 0 ? null : e.ENGINE_MEMORY_LIMIT_MB,
    rateLimitUnauthenticatedPerMinute: e.RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE,
    authCacheTtlMs: e.AUTH_CACHE_TTL_MS,
    httpHeadersTimeoutMs: e.HTTP_HEADERS_TIMEOUT_MS,
    httpRequestTimeoutMs: e.HTTP_REQUEST_TIMEOUT_MS,
    uploadIdleTimeoutMs: e.UPLOAD_IDLE_TIMEOUT_MS,
    sseMaxStreamsPerTenant: e.SSE_MAX_STREAMS_PER_TENANT,
    jobMaxMemoryMb: e.JOB_MAX_MEMORY_MB,
    jobMaxComputeSeconds: e.JOB_MAX_COMPUTE_SECONDS,
    engineMacsPerSecond: e.ENGINE_MACS_PER_SECOND,
    tenantMaxActiveJobs: e.TENANT_MAX_ACTIVE_JOBS,
    tenantMaxRunningJobs: e.TENANT_MAX_RUNNING_JOBS,
    tenantMaxComputeSecondsPerHour: e.TENANT_MAX_COMPUTE_SECONDS_PER_HOUR,
  };
}

function storageFrom(e: z.infer<typeof configSchema>): StorageConfig {
  const url = e.STORAGE_URL;
  if (!url) return { kind: 'file', dir: path.resolve(e.STORAGE_DIR) };
  if (url.startsWith('file://')) return { kind: 'file', dir: path.resolve(fileURLToPath(url)) };
  const [bucket, ...rest] = url.slice('s3://'.length).split('/');
  const prefix = rest.join('/').replace(/^\/+|\/+$/g, '');
  return {
    kind: 's3',
    bucket: bucket!,
    prefix: prefix ? `${prefix}/` : '',
    endpoint: e.S3_ENDPOINT,
    region: e.AWS_REGION,
    forcePathStyle: e.S3_FORCE_PATH_STYLE,
    presignDownloads: e.S3_PRESIGN_DOWNLOADS,
    presignExpiresSeconds: e.S3_PRESIGN_EXPIRES_SECONDS,
  };
}
