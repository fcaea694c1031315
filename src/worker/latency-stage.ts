// Stage 2 of a rule=latency job: onnxruntime-node times the engine's candidate layers and the loop of
// latency.ts picks the MACs target; the engine then plans with the measured table.
import type { Prisma } from '@prisma/client';
import type { EngineJobOptions, JobOptions } from '../contract/job-options.js';
import { engineSettings } from './engine.js';
import type { JobContext } from './job-context.js';
import type { LatencyPlanResult } from './latency.js';
import { ENGINE_SEED } from './stage-inputs.js';

export interface LatencyStageResult {
  plan: LatencyPlanResult;
  engineOptions: EngineJobOptions;
}

export async function planJobLatency(ctx: JobContext, options: JobOptions & { targetLatency: number }): Promise<LatencyStageResult> {
  // onnxruntime-node is heavy to load: only jobs of this rule import it here.
  const { latencyJobOptions, planForLatency } = await import('./latency.js');
  const { config } = ctx.deps;
  try {
    const plan = await planForLatency({
      engine: engineSettings(config),
      signal: ctx.signal,
      modelPath: ctx.paths.modelPath,
      workDir: `${ctx.paths.workDir}/latency`,
      targetLatency: options.targetLatency,
      ...(options.inputShape ? { inputShape: options.inputShape } : {}),
      ...(options.roundTo !== undefined ? { roundTo: options.roundTo } : {}),
      force: options.force === true,
      threads: config.ortThreads,
      runs: ctx.deps.measureRuns ?? 20,
      warmup: 3,
      seed: ENGINE_SEED,
      onRound: (round, maxRounds) => {
        ctx.pushProgress({
          stage: 'latency', done: round.round, total: maxRounds,
          message: `targetMacs ${round.targetMacs.toFixed(3)}: predicted latency ratio ${round.predictedRatio?.toFixed(3) ?? '?'}`
            + ` (${round.keptSlow.length} layer(s) kept as slower in onnxruntime, ${round.structures.length} given a Tucker-1 structure by the clock)`,
        });
      },
    });
    await ctx.event('latency', JSON.parse(JSON.stringify(plan)) as Prisma.InputJsonValue);
    ctx.log.info({ targetMacs: plan.targetMacs, predictedRatio: plan.predictedRatio, converged: plan.converged }, 'latency plan ready');
    return { plan, engineOptions: latencyJobOptions(options, plan) };
  } catch (err) {
    // A cancel/timeout aborted the engine command or the timing: report that, not the abort.
    ctx.throwIfStopping();
    throw err;
  }
}
