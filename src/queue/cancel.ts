// Worker side of cancellation: one subscriber connection per worker process, fanned out by job id.
import { Redis, type RedisOptions } from 'ioredis';
import { cancelChannel } from './index.js';
import { ListenersByJob } from './listeners.js';

export type CancelListener = () => void;

export class CancelBus {
  private readonly listeners = new ListenersByJob<CancelListener>();
  private readonly subscriber: Redis;
  private readonly channel: string;

  private constructor(subscriber: Redis, channel: string) {
    this.subscriber = subscriber;
    this.channel = channel;
    subscriber.on('message', (channel: string, jobId: string) => {
      if (channel !== this.channel) return;
      for (const listener of this.listeners.of(jobId)) listener();
    });
  }

  /** Subscribes before resolving, so a cancel published afterwards is never missed. */
  static async connect(
    redisUrl: string,
    prefix: string,
    onError: (err: Error) => void,
    options: RedisOptions = {},
  ): Promise<CancelBus> {
    // A connection in subscriber mode cannot run other commands: it is dedicated to this bus.
    // ioredis reconnects and resubscribes by itself after a Redis restart; meanwhile the workers'
    // database poll still sees cancels.
    const subscriber = new Redis(redisUrl, { maxRetriesPerRequest: null, ...options });
    subscriber.on('error', onError);
    const bus = new CancelBus(subscriber, cancelChannel(prefix));
    await subscriber.subscribe(bus.channel);
    return bus;
  }

  /** Returns the unsubscribe function. */
  on(jobId: string, listener: CancelListener): () => void {
    return this.listeners.add(jobId, listener);
  }

  async close(): Promise<void> {
    this.listeners.clear();
    await this.subscriber.quit();
  }
}
