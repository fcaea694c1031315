// The engine's memory limit: every engine process runs under RLIMIT_AS (ENGINE_MEMORY_LIMIT_MB, prlimit); an
// engine that runs out of it fails its job as `resource_exhausted` at once, never retried, with no server path
// or C++ location in the error text.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { enqueueCompressionJob, createCompressionQueue } from '../src/queue/index.js';
import { FileStore } from '../src/store/index.js';
import { classifyExit, EngineCrashError, engineCommand, ResourceExhaustedError, type EngineExit } from '../src/worker/engine.js';
import { startWorker, type RunningWorker } from '../src/worker/runner.js';
import { createTestEnv, type TestEnv } from './helpers/env.js';
import { createFixtures, type Fixtures } from './helpers/fixtures.js';
import { insertJob, insertModel } from './worker-fixtures.js';

describe('classifyExit: out of memory', () => {
  const exit = (over: Partial<EngineExit>): EngineExit => ({ code: 1, signal: null, stderrTail: '', result: null, memoryLimitMb: 2048, ...over });

  test("torch's allocator, numpy and the loader failing are resource_exhausted, without internals in the text", () => {
    for (const stderrTail of [
      // verbatim from `tuckerize run` at inputShape [1,3,4096,4096] under a 1536 MiB limit
      'RuntimeError: [enforce fail at alloc_cpu.cpp:75] err == 0. DefaultCPUAllocator: can\'t allocate memory: you tried to allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)',
      'numpy.core._exceptions._ArrayMemoryError: Unable to allocate 1.49 GiB for an array with shape (400000000,) and data type float32',
      "terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc",
      'ImportError: /usr/lib/x86_64-linux-gnu/libdnnl.so.2: failed to map segment from shared object',
    ]) {
      const err = classifyExit(exit({ stderrTail }));
      assert.ok(err instanceof ResourceExhaustedError, stderrTail);
      assert.match(err.message, /ran out of memory of 2048 MiB \(ENGINE_MEMORY_LIMIT_MB\)/);
      assert.doesNotMatch(err.message, /\/usr|\.cpp|alloc_cpu/);
    }
  });

  test('a SIGKILL nobody here sent stays a retried crash; a plain crash names no path', () => {
    assert.ok(classifyExit(exit({ code: null, signal: 'SIGKILL' })) instanceof EngineCrashError);
    const crash = classifyExit(exit({ stderrTail: 'RuntimeError: bad thing in /srv/app/engine/tuckerize/x.py (conv.cpp:12)' }));
    assert.ok(crash instanceof EngineCrashError);
    assert.equal(crash.message, 'engine exited with code 1: RuntimeError: bad thing in x.py');
  });

  test('the limit wraps the whole command line, outermost', () => {
    const settings = { python: '/usr/bin/python3', pythonPath: ['/e'], threads: 1, memoryLimitMb: 512 };
    const command = engineCommand(settings, { args: ['run', 'job.json'], wrap: (c) => ['/usr/bin/python3', 'peak_rss.py', 'r.json', '--', ...c] });
    assert.deepEqual(command.slice(1), [
      `--as=${512 * 1024 * 1024}`, '--', '/usr/bin/python3', 'peak_rss.py', 'r.json', '--', '/usr/bin/python3', '-m', 'tuckerize', 'run', 'job.json',
    ]);
    assert.match(command[0]!, /prlimit$/);
    assert.deepEqual(engineCommand({ ...settings, memoryLimitMb: null }, { args: ['analyze'] }), ['/usr/bin/python3', '-m', 'tuckerize', 'analyze']);
  });
});

describe('a real engine under a tiny memory limit', () => {
  let env: TestEnv;
  let fx: Fixtures;
  let worker: RunningWorker;
  before(async () => {
    fx = await createFixtures();
    // 256 MiB: less than the engine needs to load torch (≈ 0.85 GB of address space with 2 threads).
    env = await createTestEnv({ ENGINE_MEMORY_LIMIT_MB: '256' });
    worker = await startWorker(env.config, { logger: pino({ level: 'silent' }), measure: null });
  });
  after(async () => {
    await worker?.close();
    await env?.cleanup();
    await fx?.cleanup();
  });

  test('fails the job as resource_exhausted after one attempt', { timeout: 120_000 }, async () => {
    const tenant = await env.prisma.tenant.create({ data: { name: 'mem' } });
    const modelId = await insertModel(env.prisma, new FileStore(env.config.storageDir), tenant.id, fx.tiny);
    const jobId = await insertJob(env.prisma, tenant.id, modelId, { rule: 'ratio', ratio: 0.5 });
    const queue = createCompressionQueue({ url: env.config.redisUrl }, env.config.queuePrefix);
    try {
      await enqueueCompressionJob(queue, { jobId, tenantId: tenant.id });
      let row = await env.prisma.job.findUniqueOrThrow({ where: { id: jobId }, include: { events: true } });
      for (let i = 0; i < 600 && (row.status === 'queued' || row.status === 'running'); i++) {
        await sleep(100);
        row = await env.prisma.job.findUniqueOrThrow({ where: { id: jobId }, include: { events: true } });
      }
      assert.equal(row.status, 'failed');
      assert.equal(row.errorCategory, 'resource_exhausted');
      assert.equal(row.attempts, 1);
      assert.equal(row.events.filter((e) => e.type === 'retry').length, 0, 'never retried');
      assert.match(row.errorMessage ?? '', /ran out of memory of 256 MiB/);
      assert.doesNotMatch(row.errorMessage ?? '', /\/|\.so|\.cpp/);
    } finally {
      await queue.close();
    }
  });
});
