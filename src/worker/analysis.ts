// Upload analysis, a queued job the workers run (queue `model-analysis`): the engine's `analyze --json` on
// the stored model gives its weights and MACs; the model row goes from analysis `pending` to `done` (params
// and macs filled) or `failed` (with a public reason). The API never starts the engine itself.
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { UnrecoverableError, type Processor } from 'bullmq';
import type { Logger } from 'pino';
import type { PrismaClient } from '@prisma/client';
import type { Config } from '../config.js';
import type { AnalysisJobData } from '../queue/index.js';
import type { ArtifactStore } from '../store/index.js';
import { engineSettings, runEngineCommand } from './engine.js';

/** An analysis reads the graph and counts; minutes would mean a stuck engine. */
export const ANALYSIS_TIMEOUT_MS = 120_000;

export interface ModelTotals {
  params: number;
  macs: number;
}

/** Accepts the shapes the engine's analyze --json may print: {totals: {params, macs}} or {params, macs}. */
export function totalsFromAnalysis(output: unknown): ModelTotals | undefined {
  const pick = (o: unknown): ModelTotals | undefined => {
    if (typeof o !== 'object' || o === null) return undefined;
    const { params, macs } = o as Record<string, unknown>;
    const num = (v: unknown) =>
      typeof v === 'number' ? v : typeof v === 'object' && v !== null && typeof (v as { before?: unknown }).before === 'number' ? (v as { before: number }).before : undefined;
    const p = num(params);
    const m = num(macs);
    return p !== undefined && m !== undefined ? { params: Math.round(p), macs: Math.round(m) } : undefined;
  };
  if (typeof output !== 'object' || output === null) return undefined;
  return pick((output as { totals?: unknown }).totals) ?? pick(output);
}

export interface AnalysisDeps {
  config: Config;
  prisma: PrismaClient;
  store: ArtifactStore;
  logger: Logger;
  /** aborted when the worker closes: a running analysis is killed and left to a later attempt */
  signal: AbortSignal;
}

export function createAnalysisProcessor(deps: AnalysisDeps): Processor<AnalysisJobData, ModelTotals | null> {
  return async (job) => {
    const { prisma, store, config } = deps;
    const { modelId } = job.data;
    const log = deps.logger.child({ modelId, attempt: job.attemptsMade + 1 });
    const model = await prisma.onnxModel.findUnique({ where: { id: modelId } });
    if (!model || model.analysis !== 'pending') return null; // deleted, or analyzed by an earlier attempt

    const dir = path.join(config.workDir, 'analysis', `${modelId}-${job.attemptsMade}`);
    const file = path.join(dir, 'model.onnx');
    try {
      await mkdir(dir, { recursive: true });
      await store.fetchTo(model.storageKey, file);
      const stdout = await runEngineCommand(engineSettings(config), {
        args: ['analyze', file, '--json'],
        cwd: dir,
        timeoutMs: ANALYSIS_TIMEOUT_MS,
        signal: deps.signal,
      });
      const totals = totalsFromAnalysis(JSON.parse(stdout));
      if (!totals) throw new Error('the engine analysis printed no params/macs');
      await prisma.onnxModel.updateMany({
        where: { id: modelId, analysis: 'pending' },
        data: { params: BigInt(totals.params), macs: BigInt(totals.macs), analysis: 'done', analysisError: null },
      });
      log.info(totals, 'model analyzed');
      return totals;
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      if (deps.signal.aborted) throw new Error('the worker is shutting down; the analysis runs again later');
      const last = error instanceof UnrecoverableError || job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
      if (last) {
        await prisma.onnxModel.updateMany({
          where: { id: modelId, analysis: 'pending' },
          data: { analysis: 'failed', analysisError: error.message },
        });
        log.warn({ err: error.message }, 'model analysis failed; params/macs stay as they were');
      } else {
        log.warn({ err: error.message }, 'model analysis attempt failed; BullMQ retries it');
      }
      throw error;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  };
}
