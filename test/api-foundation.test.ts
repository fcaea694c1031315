// Config parsing, the migration runner and the artifact store.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { ConfigError, loadConfig } from '../src/config.js';
import { migrate, MigrationError } from '../src/db/migrate.js';
import { ArtifactNotFoundError, FileStore, PayloadTooLargeError } from '../src/store/artifacts.js';

describe('loadConfig', () => {
  test('defaults', () => {
    const config = loadConfig({ DATABASE_URL: 'postgresql://u@h/db' });
    assert.equal(config.port, 8080);
    assert.equal(config.host, '0.0.0.0');
    assert.equal(config.redisUrl, 'redis://127.0.0.1:6379');
    assert.equal(config.enginePython, '/usr/bin/python3');
    assert.ok(path.isAbsolute(config.storageDir));
    assert.match(config.engineDir, /engine$/);
    assert.equal(config.workerConcurrency, 1);
    assert.equal(config.jobTimeoutMs, 2 * 3600 * 1000);
    assert.equal(config.maxModelBytes, 600 * 1024 * 1024);
    assert.equal(config.maxDatasetBytes, 1024 * 1024 * 1024);
    assert.equal(config.queuePrefix, 'tuckerize');
    assert.equal(config.adminKey, undefined);
    assert.equal(config.rateLimitPerMinute, 600);
    assert.equal(config.ortThreads, 1);
    assert.equal(config.engineThreads, 2);
  });

  test('values from the environment; empty strings count as unset', () => {
    const config = loadConfig({ DATABASE_URL: 'postgres://u@h/db', PORT: '9000', WORKER_CONCURRENCY: '3', LOG_LEVEL: 'debug', ADMIN_KEY: '', HOST: '' });
    assert.equal(config.port, 9000);
    assert.equal(config.workerConcurrency, 3);
    assert.equal(config.logLevel, 'debug');
    assert.equal(config.adminKey, undefined);
    assert.equal(config.host, '0.0.0.0');
  });

  test('every problem is named in one error', () => {
    assert.throws(
      () => loadConfig({ PORT: 'eighty', REDIS_URL: 'http://x', WORKER_CONCURRENCY: '0', QUEUE_PREFIX: 'a b' }),
      (err: Error) => {
        assert.ok(err instanceof ConfigError);
        for (const name of ['DATABASE_URL', 'PORT', 'REDIS_URL', 'WORKER_CONCURRENCY', 'QUEUE_PREFIX']) assert.match(err.message, new RegExp(name));
        return true;
      },
    );
  });
});

describe('migrate', () => {
  const database = `tuckerize_test_mig_${randomBytes(4).toString('hex')}`;
  const url = `postgresql://postgres@127.0.0.1:5432/${database}`;
  let dir: string;
  const admin = async (sql: string) => {
    const client = new pg.Client({ connectionString: 'postgresql://postgres@127.0.0.1:5432/postgres' });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  before(async () => {
    await admin(`CREATE DATABASE ${database}`);
    dir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-mig-'));
  });
  after(async () => {
    await admin(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await rm(dir, { recursive: true, force: true });
  });

  test('the committed migrations apply once, also when several processes start together', async () => {
    const results = await Promise.all([migrate(url), migrate(url), migrate(url)]);
    const applied = results.flatMap((r) => r.applied);
    assert.ok(applied.length >= 1);
    assert.equal(new Set(applied).size, applied.length, 'no migration applied twice');
    const again = await migrate(url);
    assert.deepEqual(again.applied, []);
  });

  test('a ?schema= URL migrates into that schema', async () => {
    const schemaUrl = `${url}?schema=tenant_x`;
    await migrate(schemaUrl);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const tables = await client.query(`SELECT table_name FROM information_schema.tables WHERE table_schema = 'tenant_x' ORDER BY 1`);
      assert.ok(tables.rows.some((r: { table_name: string }) => r.table_name === 'Job'));
    } finally {
      await client.end();
    }
  });

  test('a failing migration rolls back and names itself; an edited applied one is refused', async () => {
    await mkdir(path.join(dir, '001_ok'));
    await writeFile(path.join(dir, '001_ok', 'migration.sql'), 'CREATE TABLE mig_probe (id int);');
    await mkdir(path.join(dir, '002_bad'));
    await writeFile(path.join(dir, '002_bad', 'migration.sql'), 'CREATE TABLE mig_probe2 (id int); SELECT * FROM no_such_table;');
    const schemaUrl = `${url}?schema=probe`;
    await assert.rejects(migrate(schemaUrl, dir), (err: Error) => err instanceof MigrationError && /002_bad failed: .*no_such_table/.test(err.message));
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const probe2 = await client.query(`SELECT to_regclass('probe.mig_probe2') AS t`);
      assert.equal(probe2.rows[0].t, null, 'the failed migration left nothing');
    } finally {
      await client.end();
    }
    await rm(path.join(dir, '002_bad'), { recursive: true });
    await writeFile(path.join(dir, '001_ok', 'migration.sql'), 'CREATE TABLE mig_probe (id bigint);');
    await assert.rejects(migrate(schemaUrl, dir), /001_ok was edited after it was applied/);
  });
});

