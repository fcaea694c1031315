// Shared by the worker and end-to-end tests: real models from the engine's zoo, rows as the API writes them.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Prisma } from '@prisma/client';
import type { PrismaClient } from '../src/db/client.js';
import type { ArtifactStore } from '../src/store/artifacts.js';

const run = promisify(execFile);
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ENGINE_DIR = path.join(REPO_ROOT, 'engine');

/**
 * A torchvision model exported by the engine's zoo (random weights), cached under .cache/zoo by
 * engine/tests/zoo_cache.py so the tests of both halves share one export.
 */
export async function zooModel(name: string, inputSize: number, opset = 13): Promise<string> {
  const { stdout } = await run(
    '/usr/bin/python3',
    ['-c', `from zoo_cache import zoo_path; print(zoo_path(${JSON.stringify(name)}, ${opset}, ${inputSize}))`],
    { env: { ...process.env, PYTHONPATH: `${ENGINE_DIR}:${path.join(ENGINE_DIR, 'tests')}` }, timeout: 300_000 },
  );
  return stdout.trim().split('\n').pop()!;
}

/** Stores a file as an uploaded model of `tenantId`, bypassing the API's checks (the worker must cope anyway). */
export async function insertModel(
  prisma: PrismaClient,
  store: ArtifactStore,
  tenantId: string,
  filePath: string,
  inputs: Prisma.InputJsonValue = [{ name: 'input', type: 'float32', dims: [1, 3, 64, 64] }],
): Promise<string> {
  const stored = await store.ingestFile(filePath);
  const model = await prisma.onnxModel.upsert({
    where: { tenantId_sha256: { tenantId, sha256: stored.sha256 } },
    create: {
      tenantId,
      name: path.basename(filePath),
      sha256: stored.sha256,
      bytes: BigInt(stored.bytes),
      storageKey: stored.key,
      opset: 13,
      inputs,
      outputs: [],
    },
    update: {},
  });
  return model.id;
}

export async function insertJob(
  prisma: PrismaClient,
  tenantId: string,
  modelId: string,
  options: Prisma.InputJsonValue,
  status: 'queued' | 'succeeded' = 'queued',
): Promise<string> {
  const job = await prisma.job.create({ data: { tenantId, modelId, options, status } });
  return job.id;
}
