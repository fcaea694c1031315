// Prometheus metrics for one app instance (its own Registry). Job series are read from PostgreSQL at scrape
// time, because jobs finish in worker processes the API cannot see and the database is the source of truth:
// every API replica reports the same totals (aggregate them with max(), not sum()). Queue gauges come from
// BullMQ at scrape time; HTTP durations are observed in-process by the instance that served the request.
import type { FastifyInstance } from 'fastify';
import type { Queue } from 'bullmq';
import { Prisma } from '@prisma/client';
import client, { Counter, Gauge, Histogram, Registry, type Aggregator, type MetricValueWithName } from 'prom-client';
import type { PrismaClient } from '../db/client.js';

/** Seconds; a compression job takes seconds (tiny nets) to hours (VGG-16 with fine-tuning). */
export const JOB_DURATION_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400];
export const STAGE_DURATION_BUCKETS = [0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 3600];
export const HTTP_DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** BullMQ states that hold jobs not yet finished (a paused queue keeps its jobs in `waiting`). */
export const QUEUE_STATES = ['waiting', 'prioritized', 'delayed', 'active', 'waiting-children'] as const;

export interface MetricsOptions {
  prisma: PrismaClient;
  /** The compression queue; without it the queue gauges are not registered (e.g. in a worker). */
  queue?: Queue;
  /** Node process metrics (CPU, memory, event loop) for this registry. */
  processMetrics?: boolean;
  /** A scrape gives up on a dependency after this long and reports it down instead of hanging. */
  collectTimeoutMs?: number;
  /** Told about every failed collection; the scrape itself still succeeds. */
  onCollectError?: (source: 'postgres' | 'redis', err: unknown) => void;
  now?: () => number;
}

export interface ServiceMetrics {
  registry: Registry;
  /** Observes one served HTTP request; `route` is the route pattern, never the raw URL. */
  observeHttp(method: string, route: string, statusCode: number, seconds: number): void;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

interface BucketRow {
  label: string;
  count: number;
  sum: number;
  /** cumulative counts, one per bucket bound */
  buckets: number[];
}

/**
 * A histogram whose buckets are counted by PostgreSQL at scrape time. prom-client has no API to load
 * bucket counts, so this subclass renders itself in the format prom-client's Histogram exports.
 */
class SqlHistogram extends Histogram<string> {
  constructor(
    private readonly config: { name: string; help: string; labelName: string; buckets: number[]; registry: Registry },
    private readonly load: () => Promise<BucketRow[] | null>,
  ) {
    super({ name: config.name, help: config.help, labelNames: [config.labelName], buckets: config.buckets, registers: [config.registry] });
  }

