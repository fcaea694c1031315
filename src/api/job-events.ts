// Live job events for SSE clients. One Redis subscription per API process, on the channel the job state
// machine publishes every transition and progress update to (`${prefix}:job-events`, src/jobs/state.ts),
// fanned out in memory to the streams following each job: an open stream costs no database query and no
// Redis command. The subscriber connection is opened on the first follower; after it reconnects (Redis
// restarted, messages may have been lost) every follower is told to re-read its job once.
// The hub also counts open streams per tenant, so one tenant cannot hold an unbounded number of them.
import type { Job } from '@prisma/client';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Redis } from 'ioredis';
import type { ServerResponse } from 'node:http';
import type { PrismaClient } from '../db/client.js';
import { isTerminal, jobEventsChannel, type JobEventMessage } from '../jobs/state.js';
import { jobView, type JobView } from '../jobs/view.js';
import { ListenersByJob } from '../queue/listeners.js';
import { ApiError, NotFoundError } from './errors.js';
import { StageRateTracker } from './progress-rate.js';

export type JobEvent = { kind: 'message'; message: JobEventMessage } | { kind: 'resync' };
export type JobEventListener = (event: JobEvent) => void;

/** How long a client refused for too many streams is asked to wait. */
const STREAM_RETRY_AFTER_S = 30;
/** How long a new stream waits for the subscription before it starts without live events. */
const SUBSCRIBE_WAIT_MS = 3000;
const HEARTBEAT_MS = 15_000;

export class TooManyStreamsError extends ApiError {
  readonly retryAfterSeconds = STREAM_RETRY_AFTER_S;
  constructor(max: number) {
    super(
      429,
      'too-many-streams',
      'Too many event streams',
      `this tenant already holds ${max} open event streams, the limit (SSE_MAX_STREAMS_PER_TENANT); close one, or poll GET /v1/jobs/:id instead`,
    );
  }
}

export class JobEventHub {
  private subscriber: Redis | undefined;
  private subscribed: Promise<unknown> | undefined;
  private readonly listeners = new ListenersByJob<JobEventListener>();
  private readonly everyJob = new Set<JobEventListener>();
  private readonly streamsByTenant = new Map<string, number>();
  private readonly channel: string;

  constructor(
    private readonly redisUrl: string,
    prefix: string,
    private readonly maxStreamsPerTenant: number,
    private readonly onError: (err: Error) => void = () => undefined,
  ) {
    this.channel = jobEventsChannel(prefix);
  }

  /** Reserves one of the tenant's stream slots; throws TooManyStreamsError when none is left. */
  openStream(tenantId: string): () => void {
    const open = this.streamsByTenant.get(tenantId) ?? 0;
    if (open >= this.maxStreamsPerTenant) throw new TooManyStreamsError(this.maxStreamsPerTenant);
    this.streamsByTenant.set(tenantId, open + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.streamsByTenant.get(tenantId) ?? 1) - 1;
      if (left > 0) this.streamsByTenant.set(tenantId, left);
      else this.streamsByTenant.delete(tenantId);
    };
  }

  openStreams(tenantId: string): number {
    return this.streamsByTenant.get(tenantId) ?? 0;
  }

  subscribe(jobId: string, listener: JobEventListener): () => void {
    this.ensureStarted();
    return this.listeners.add(jobId, listener);
  }

  /** Every message of every job (and every resync); starts the subscription. Returns the unsubscribe. */
  subscribeAll(listener: JobEventListener): () => void {
    this.ensureStarted();
    this.everyJob.add(listener);
    return () => this.everyJob.delete(listener);
  }

  /** Resolves once the subscription is active, so messages published afterwards reach subscribers. */
  async ready(): Promise<void> {
    this.ensureStarted();
    await this.subscribed;
  }

  private ensureStarted(): void {
    if (this.subscriber) return;
    // A connection in subscriber mode runs no other commands; ioredis resubscribes after reconnecting.
    const subscriber = new Redis(this.redisUrl, { maxRetriesPerRequest: null, lazyConnect: true });
    subscriber.on('error', (err: Error) => this.onError(err));
    subscriber.on('message', (channel: string, payload: string) => {
      if (channel !== this.channel) return;
      const message = parseMessage(payload);
      if (!message) return;
      for (const listener of this.listeners.of(message.jobId)) listener({ kind: 'message', message });
      for (const listener of this.everyJob) listener({ kind: 'message', message });
    });
    let connectedBefore = false;
    subscriber.on('ready', () => {
      if (connectedBefore) this.resyncAll();
      connectedBefore = true;
    });
    this.subscriber = subscriber;
    this.subscribed = subscriber.subscribe(this.channel);
    // A failed first subscribe is retried by ioredis; readers of `subscribed` see the failure once.
    this.subscribed.catch((err: Error) => this.onError(err));
  }

  private resyncAll(): void {
    for (const listener of [...this.listeners.all(), ...this.everyJob]) listener({ kind: 'resync' });
  }

  async close(): Promise<void> {
    this.listeners.clear();
    this.everyJob.clear();
    this.streamsByTenant.clear();
    const subscriber = this.subscriber;
    this.subscriber = undefined;
    this.subscribed = undefined;
    // quit() waits for a reply that a client still (re)connecting would never get.
    if (subscriber?.status === 'ready') await subscriber.quit().catch(() => subscriber.disconnect());
    else subscriber?.disconnect();
  }
}