describe('FileStore', () => {
  let root: string;
  let store: FileStore;
  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-store-'));
    store = new FileStore(root);
  });
  after(async () => rm(root, { recursive: true, force: true }));

  test('content-addressed: the key is the sha256, equal bytes are stored once', async () => {
    const a = await store.ingestStream(Readable.from([Buffer.from('hello '), Buffer.from('world')]));
    assert.equal(a.sha256, 'b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9');
    assert.equal(a.bytes, 11);
    assert.equal(a.key, `objects/b9/${a.sha256}`);
    assert.equal(await readFile(store.pathFor(a.key), 'utf8'), 'hello world');
    const b = await store.ingestStream(Readable.from([Buffer.from('hello world')]));
    assert.deepEqual(b, a);
    assert.deepEqual(await readdir(path.join(root, 'tmp')), [], 'no temp files left');
    const chunks: Buffer[] = [];
    for await (const chunk of await store.openRead(a.key)) chunks.push(chunk as Buffer);
    assert.equal(Buffer.concat(chunks).toString(), 'hello world');
  });

  test('past the limit: PayloadTooLargeError, and the temp file is gone', async () => {
    await assert.rejects(store.ingestStream(Readable.from([Buffer.alloc(600), Buffer.alloc(600)]), 1000), PayloadTooLargeError);
    assert.deepEqual(await readdir(path.join(root, 'tmp')), []);
  });

  test('a failing source stream leaves no temp file', async () => {
    const failing = new Readable({
      read() {
        this.push(Buffer.alloc(10));
        this.destroy(new Error('client went away'));
      },
    });
    await assert.rejects(store.ingestStream(failing), /client went away/);
    assert.deepEqual(await readdir(path.join(root, 'tmp')), []);
  });

  test('ingestFile, exists, remove', async () => {
    const file = path.join(root, 'source.bin');
    await writeFile(file, randomBytes(5000));
    const object = await store.ingestFile(file);
    assert.equal(await store.exists(object.key), true);
    await store.remove(object.key);
    assert.equal(await store.exists(object.key), false);
    await assert.rejects(store.openRead(object.key), ArtifactNotFoundError);
  });

  test('keys that are not store keys are refused (no path escapes)', () => {
    for (const key of ['../etc/passwd', 'objects/ab/../../x', `objects/zz/${'a'.repeat(64)}`, '/etc/passwd']) {
      assert.throws(() => store.pathFor(key), ArtifactNotFoundError, key);
    }
  });

  test('cleanupTemp removes only old temp files', async () => {
    const oldFile = await store.tempPath();
    const newFile = await store.tempPath();
    await writeFile(oldFile, 'old');
    await writeFile(newFile, 'new');
    const hourAgo = new Date(Date.now() - 3600_000);
    await utimes(oldFile, hourAgo, hourAgo);
    assert.equal(await store.cleanupTemp(60_000), 1);
    assert.deepEqual(await readdir(path.join(root, 'tmp')), [path.basename(newFile)]);
    assert.equal(await new FileStore(path.join(root, 'never-used')).cleanupTemp(0), 0);
  });
});
