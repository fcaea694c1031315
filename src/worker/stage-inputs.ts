// Stage 1 of a job, after its claim: the job directory, the inputs copied out of the store, and job.json.
// Everything staged here survives a failed attempt (the engine resumes from its checkpoints beside it).
import { randomUUID } from 'node:crypto';
import { mkdir, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Dataset, OnnxModel } from '@prisma/client';
import type { EngineJobOptions } from '../contract/job-options.js';
import type { ArtifactStore } from '../store/index.js';

/** The engine seeds torch/numpy with this, so two runs of one job give the same model. */
export const ENGINE_SEED = 0;

export function jobDirFor(workDir: string, jobId: string): string {
  return path.join(workDir, 'jobs', jobId);
}

/** The paths of one job's directory. */
export interface JobPaths {
  jobDir: string;
  jobFile: string;
  outputDir: string;
  workDir: string;
  enginePidFile: string;
  modelPath: string;
}

export function jobPaths(jobDir: string): JobPaths {
  return {
    jobDir,
    jobFile: path.join(jobDir, 'job.json'),
    outputDir: path.join(jobDir, 'out'),
    workDir: path.join(jobDir, 'work'),
    enginePidFile: path.join(jobDir, 'engine.pid'),
    modelPath: path.join(jobDir, 'input.onnx'),
  };
}

/** JSON written as tmp + rename, so the engine never reads half a file after a crash. */
export async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${randomUUID()}.tmp`;
  await writeFile(tmp, JSON.stringify(value, null, 2));
  await rename(tmp, file);
}

/** Copies a store object into the job directory (a hard link on the file store); kept across attempts. */
async function stageInput(store: ArtifactStore, key: string, target: string): Promise<void> {
  try {
    await stat(target);
    return; // staged by an earlier attempt of this job
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await store.fetchTo(key, target);
}

/**
 * Makes the directories and stages the model and dataset; returns the dataset argument of job.json: the
 * staged file, the builtin dataset's name, or null.
 */
export async function stageInputs(
  store: ArtifactStore,
  paths: JobPaths,
  row: { model: OnnxModel; dataset: Dataset | null; builtinDataset: string | null },
): Promise<string | null> {
  await mkdir(paths.outputDir, { recursive: true });
  await mkdir(paths.workDir, { recursive: true });
  await stageInput(store, row.model.storageKey, paths.modelPath);
  if (!row.dataset) return row.builtinDataset;
  // The engine picks the reader by extension (npz | zip); store objects have none.
  const dataset = path.join(paths.jobDir, `dataset.${row.dataset.format}`);
  await stageInput(store, row.dataset.storageKey, dataset);
  return dataset;
}

/** job.json, the engine's whole input (validated by the engine against the contract's JSON Schema). */
export async function writeJobFile(
  paths: JobPaths,
  job: { jobId: string; dataset: string | null; threads: number; options: EngineJobOptions },
): Promise<void> {
  await writeJsonAtomic(paths.jobFile, {
    jobId: job.jobId,
    model: paths.modelPath,
    dataset: job.dataset,
    outputDir: paths.outputDir,
    workDir: paths.workDir,
    threads: job.threads,
    seed: ENGINE_SEED,
    options: job.options,
  });
}
