// The one way this service starts the Python engine (`python3 -m tuckerize …`): jobs (`run`), the latency
// rule (`candidates`, `analyze`), upload analysis (`analyze --json`) and the benchmarks (`compress`) all go
// through startEngine/runEngine, which own
//   - the environment: a clean one (PATH, locale, PYTHONPATH, thread counts), nothing else of the worker's;
//   - the memory limit: the engine runs under `prlimit --as=<bytes>` (RLIMIT_AS, ENGINE_MEMORY_LIMIT_MB);
//   - the process group: the engine leads its own, so kill() ends it with every child it forked;
//   - timeouts and aborts: SIGTERM to the group, SIGKILL after a grace period;
//   - the stdout protocol: JSON lines (progress, log, result, and the error event of the C2 contract);
//   - exit classification (classifyExit): bad input (never retried), out of memory (never retried), crash.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { UnrecoverableError } from 'bullmq';
import type { Config } from '../config.js';
import { lastLine, LineSplitter, parseEngineLine, TailBuffer, type EngineErrorEvent, type EngineEvent } from './engine-protocol.js';

export { lastLine, LineSplitter, parseEngineLine, type EngineErrorEvent, type EngineEvent } from './engine-protocol.js';

/** Exit 2: the input cannot be processed; BullMQ must not retry it. */
export class BadInputError extends UnrecoverableError {
  override readonly name = 'BadInputError';
  /** the engine's error event, when the refusal came with one (its code, field and data) */
  constructor(message: string, readonly event: EngineErrorEvent | null = null) {
    super(message);
  }
}

/** The engine ran out of memory under its limit: the same job would again; never retried. */
export class ResourceExhaustedError extends UnrecoverableError {
  override readonly name = 'ResourceExhaustedError';
}

/** Exit 1 or death by signal: a crash, worth a retry (the engine resumes from its checkpoints). */
export class EngineCrashError extends Error {
  override readonly name = 'EngineCrashError';
}

export interface EngineExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Last bytes of stderr (logs and tracebacks; not shown to users as they are). */
  stderrTail: string;
  result: Extract<EngineEvent, { event: 'result' }> | null;
  /** the engine's error event, when it printed one */
  error?: EngineErrorEvent | null;
  /** stdout as a whole, when the caller asked for it (commands that print JSON) */
  stdout?: string;
  /** the RLIMIT_AS it ran under, in MiB; null or absent: none */
  memoryLimitMb?: number | null;
  /** the runner killed it: its timeout, an abort, or kill() */
  killedBy?: 'timeout' | 'abort' | 'kill' | null;
}

/** How every engine process of this service is started. */
export interface EngineSettings {
  python: string;
  /** PYTHONPATH entries: the engine directory first */
  pythonPath: string[];
  threads: number;
  /** RLIMIT_AS in MiB; null: no limit */
  memoryLimitMb: number | null;
}

export function engineSettings(config: Pick<Config, 'enginePython' | 'engineDir' | 'engineThreads' | 'engineMemoryLimitMb'>): EngineSettings {
  return {
    python: config.enginePython,
    pythonPath: [config.engineDir],
    threads: config.engineThreads,
    memoryLimitMb: config.engineMemoryLimitMb,
  };
}

export interface EngineRunOptions {
  /** arguments after `python -m tuckerize` */
  args: string[];
  /** replaces `-m tuckerize ARGS` (a script of the benchmarks' zoo export) */
  pythonArgs?: string[];
  /** wraps the engine's command line (the benchmarks' peak-RSS recorder); the memory limit stays outermost */
  wrap?: (command: string[]) => string[];
  cwd?: string;
  /** every well-formed protocol line, in order */
  onEvent?: (event: EngineEvent) => void;
  /** stdout lines that are not protocol JSON (print() left in a library, warnings) */
  onStrayLine?: (line: string) => void;
  /** keep stdout as a whole (up to this many characters) in EngineExit.stdout */
  collectStdout?: number;
  /** kill the engine (SIGTERM, then SIGKILL) when aborted */
  signal?: AbortSignal;
  timeoutMs?: number;
  /** Between SIGTERM and SIGKILL when killing. */
  killGraceMs?: number;
  stderrTailBytes?: number;
}

