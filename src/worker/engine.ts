// Spawns the Python engine (`python3 -m tuckerize run job.json`) and relays its JSON-lines stdout.
// The engine runs in its own process group so that cancel/timeout can kill it together with any
// children it forked (data loader workers, onnx checkers), not just the interpreter.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, rename, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { UnrecoverableError } from 'bullmq';

/** One line of the engine's stdout protocol (see DESIGN.md, engine contract). */
export type EngineEvent =
  | { event: 'progress'; stage: string; done: number; total: number; message?: string; [k: string]: unknown }
  | { event: 'log'; level: 'info' | 'warn'; message: string; [k: string]: unknown }
  | {
      event: 'result';
      artifact: string;
      plan: string;
      report: string;
      summary: Record<string, unknown>;
      [k: string]: unknown;
    };

/** Exit 2: the input cannot be processed; BullMQ must not retry it. */
export class BadInputError extends UnrecoverableError {
  override readonly name = 'BadInputError';
}

/** Exit 1 or death by signal: a crash, worth a retry (the engine resumes from its checkpoints). */
export class EngineCrashError extends Error {
  override readonly name = 'EngineCrashError';
}

export interface EngineExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Last bytes of stderr, for the job's error message. */
  stderrTail: string;
  result: Extract<EngineEvent, { event: 'result' }> | null;
}

export interface EngineSpawnOptions {
  python: string;
  engineDir: string;
  jobFile: string;
  cwd: string;
  /** Called for every well-formed protocol line, in order. */
  onEvent: (event: EngineEvent) => void;
  /** Called for stdout lines that are not protocol JSON (print() left in a library, warnings). */
  onStrayLine?: (line: string) => void;
  /** Extra environment for the engine (threads for BLAS, etc.). */
  env?: NodeJS.ProcessEnv;
  stderrTailBytes?: number;
  /** Between SIGTERM and SIGKILL when killing. */
  killGraceMs?: number;
}

/** Splits a byte stream into lines, keeping an incomplete tail until its newline arrives. */
export class LineSplitter {
  private pending = '';

  constructor(private readonly maxLineChars = 1 << 20) {}

  push(chunk: string): string[] {
    const text = this.pending + chunk;
    const parts = text.split('\n');
    this.pending = parts.pop() ?? '';
    // A runaway line without newline (a tensor dumped by mistake) must not grow memory unbounded.
    if (this.pending.length > this.maxLineChars) {
      parts.push(this.pending);
      this.pending = '';
    }
    return parts.map((line) => line.replace(/\r$/, '')).filter((line) => line.length > 0);
  }

  /** The unterminated last line, if the stream ended without a newline. */
  flush(): string[] {
    const rest = this.pending.replace(/\r$/, '');
    this.pending = '';
    return rest.length > 0 ? [rest] : [];
  }
}

/** Parses one stdout line; null when it is not a protocol event. */
export function parseEngineLine(line: string): EngineEvent | null {
  if (!line.startsWith('{')) return null;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const obj = value as Record<string, unknown>;
  switch (obj.event) {
    case 'progress':
      if (typeof obj.stage === 'string' && typeof obj.done === 'number' && typeof obj.total === 'number') {
        return obj as EngineEvent;
      }
      return null;
    case 'log':
      if (typeof obj.message === 'string') {
        return { ...obj, event: 'log', level: obj.level === 'warn' ? 'warn' : 'info', message: obj.message };
      }
      return null;
    case 'result':
      if (typeof obj.artifact === 'string' && typeof obj.report === 'string') {
        return {
          ...obj,
          event: 'result',
          artifact: obj.artifact,
          plan: typeof obj.plan === 'string' ? obj.plan : 'plan.json',
          report: obj.report,
          summary: typeof obj.summary === 'object' && obj.summary !== null ? (obj.summary as Record<string, unknown>) : {},
        };
      }
      return null;
    default:
      return null;
  }
}

/** Keeps the last `limit` characters of a stream. */
class TailBuffer {
  private text = '';
  constructor(private readonly limit: number) {}
  push(chunk: string): void {
    this.text += chunk;
    if (this.text.length > 2 * this.limit) this.text = this.text.slice(-this.limit);
  }
  toString(): string {
    return this.text.slice(-this.limit);
  }
}

/** The last non-empty stderr line: the engine prints its one-line error there (exit 2). */
export function lastLine(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  return lines[lines.length - 1] ?? '';
}

/**
 * Maps the engine's exit to the outcome BullMQ needs: nothing (success), an unrecoverable bad-input
 * error, or a retryable crash. When the worker itself killed the engine (cancel, timeout) the caller
 * reports that instead and does not ask this function.
 */
export function classifyExit(exit: EngineExit): BadInputError | EngineCrashError | null {
  if (exit.code === 0) {
    if (exit.result === null) {
      return new EngineCrashError('engine exited 0 without a result line; see the job events for its output');
    }
    return null;
  }
  if (exit.code === 2) {
    const line = lastLine(exit.stderrTail);
    return new BadInputError(line || 'engine refused the input (exit 2) without a message');
  }
  const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
  const tail = lastLine(exit.stderrTail);
  return new EngineCrashError(tail ? `engine ${how}: ${tail}` : `engine ${how}`);
}

export class EngineProcess {
  readonly pid: number;
  readonly done: Promise<EngineExit>;
  private exited = false;
  private killTimer: NodeJS.Timeout | null = null;

  constructor(child: ChildProcess, done: Promise<EngineExit>, private readonly killGraceMs: number) {
    if (child.pid === undefined) throw new Error('engine process has no pid');
    this.pid = child.pid;
    this.done = done.finally(() => {
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
  async kill(): Promise<EngineExit> {
    if (!this.exited) {
      signalGroup(this.pgid, 'SIGTERM');
      this.killTimer = setTimeout(() => signalGroup(this.pgid, 'SIGKILL'), this.killGraceMs);
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

export function spawnEngine(opts: EngineSpawnOptions): EngineProcess {
  const child = spawn(opts.python, ['-m', 'tuckerize', 'run', opts.jobFile], {
    cwd: opts.cwd,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...opts.env,
      PYTHONPATH: opts.engineDir,
      // Progress must arrive as it happens, not when a 4 KB pipe buffer fills.
      PYTHONUNBUFFERED: '1',
    },
  });

  const stdout = new LineSplitter();
  const stderr = new TailBuffer(opts.stderrTailBytes ?? 16 * 1024);
  let result: EngineExit['result'] = null;

  const handleLine = (line: string): void => {
    const event = parseEngineLine(line);
    if (event === null) {
      opts.onStrayLine?.(line);
      return;
    }
    if (event.event === 'result') result = event;
    opts.onEvent(event);
  };

  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    for (const line of stdout.push(chunk)) handleLine(line);
  });
  child.stderr!.on('data', (chunk: string) => stderr.push(chunk));

  const done = new Promise<EngineExit>((resolve, reject) => {
    child.once('error', reject);
    // 'close' (not 'exit') waits until stdout is drained, so the result line is never lost.
    child.once('close', (code, signal) => {
      for (const line of stdout.flush()) handleLine(line);
      resolve({ code, signal, stderrTail: stderr.toString(), result });
    });
  });

  if (child.pid === undefined) {
    // spawn() reports ENOENT/EACCES asynchronously; the 'error' handler above rejects `done`.
    done.catch(() => undefined);
    throw new EngineCrashError(`could not start the engine interpreter ${opts.python} (check ENGINE_PYTHON)`);
  }
  return new EngineProcess(child, done, opts.killGraceMs ?? 5000);
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
