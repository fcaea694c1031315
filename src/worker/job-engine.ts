// Stage 3 of a job: `tuckerize run job.json` through the engine runner, its progress and logs relayed.
import type { Prisma } from '@prisma/client';
import {
  classifyExit, engineSettings, killStaleEngine, recordEngine, startEngine, type EngineEvent, type EngineExit,
} from './engine.js';
import type { JobContext } from './job-context.js';

export type EngineResult = NonNullable<EngineExit['result']>;

/** Runs the engine to its end; the result line on success, the classified error otherwise. */
export async function runJobEngine(ctx: JobContext): Promise<EngineResult> {
  const { paths } = ctx;
  // An engine of an earlier attempt survives its worker's SIGKILL; it must not write beside the new one.
  const stale = await killStaleEngine(paths.enginePidFile, paths.jobFile);
  if (stale !== null) ctx.log.warn({ pgid: stale }, 'killed the engine of an earlier attempt that was still running');

  const engine = startEngine(engineSettings(ctx.deps.config), {
    args: ['run', paths.jobFile],
    cwd: paths.jobDir,
    // A cancel or timeout kills the process group, also one that arrived while the job was being staged.
    signal: ctx.signal,
    onEvent: (event) => relay(ctx, event),
    onStrayLine: (line) => ctx.log.info({ line: line.slice(0, 2000) }, 'engine stdout (not protocol)'),
  });
  ctx.log.info({ pid: engine.pid }, 'engine started');
  ctx.deps.onEngineStarted?.({ jobId: ctx.jobId, pgid: engine.pgid, attempt: ctx.job.attemptsMade + 1 });
  let exit: EngineExit;
  try {
    await recordEngine(paths.enginePidFile, engine.pgid, paths.jobFile);
    await ctx.event('engine', { pid: engine.pid, pgid: engine.pgid });
    exit = await engine.done;
  } catch (err) {
    // Bookkeeping failed (database down): no engine may run on without a worker watching it.
    await engine.kill();
    throw err;
  }
  ctx.log.info({ code: exit.code, signal: exit.signal, error: exit.error?.code }, 'engine exited');
  ctx.throwIfStopping();
  const failure = classifyExit(exit);
  if (failure) {
    // The full stderr stays in the worker's log; the job row gets the public message only.
    if (exit.code !== 0 && exit.code !== 2) ctx.log.warn({ stderr: exit.stderrTail.slice(-4000) }, 'engine failed');
    throw failure;
  }
  return exit.result!;
}

function relay(ctx: JobContext, event: EngineEvent): void {
  switch (event.event) {
    case 'progress': {
      const { stage, done, total, message } = event;
      ctx.pushProgress({ stage, done, total, ...(message !== undefined ? { message: String(message) } : {}) });
      break;
    }
    case 'log':
      if (event.level === 'warn') ctx.log.warn({ engine: true }, event.message);
      else ctx.log.info({ engine: true }, event.message);
      ctx.eventInBackground('log', { level: event.level, message: event.message });
      break;
    case 'result':
      ctx.eventInBackground('result', { summary: event.summary as Prisma.InputJsonObject });
      break;
    case 'error':
      ctx.eventInBackground('engine_error', JSON.parse(JSON.stringify(event)) as Prisma.InputJsonObject);
      break;
  }
}