function parseMessage(payload: string): JobEventMessage | undefined {
  try {
    const message = JSON.parse(payload) as Partial<JobEventMessage>;
    if (typeof message.jobId !== 'string' || (message.type !== 'status' && message.type !== 'progress')) return undefined;
    return message as JobEventMessage;
  } catch {
    return undefined;
  }
}

export interface FollowJob {
  hub: JobEventHub;
  prisma: PrismaClient;
  tenantId: string;
  jobId: string;
  /** the app's open streams: each registers its `end` so shutdown can close them */
  openStreams: Set<() => void>;
}

/**
 * GET /v1/jobs/:id/events: one database read when the stream opens (and after a Redis reconnect), then
 * whatever the job-events channel carries for this job. `status` events carry the job as GET /v1/jobs/:id
 * shows it, `progress` events the worker's figures; the stream ends after the terminal status.
 */
export async function streamJobEvents(request: FastifyRequest, reply: FastifyReply, follow: FollowJob): Promise<void> {
  const { hub, prisma, tenantId, jobId, openStreams } = follow;
  const readJob = async (): Promise<Job> => {
    const job = await prisma.job.findFirst({ where: { id: jobId, tenantId } });
    if (!job) throw new NotFoundError(`job ${jobId} does not exist for this API key's tenant`);
    return job;
  };
  await readJob();
  let release: () => void;
  try {
    release = hub.openStream(tenantId);
  } catch (err) {
    if (err instanceof TooManyStreamsError) reply.header('retry-after', String(err.retryAfterSeconds));
    throw err;
  }
  // Subscribe before reading the snapshot, so nothing that happens in between is missed.
  const pending: JobEvent[] = [];
  let deliver: JobEventListener = (event) => pending.push(event);
  const unsubscribe = hub.subscribe(jobId, (event) => deliver(event));
  let job: Job;
  try {
    await waitAtMost(hub.ready(), SUBSCRIBE_WAIT_MS).catch((err: Error) =>
      request.log.warn({ jobId, err: err.message }, 'live job events unavailable; the stream starts with the stored state'),
    );
    job = await readJob();
  } catch (err) {
    unsubscribe();
    release();
    throw err;
  }

  reply.hijack();
  const raw: ServerResponse = reply.raw;
  raw.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-request-id': String(request.id),
  });
  let sequence = 0;
  const send = (event: string, data: unknown) => {
    sequence += 1;
    raw.write(`id: ${sequence}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  };
  let ended = false;
  const heartbeat = setInterval(() => raw.write(': keep-alive\n\n'), HEARTBEAT_MS);
  const end = () => {
    if (ended) return;
    ended = true;
    clearInterval(heartbeat);
    unsubscribe();
    release();
    openStreams.delete(end);
    raw.end();
  };
  openStreams.add(end);
  request.raw.on('close', end);

  // Each progress event carries the rate and ETA of its stage, measured over this stream.
  const rates = new StageRateTracker();
  let last: JobView = jobView(job);
  const showStatus = (view: JobView) => {
    if (view.status !== last.status || view.stage !== last.stage || view.progress !== last.progress) {
      last = view;
      send('status', view);
    }
    if (isTerminal(view.status)) end();
  };
  send('status', last);
  if (isTerminal(job.status)) {
    end();
    return;
  }
  deliver = (event) => {
    if (ended) return;
    if (event.kind === 'resync') {
      // Messages may have been lost while Redis was away: the database tells where the job is.
      readJob().then((current) => !ended && showStatus(jobView(current))).catch((err: Error) =>
        request.log.warn({ jobId, err: err.message }, 'job re-read after a Redis reconnect failed'),
      );
    } else if (event.message.type === 'progress') {
      if (event.message.detail) send('progress', rates.next(event.message.detail));
    } else if (event.message.job) {
      showStatus(event.message.job);
    }
  };
  // Status messages that arrived while the snapshot was read may be older or newer than it: one more read
  // settles it. Progress figures are passed on as they are.
  const early = pending.splice(0);
  for (const event of early) if (event.kind === 'message' && event.message.type === 'progress') deliver(event);
  if (early.some((event) => event.kind === 'resync' || event.message.type === 'status')) deliver({ kind: 'resync' });
}

async function waitAtMost<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no subscription within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
