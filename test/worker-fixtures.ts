// Shared by the worker and end-to-end tests: real models from the engine's zoo, rows as the API writes them.
import { execFile } from 'node:child_process';
import { access, mkdir, rename } from 'node:fs/promises';
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

const TINY_CNN_SCRIPT = `
import sys, torch
from torch import nn
torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
    nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
    nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
).eval()
torch.onnx.export(net, torch.randn(1, 3, 32, 32), sys.argv[1], opset_version=13,
                  input_names=["input"], output_names=["logits"])
`;

/**
 * A three-conv CNN (1×3×32×32 → 10 logits, random weights): the engine compresses it in about a second,
 * so tests that need a finished job stay fast. Cached under .cache/fixtures.
 */
export async function tinyCnn(): Promise<string> {
  const file = path.join(REPO_ROOT, '.cache', 'fixtures', 'tiny-cnn-opset13.onnx');
  try {
    await access(file);
    return file;
  } catch {
    await mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    await run('/usr/bin/python3', ['-c', TINY_CNN_SCRIPT, tmp], { timeout: 300_000 });
    await rename(tmp, file);
    return file;
  }
}

export const TINY_CNN_INPUTS = [{ name: 'input', type: 'float32', dims: [1, 3, 32, 32] }];

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