const ABSOLUTE_PATH = /(?<![\w.~/-])\/(?:[^\s'"/:,;()[\]]+\/)+([^\s'"/:,;()[\]]*)/g;
const CXX_LOCATION = /\s*\(?\b[\w./-]+\.(?:cc|cpp|cxx|h|hpp)(?::\d+)+\)?:?/g;

/** Text safe to show a client: absolute paths cut to their last part, C++ source locations dropped. */
export function publicText(text: string): string {
  return text.replace(CXX_LOCATION, '').replace(ABSOLUTE_PATH, (_m, last: string) => last || '<dir>').split(/\s+/).join(' ').trim();
}

/** What allocation failure looks like from Python, from C++ (torch, onnx) and from the dynamic loader. */
const OUT_OF_MEMORY = /MemoryError|std::bad_alloc|can't allocate memory|Cannot allocate memory|out of memory|failed to map segment/i;

/** True when the engine died of memory exhaustion rather than of a bug. */
export function ranOutOfMemory(exit: EngineExit): boolean {
  if (exit.killedBy) return false;
  // RLIMIT_AS makes allocations fail inside the engine; it never kills. A SIGKILL (the host's OOM killer, an
  // operator, a fault test) says nothing certain about this job's needs, so it stays a retried crash.
  return OUT_OF_MEMORY.test(exit.stderrTail) || OUT_OF_MEMORY.test(exit.error?.detail ?? '');
}

/**
 * Maps the engine's exit to the outcome BullMQ needs: nothing (success), an unrecoverable bad-input or
 * out-of-memory error, or a retryable crash. When the worker itself killed the engine (cancel, timeout) the
 * caller reports that instead and does not ask this function.
 */
export function classifyExit(exit: EngineExit): BadInputError | ResourceExhaustedError | EngineCrashError | null {
  if (exit.code === 0) {
    if (exit.result === null) {
      return new EngineCrashError('engine exited 0 without a result line; see the job events for its output');
    }
    return null;
  }
  if (ranOutOfMemory(exit)) {
    const limit = exit.memoryLimitMb != null ? ` of ${exit.memoryLimitMb} MiB (ENGINE_MEMORY_LIMIT_MB)` : '';
    return new ResourceExhaustedError(
      `the engine ran out of memory${limit}; use a smaller inputShape or finetune.batchSize, or a smaller dataset`,
    );
  }
  if (exit.code === 2) {
    if (exit.error) return new BadInputError(publicText(exit.error.detail), exit.error);
    return new BadInputError(publicText(lastLine(exit.stderrTail)) || 'engine refused the input (exit 2) without a message');
  }
  const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
  const why = exit.error ? exit.error.detail : lastLine(exit.stderrTail);
  return new EngineCrashError(why ? `engine ${how}: ${publicText(why)}` : `engine ${how}`);
}

/** util-linux's prlimit, which sets RLIMIT_AS and execs the engine (Debian ships it in every image). */
const PRLIMIT = ['/usr/bin/prlimit', '/bin/prlimit'].find((p) => existsSync(p)) ?? null;

/** The full command line: [program, ...args]. */
export function engineCommand(settings: EngineSettings, options: Pick<EngineRunOptions, 'args' | 'pythonArgs' | 'wrap'>): string[] {
  let command = [settings.python, ...(options.pythonArgs ?? ['-m', 'tuckerize', ...options.args])];
  if (options.wrap) command = options.wrap(command);
  if (settings.memoryLimitMb !== null) {
    if (!PRLIMIT) throw new EngineCrashError('ENGINE_MEMORY_LIMIT_MB is set but prlimit (util-linux) is not installed');
    command = [PRLIMIT, `--as=${settings.memoryLimitMb * 1024 * 1024}`, '--', ...command];
  }
  return command;
}

/** The engine's whole environment: nothing of the worker's (credentials, URLs) leaks into it. */
export function engineEnv(settings: EngineSettings): NodeJS.ProcessEnv {
  const threads = String(settings.threads);
  return {
    PATH: '/usr/local/bin:/usr/bin:/bin',
    LANG: 'C.UTF-8',
    HOME: os.tmpdir(),
    PYTHONPATH: settings.pythonPath.join(':'),
    // Progress must arrive as it happens, not when a 4 KB pipe buffer fills.
    PYTHONUNBUFFERED: '1',
    // BLAS/OpenMP pools size themselves to all cores otherwise, fighting the other jobs.
    OMP_NUM_THREADS: threads,
    MKL_NUM_THREADS: threads,
    // glibc reserves 64 MiB of address space per arena and thread; under RLIMIT_AS that is memory lost.
    MALLOC_ARENA_MAX: '2',
  };
}

export class EngineProcess {
  readonly pid: number;
  readonly done: Promise<EngineExit>;
  private exited = false;
  private killTimer: NodeJS.Timeout | null = null;
  private killedBy: EngineExit['killedBy'] = null;

  constructor(child: ChildProcess, done: Promise<EngineExit>, private readonly killGraceMs: number) {
    if (child.pid === undefined) throw new Error('engine process has no pid');
    this.pid = child.pid;
    this.done = done
      .then((exit) => ({ ...exit, killedBy: this.killedBy }))
      .finally(() => {
        this.exited = true;
        if (this.killTimer) clearTimeout(this.killTimer);
      });
  }

  /** Process group id: detached children lead their own group, so pgid == pid. */
  get pgid(): number {
    return this.pid;
  }

  /**
   * SIGTERM to the whole group (the engine exits promptly on it), SIGKILL after the grace period.
   * Resolves once the engine itself has exited; then sweeps any straggler left in the group.
   */
  async kill(reason: 'timeout' | 'abort' | 'kill' = 'kill'): Promise<EngineExit> {
    if (!this.exited) {
      this.killedBy ??= reason;
      signalGroup(this.pgid, 'SIGTERM');
      this.killTimer ??= setTimeout(() => signalGroup(this.pgid, 'SIGKILL'), this.killGraceMs);
      this.killTimer.unref();
    }
    const exit = await this.done;
    // The leader exited; a child that ignored SIGTERM may still be alive in the group.
    signalGroup(this.pgid, 'SIGKILL');
    return exit;
  }
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (err) {
    // ESRCH: the group is already gone, which is what we wanted.
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** True while any process of the group is alive. */
export function processGroupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}

/** Starts the engine; `done` resolves with its exit (never rejects once started). */
export function startEngine(settings: EngineSettings, opts: EngineRunOptions): EngineProcess {
  const [program, ...args] = engineCommand(settings, opts);
  const child = spawn(program!, args, {
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: engineEnv(settings),
  });

  const stdoutLines = new LineSplitter();
  const stderr = new TailBuffer(opts.stderrTailBytes ?? 16 * 1024);
  let stdout = '';
  let result: EngineExit['result'] = null;
  let error: EngineErrorEvent | null = null;

  const handleLine = (line: string): void => {
    const event = parseEngineLine(line);
    if (event === null) {
      opts.onStrayLine?.(line);
      return;
    }
    if (event.event === 'result') result = event;
    if (event.event === 'error') error = event;
    opts.onEvent?.(event);
  };

  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    if (opts.collectStdout !== undefined && stdout.length < opts.collectStdout) stdout += chunk;
    for (const line of stdoutLines.push(chunk)) handleLine(line);
  });
  child.stderr!.on('data', (chunk: string) => stderr.push(chunk));

  const done = new Promise<EngineExit>((resolve) => {
    child.once('error', (err) => {
      resolve({ code: null, signal: null, stderrTail: `could not start ${program}: ${err.message}`, result: null, error: null });
    });
    // 'close' (not 'exit') waits until stdout is drained, so the result line is never lost.
    child.once('close', (code, signal) => {
      for (const line of stdoutLines.flush()) handleLine(line);
      resolve({
        code,
        signal,
        stderrTail: stderr.toString(),
        result,
        error,
        memoryLimitMb: settings.memoryLimitMb,
        ...(opts.collectStdout !== undefined ? { stdout } : {}),
      });
    });
  });

  if (child.pid === undefined) {
    // spawn() reports ENOENT/EACCES asynchronously through 'error'.
    throw new EngineCrashError(`could not start the engine interpreter ${settings.python} (check ENGINE_PYTHON)`);
  }
  const engine = new EngineProcess(child, done, opts.killGraceMs ?? 5000);
  if (opts.timeoutMs !== undefined) {
    const timer = setTimeout(() => void engine.kill('timeout'), opts.timeoutMs);
    void engine.done.finally(() => clearTimeout(timer));
  }
  if (opts.signal) {
    const onAbort = () => void engine.kill('abort');
    if (opts.signal.aborted) onAbort();
    else {
      opts.signal.addEventListener('abort', onAbort, { once: true });
      void engine.done.finally(() => opts.signal?.removeEventListener('abort', onAbort));
    }
  }
  return engine;
}

/** Starts the engine and waits for its exit. */
export function runEngine(settings: EngineSettings, opts: EngineRunOptions): Promise<EngineExit> {
  return startEngine(settings, opts).done;
}

/**
 * A command whose output is JSON or files (analyze, candidates, compress): its stdout on exit 0; otherwise
 * the classified error (BadInputError, ResourceExhaustedError, EngineCrashError). An abort rejects with the
 * signal's reason, a timeout with EngineCrashError.
 */
export async function runEngineCommand(settings: EngineSettings, opts: EngineRunOptions): Promise<string> {
  const exit = await runEngine(settings, { collectStdout: 64 * 1024 * 1024, ...opts });
  if (exit.killedBy === 'abort') throw opts.signal?.reason ?? new Error('aborted');
  if (exit.killedBy === 'timeout') throw new EngineCrashError(`tuckerize ${opts.args[0] ?? ''} took longer than ${opts.timeoutMs} ms and was stopped`);
  const failure = exit.code === 0 ? null : classifyExit(exit);
  if (failure) throw failure;
  return exit.stdout ?? '';
}

/**
 * The engine runs detached, so it outlives a worker killed with SIGKILL. Before another attempt of the same
 * job starts an engine in the same directories, the old one must go: its process group is recorded here.
 */
export async function recordEngine(pidFile: string, pgid: number, jobFile: string): Promise<void> {
  const tmp = `${pidFile}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify({ pgid, host: os.hostname(), jobFile }));
  await rename(tmp, pidFile);
}

/**
 * Kills the engine recorded in `pidFile` if it still runs on this host for this job file (the command line
 * is checked, so a recycled pid of an unrelated process is left alone). Returns the pgid it killed.
 */
export async function killStaleEngine(pidFile: string, jobFile: string, waitMs = 10_000): Promise<number | null> {
  let record: { pgid?: unknown; host?: unknown };
  try {
    record = JSON.parse(await readFile(pidFile, 'utf8')) as typeof record;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || err instanceof SyntaxError) return null;
    throw err;
  }
  const pgid = record.pgid;
  if (typeof pgid !== 'number' || !Number.isInteger(pgid) || pgid <= 1 || record.host !== os.hostname()) return null;
  let cmdline: string;
  try {
    cmdline = (await readFile(`/proc/${pgid}/cmdline`, 'utf8')).split('\0').join(' ');
  } catch {
    return null; // gone (or no /proc: nothing we can verify, so nothing we may kill)
  }
  if (!cmdline.includes('tuckerize') || !cmdline.includes(jobFile)) return null;
  signalGroup(pgid, 'SIGKILL');
  const deadline = Date.now() + waitMs;
  while (processGroupAlive(pgid) && Date.now() < deadline) await sleep(50);
  return pgid;
}
