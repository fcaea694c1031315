// Test environment on the machine's real PostgreSQL and Redis: a fresh database (migrated), a unique BullMQ
// prefix and a temp storage dir per call, all removed by cleanup(). Runs never see each other's data.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { loadConfig, type Config } from '../../src/config.js';
import { createPrisma, type PrismaClient } from '../../src/db/client.js';
import { migrate } from '../../src/db/migrate.js';
import { deleteRedisPrefix } from '../../src/queue/redis-keys.js';

const ADMIN_DATABASE_URL = 'postgresql://postgres@127.0.0.1:5432/postgres';
const REDIS_URL = 'redis://127.0.0.1:6379';

export interface TestEnv {
  config: Config;
  prisma: PrismaClient;
  /** drops the database, deletes the Redis keys under the prefix and the storage dir */
  cleanup(): Promise<void>;
}

async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: ADMIN_DATABASE_URL });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/** `env` overrides the generated settings (e.g. MAX_MODEL_BYTES); DATABASE_URL, QUEUE_PREFIX, STORAGE_DIR are per run. */
export async function createTestEnv(env: Record<string, string> = {}): Promise<TestEnv> {
  const id = randomBytes(6).toString('hex');
  const database = `tuckerize_test_${id}`;
  await adminQuery(`CREATE DATABASE ${database}`);
  const storageDir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-test-'));
  const databaseUrl = `postgresql://postgres@127.0.0.1:5432/${database}`;
  const config = loadConfig({
    REDIS_URL,
    LOG_LEVEL: 'silent',
    ...env,
    DATABASE_URL: databaseUrl,
    QUEUE_PREFIX: `tkt-${id}`,
    STORAGE_DIR: storageDir,
  });
  let prisma: PrismaClient | undefined;
  const cleanup = async (): Promise<void> => {
    await prisma?.$disconnect();
    await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await deleteRedisPrefix(config.redisUrl, config.queuePrefix);
    await rm(storageDir, { recursive: true, force: true });
  };
  try {
    await migrate(databaseUrl);
    prisma = createPrisma(databaseUrl);
    return { config, prisma, cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** Creates (or reuses) a tenant and a fresh API key for it; returns the key in the clear. */
export async function createTestKey(prisma: PrismaClient, tenantName: string): Promise<string> {
  const tenant = await prisma.tenant.upsert({ where: { name: tenantName }, create: { name: tenantName }, update: {} });
  const prefix = randomBytes(6).toString('hex');
  const key = `tk_${prefix}_${randomBytes(24).toString('base64url')}`;
  const hash = createHash('sha256').update(key).digest('hex');
  await prisma.apiKey.create({ data: { tenantId: tenant.id, prefix, hash } });
  return key;
}
