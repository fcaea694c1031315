// Live job progress for SSE clients: one BullMQ QueueEvents per app (created on the first subscriber), fanned
// out to listeners by job id. QueueEvents needs its own blocking connection, hence lazily.
import { QueueEvents } from 'bullmq';
import { COMPRESSION_QUEUE } from '../queue/index.js';
import { ListenersByJob } from '../queue/listeners.js';

export type QueueEventKind = 'progress' | 'active' | 'completed' | 'failed' | 'removed';
export type JobEventListener = (kind: QueueEventKind, data: unknown) => void;

export class JobEventHub {
  private queueEvents: QueueEvents | undefined;
  private readonly listeners = new ListenersByJob<JobEventListener>();

  constructor(
    private readonly redisUrl: string,
    private readonly prefix: string,
  ) {}

  subscribe(jobId: string, listener: JobEventListener): () => void {
    this.ensureStarted();
    return this.listeners.add(jobId, listener);
  }

  /** Resolves once the QueueEvents connection is up, so events published afterwards reach subscribers. */
  async ready(): Promise<void> {
    this.ensureStarted();
    await this.queueEvents?.waitUntilReady();
  }

  private emit(jobId: string, kind: QueueEventKind, data: unknown): void {
    for (const listener of this.listeners.of(jobId)) listener(kind, data);
  }

  private ensureStarted(): void {
    if (this.queueEvents) return;
    const queueEvents = new QueueEvents(COMPRESSION_QUEUE, {
      connection: { url: this.redisUrl, maxRetriesPerRequest: null },
      prefix: this.prefix,
    });
    queueEvents.on('progress', ({ jobId, data }) => this.emit(jobId, 'progress', data));
    queueEvents.on('active', ({ jobId }) => this.emit(jobId, 'active', null));
    queueEvents.on('completed', ({ jobId }) => this.emit(jobId, 'completed', null));
    queueEvents.on('failed', ({ jobId, failedReason }) => this.emit(jobId, 'failed', failedReason));
    queueEvents.on('removed', ({ jobId }) => this.emit(jobId, 'removed', null));
    // Connection errors are retried by ioredis; without a listener they would crash the process.
    queueEvents.on('error', () => undefined);
    this.queueEvents = queueEvents;
  }

  async close(): Promise<void> {
    this.listeners.clear();
    await this.queueEvents?.close();
    this.queueEvents = undefined;
  }
}