  /**
   * The registry renders a metric from getForPromString() (and get() builds on it), so answering here
   * serves both the text and the JSON exposition. The base class does not declare it in its types.
   */
  async getForPromString(): Promise<{ name: string; help: string; type: string; values: MetricValueWithName<string>[]; aggregator: Aggregator }> {
    const rows = (await this.load()) ?? [];
    const values: MetricValueWithName<string>[] = [];
    for (const row of rows) {
      const labels = { [this.config.labelName]: row.label };
      this.config.buckets.forEach((bound, i) => {
        values.push({ metricName: `${this.config.name}_bucket`, labels: { le: bound, ...labels }, value: row.buckets[i] ?? 0 });
      });
      values.push({ metricName: `${this.config.name}_bucket`, labels: { le: '+Inf', ...labels }, value: row.count });
      values.push({ metricName: `${this.config.name}_sum`, labels, value: row.sum });
      values.push({ metricName: `${this.config.name}_count`, labels, value: row.count });
    }
    return { name: this.config.name, help: this.config.help, type: 'histogram', values, aggregator: 'sum' };
  }
}

/** `SELECT label, count, sum, b0..bn` over (label, seconds) rows, cumulative by construction. */
function bucketQuery(source: Prisma.Sql, buckets: number[]): Prisma.Sql {
  const counts = buckets.map((b, i) => Prisma.sql`count(*) FILTER (WHERE seconds <= ${b}::float8)::int AS ${Prisma.raw(`b${i}`)}`);
  return Prisma.sql`SELECT label, count(*)::int AS count, coalesce(sum(seconds), 0)::float8 AS sum, ${Prisma.join(counts)}
    FROM (${source}) AS t GROUP BY label ORDER BY label`;
}

function toBucketRows(rows: Record<string, unknown>[], buckets: number[]): BucketRow[] {
  return rows.map((r) => ({
    label: String(r.label),
    count: Number(r.count),
    sum: Number(r.sum),
    buckets: buckets.map((_, i) => Number(r[`b${i}`])),
  }));
}

interface Snapshot {
  /** null when PostgreSQL could not be read */
  db: {
    created: number;
    finished: { status: string; reason: string | null; n: number }[];
    durations: BucketRow[];
    stages: BucketRow[];
  } | null;
  /** null when Redis could not be read, or no queue is attached */
  queue: { counts: Record<string, number>; oldestWaitingTimestamp: number | null } | null;
}

export function createServiceMetrics(options: MetricsOptions): ServiceMetrics {
  const { prisma, queue } = options;
  const timeoutMs = options.collectTimeoutMs ?? 2000;
  const now = options.now ?? Date.now;
  const registry = new Registry();
  if (options.processMetrics) client.collectDefaultMetrics({ register: registry });

  const readDatabase = async (): Promise<NonNullable<Snapshot['db']>> => {
    const durations = Prisma.sql`SELECT status::text AS label, extract(epoch FROM ("finishedAt" - "startedAt"))::float8 AS seconds
      FROM "Job" WHERE "finishedAt" IS NOT NULL AND "startedAt" IS NOT NULL`;
    // The worker stores the engine's report.timings as Metric rows named stage_seconds_<stage>.
    const stages = Prisma.sql`SELECT substr(name, 15) AS label, value AS seconds FROM "Metric" WHERE name LIKE 'stage\\_seconds\\_%'`;
    const [created, finished, durationRows, stageRows] = await Promise.all([
      prisma.$queryRaw<{ n: number }[]>`SELECT count(*)::int AS n FROM "Job"`,
      prisma.$queryRaw<{ status: string; reason: string | null; n: number }[]>`
        SELECT status::text AS status, "errorCategory" AS reason, count(*)::int AS n FROM "Job"
        WHERE status IN ('succeeded', 'failed', 'canceled') GROUP BY 1, 2`,
      prisma.$queryRaw<Record<string, unknown>[]>(bucketQuery(durations, JOB_DURATION_BUCKETS)),
      prisma.$queryRaw<Record<string, unknown>[]>(bucketQuery(stages, STAGE_DURATION_BUCKETS)),
    ]);
    return {
      created: created[0]?.n ?? 0,
      finished,
      durations: toBucketRows(durationRows, JOB_DURATION_BUCKETS),
      stages: toBucketRows(stageRows, STAGE_DURATION_BUCKETS),
    };
  };

  const readQueue = async (q: Queue): Promise<NonNullable<Snapshot['queue']>> => {
    // BullMQ pushes new jobs on the left of the wait list; asc=true reads from the oldest end.
    const [counts, oldest] = await Promise.all([q.getJobCounts(...QUEUE_STATES), q.getJobs(['waiting'], 0, 0, true)]);
    return { counts, oldestWaitingTimestamp: oldest[0]?.timestamp ?? null };
  };

  /** A failed or slow dependency yields null (its series are left out) instead of failing the scrape. */
  const attempt = async <T>(source: 'postgres' | 'redis', read: () => Promise<T>): Promise<T | null> => {
    try {
      return await withTimeout(read(), timeoutMs, source);
    } catch (err) {
      options.onCollectError?.(source, err);
      return null;
    }
  };

  // The registry calls every metric's collect() in the same tick, so they all share one snapshot per
  // scrape: one round of queries, and series that agree with each other.
  let pending: Promise<Snapshot> | null = null;
  const snapshot = (): Promise<Snapshot> => {
    pending ??= (async () => ({
      db: await attempt('postgres', readDatabase),
      queue: queue ? await attempt('redis', () => readQueue(queue)) : null,
    }))().finally(() => {
      pending = null;
    });
    return pending;
  };

  new Gauge({
    name: 'metrics_source_up',
    help: 'Whether this scrape could read the source (1) or not (0); series from a down source are absent (or 0 when they have no labels)',
    labelNames: ['source'],
    registers: [registry],
    async collect() {
      const snap = await snapshot();
      this.reset();
      this.set({ source: 'postgres' }, snap.db ? 1 : 0);
      if (queue) this.set({ source: 'redis' }, snap.queue ? 1 : 0);
    },
  });

  new Counter({
    name: 'jobs_created_total',
    help: 'Compression jobs created (all tenants), from the database',
    registers: [registry],
    async collect() {
      const { db } = await snapshot();
      this.reset();
      if (db) this.inc(db.created);
    },
  });

  new Counter({
    name: 'jobs_finished_total',
    help: 'Compression jobs that reached a final status, by status and reason (the error category; "none" on success)',
    labelNames: ['status', 'reason'],
    registers: [registry],
    async collect() {
      const { db } = await snapshot();
      this.reset();
      for (const row of db?.finished ?? []) {
        const reason = row.reason ?? (row.status === 'succeeded' ? 'none' : 'unknown');
        this.inc({ status: row.status, reason }, row.n);
      }
    },
  });

  new SqlHistogram(
    {
      name: 'job_duration_seconds',
      help: 'Wall time of finished jobs from start to finish, by final status',
      labelName: 'status',
      buckets: JOB_DURATION_BUCKETS,
      registry,
    },
    async () => (await snapshot()).db?.durations ?? null,
  );

  new SqlHistogram(
    {
      name: 'job_stage_duration_seconds',
      help: 'Time spent in each engine stage (analyze, plan, rewrite, finetune, evaluate, write) of succeeded jobs',
      labelName: 'stage',
      buckets: STAGE_DURATION_BUCKETS,
      registry,
    },
    async () => (await snapshot()).db?.stages ?? null,
  );

  const http = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'HTTP requests served by this instance, by method, route pattern and status code',
    labelNames: ['method', 'route', 'status_code'],
    buckets: HTTP_DURATION_BUCKETS,
    registers: [registry],
  });

  if (queue) {
    new Gauge({
      name: 'queue_depth',
      help: 'Jobs in the compression queue by BullMQ state',
      labelNames: ['state'],
      registers: [registry],
      async collect() {
        const snap = await snapshot();
        this.reset();
        if (snap.queue) for (const state of QUEUE_STATES) this.set({ state }, snap.queue.counts[state] ?? 0);
      },
    });

    new Gauge({
      name: 'queue_oldest_waiting_age_seconds',
      help: 'Age of the oldest job waiting for a worker (0 when none waits)',
      registers: [registry],
      async collect() {
        const snap = await snapshot();
        this.reset();
        if (!snap.queue) return;
        const ts = snap.queue.oldestWaitingTimestamp;
        this.set(ts === null ? 0 : Math.max(0, (now() - ts) / 1000));
      },
    });

    new Gauge({
      name: 'workers_busy',
      help: 'Worker slots running a job right now (BullMQ active jobs)',
      registers: [registry],
      async collect() {
        const snap = await snapshot();
        this.reset();
        if (snap.queue) this.set(snap.queue.counts.active ?? 0);
      },
    });
  }

  return {
    registry,
    observeHttp(method, route, statusCode, seconds) {
      http.observe({ method, route, status_code: String(statusCode) }, seconds);
    },
  };
}

/**
 * Observes every response of `app` in http_request_duration_seconds. Requests that matched no route are
 * labelled "(unmatched)" so scanners probing random URLs cannot blow up the label set.
 */
export function instrumentHttp(app: FastifyInstance, metrics: ServiceMetrics): void {
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? '(unmatched)';
    metrics.observeHttp(request.method, route, reply.statusCode, reply.elapsedTime / 1000);
  });
}
