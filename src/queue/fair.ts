// Fair dispatch across tenants on open-source BullMQ, which has no per-group concurrency: the producer keeps
// at most `maxRunningPerTenant` of a tenant's unfinished jobs runnable (waiting, active, or delayed for a retry
// backoff). A tenant's further jobs are added to BullMQ as delayed jobs ("held", listed oldest first in the
// Redis sorted set `${prefix}:fair:held:<tenantId>`) and promoted one at a time when one of its jobs ends. So
// a tenant with 20 queued jobs occupies at most that many worker slots, and another tenant's job goes to the
// next free slot instead of behind the 20: tenants are served round-robin at the granularity of one job.
//
// Held jobs stay visible to the reconciler (BullMQ holds them), and their delay (HOLD_MS) is a backstop:
// were no API process alive to promote them, they would run anyway after it. Promotions are triggered by
// terminal job events (the API's job-events subscription) and by releaseAll at API start; a per-tenant Redis
// lock serialises the decision across API processes.
import { randomUUID } from 'node:crypto';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { PrismaClient } from '../db/client.js';
import { enqueueCompressionJob, type CompressionJobData } from './index.js';

/** How long a held job waits if nobody promotes it. */
export const HOLD_MS = 6 * 3600_000;
const LOCK_TTL_MS = 5000;
const LOCK_WAIT_MS = 3000;
const LOCK_RETRY_MS = 5;
/**
 * Far below the limit the decision cannot change however many of the tenant's requests race (fewer than
 * this many at once), so no lock is taken: a tenant with a high limit does not serialise its job creation.
 */
const LOCK_FREE_MARGIN = 64;
/** Compare-and-delete: a lock is released only by its holder. */
const UNLOCK_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

export type Dispatch = 'dispatched' | 'held';

export class FairDispatcher {
  constructor(
    private readonly queue: Queue<CompressionJobData>,
    private readonly redis: Redis,
    private readonly prisma: PrismaClient,
    private readonly prefix: string,
    private readonly maxRunningPerTenant: number,
  ) {}

  heldKey(tenantId: string): string {
    return `${this.prefix}:fair:held:${tenantId}`;
  }

  /** Adds a new job (its row already `queued`) to BullMQ, runnable or held. */
  async enqueue(data: CompressionJobData): Promise<Dispatch> {
    if ((await this.tally(data.tenantId, data.jobId)).runnable + LOCK_FREE_MARGIN < this.maxRunningPerTenant) {
      await enqueueCompressionJob(this.queue, data);
      return 'dispatched';
    }
    return this.withTenantLock(data.tenantId, async () => {
      const { runnable } = await this.tally(data.tenantId, data.jobId);
      if (runnable < this.maxRunningPerTenant) {
        await enqueueCompressionJob(this.queue, data);
        return 'dispatched';
      }
      await enqueueCompressionJob(this.queue, data, { delay: HOLD_MS });
      await this.redis.zadd(this.heldKey(data.tenantId), Date.now(), data.jobId);
      return 'held';
    });
  }

  /** Promotes the tenant's oldest held jobs while it has free runnable slots; returns their ids. */
  async release(tenantId: string): Promise<string[]> {
    return this.withTenantLock(tenantId, async () => {
      let { runnable, held } = await this.tally(tenantId);
      const promoted: string[] = [];
      while (runnable < this.maxRunningPerTenant && held.length > 0) {
        const jobId = held.shift() as string;
        await this.redis.zrem(this.heldKey(tenantId), jobId);
        const job = await this.queue.getJob(jobId);
        // Gone (canceled) or already running after its backstop delay: nothing to promote.
        if (!job || !(await job.isDelayed())) continue;
        await job.promote();
        promoted.push(jobId);
        runnable += 1;
      }
      return promoted;
    });
  }

  /** release() for every tenant with held jobs (at API start, and after Redis reconnects). */
  async releaseAll(): Promise<string[]> {
    const promoted: string[] = [];
    const prefix = this.heldKey('');
    let cursor = '0';
    do {
      const [next, keys] = await this.redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', '200');
      cursor = next;
      for (const key of keys) promoted.push(...(await this.release(key.slice(prefix.length))));
    } while (cursor !== '0');
    return promoted;
  }

  /**
   * The tenant's unfinished jobs split into runnable and held (oldest first). Held entries whose job has
   * finished (canceled while held) are dropped from the set.
   */
  private async tally(tenantId: string, excludeJobId?: string): Promise<{ runnable: number; held: string[] }> {
    const active = { in: ['queued' as const, 'running' as const] };
    const [unfinished, heldIds] = await Promise.all([
      this.prisma.job.count({ where: { tenantId, status: active, ...(excludeJobId ? { id: { not: excludeJobId } } : {}) } }),
      this.redis.zrange(this.heldKey(tenantId), '0', '-1'),
    ]);
    if (heldIds.length === 0) return { runnable: unfinished, held: [] };
    const stillHeld = await this.prisma.job.findMany({ where: { id: { in: heldIds }, tenantId, status: active }, select: { id: true } });
    const alive = new Set(stillHeld.map((row) => row.id));
    const stale = heldIds.filter((id) => !alive.has(id));
    if (stale.length > 0) await this.redis.zrem(this.heldKey(tenantId), ...stale);
    const held = heldIds.filter((id) => alive.has(id) && id !== excludeJobId);
    return { runnable: unfinished - held.length, held };
  }

  private async withTenantLock<T>(tenantId: string, work: () => Promise<T>): Promise<T> {
    const key = `${this.prefix}:fair:lock:${tenantId}`;
    const token = randomUUID();
    const deadline = Date.now() + LOCK_WAIT_MS;
    let locked = false;
    while (!locked) {
      locked = (await this.redis.set(key, token, 'PX', LOCK_TTL_MS, 'NX')) === 'OK';
      if (locked) break;
      // A holder that died loses the lock after LOCK_TTL_MS; past our wait we go ahead unlocked, at worst
      // dispatching one job more than the limit.
      if (Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, LOCK_RETRY_MS));
    }
    try {
      return await work();
    } finally {
      if (locked) await this.redis.eval(UNLOCK_SCRIPT, 1, key, token).catch(() => undefined);
    }
  }
}
