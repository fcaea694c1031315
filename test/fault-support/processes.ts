// Child processes of a fault test: the real worker and API entry points run as separate Node processes
// (so SIGKILL hits exactly what a crash would), their output kept for the failure message, and every one
// of them stopped in cleanup, including engines a killed worker left behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { waitUntil } from './wait.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Keeps the last `limit` characters of a child's stdout+stderr. */
class OutputTail {
  private text = '';
  constructor(private readonly limit = 256 * 1024) {}
  push(chunk: string): void {
    this.text += chunk;
    if (this.text.length > 2 * this.limit) this.text = this.text.slice(-this.limit);
  }
  toString(): string {
    return this.text.slice(-this.limit);
  }
}

export class ServiceProcess {
  readonly pid: number;
  readonly exited: Promise<ExitStatus>;
  private status: ExitStatus | null = null;
  private readonly tail = new OutputTail();

  private constructor(readonly name: string, private readonly child: ChildProcess) {
    if (child.pid === undefined) throw new Error(`${name}: spawn failed (no pid)`);
    this.pid = child.pid;
    child.stdout?.setEncoding('utf8');
    child.stderr?.setEncoding('utf8');
    child.stdout?.on('data', (chunk: string) => this.tail.push(chunk));
    child.stderr?.on('data', (chunk: string) => this.tail.push(chunk));
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.status = { code, signal };
        resolve(this.status);
      });
    });
  }

  static spawn(name: string, command: string, args: string[], options: { env: NodeJS.ProcessEnv; cwd?: string }): ServiceProcess {
    const child = spawn(command, args, {
      cwd: options.cwd ?? REPO_ROOT,
      env: options.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return new ServiceProcess(name, child);
  }

  get alive(): boolean {
    return this.status === null;
  }

  get exitStatus(): ExitStatus | null {
    return this.status;
  }

  output(): string {
    return this.tail.toString();
  }

  /** Waits until the child printed a line matching `pattern`; fails early, with its output, if it exits. */
  async waitForOutput(pattern: RegExp, what: string, timeoutMs: number): Promise<void> {
    await waitUntil(
      `${this.name} to print ${what}`,
      () => {
        if (pattern.test(this.tail.toString())) return true;
        if (!this.alive) {
          throw new Error(`${this.name} exited (${JSON.stringify(this.status)}) before printing ${what}:\n${this.output().slice(-4000)}`);
        }
        return false;
      },
      { timeoutMs },
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n--- ${this.name} output ---\n${this.output().slice(-4000)}`);
    });
  }

  /** Sends `signal` and waits for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<ExitStatus> {
    if (this.status) return this.status;
    this.child.kill(signal);
    return this.exited;
  }

  /** SIGTERM, then SIGKILL when it has not exited after `graceMs`. */
  async stop(graceMs = 10_000): Promise<ExitStatus> {
    if (this.status) return this.status;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Environment for a service child: the config variables plus what Node and the engine need to run. */
export function serviceEnv(config: Record<string, string>): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    LANG: 'C.UTF-8',
    ONNXRUNTIME_NODE_INSTALL_CUDA: 'skip',
    ...config,
  };
}

/** The real worker process (`src/worker.ts`, what `npm run worker` runs after the build). */
export function spawnWorker(name: string, env: Record<string, string>): ServiceProcess {
  return ServiceProcess.spawn(name, process.execPath, ['--import', 'tsx', 'src/worker.ts'], { env: serviceEnv(env) });
}

/**
 * The real worker (`src/worker.ts`) with short BullMQ lock/stall settings, for the stall-recovery test:
 * BullMQ's defaults (30 s lock, 30 s stall check) would make it wait up to a minute for the handover.
 */
export function spawnWorkerWithStallSettings(
  name: string,
  env: Record<string, string>,
  settings: { lockDurationMs: number; stalledIntervalMs: number },
): ServiceProcess {
  return spawnWorker(name, {
    ...env,
    WORKER_LOCK_DURATION_MS: String(settings.lockDurationMs),
    WORKER_STALLED_INTERVAL_MS: String(settings.stalledIntervalMs),
  });
}

/** The real API process (`src/server.ts`). */
export function spawnApi(name: string, env: Record<string, string>): ServiceProcess {
  return ServiceProcess.spawn(name, process.execPath, ['--import', 'tsx', 'src/server.ts'], { env: serviceEnv(env) });
}

/**
 * Engine processes (`python3 -m tuckerize run <storageDir>/jobs/<id>/job.json`) of one test's storage
 * dir, found through /proc so that an engine orphaned by a killed worker is found too.
 */
export async function engineProcesses(storageDir: string): Promise<Array<{ pid: number; pgid: number; jobFile: string }>> {
  const found: Array<{ pid: number; pgid: number; jobFile: string }> = [];
  const prefix = path.join(storageDir, 'jobs') + path.sep;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    let stat: string;
    try {
      argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0');
      stat = await readFile(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited while we looked
    }
    const runAt = argv.indexOf('run');
    if (runAt < 2 || argv[runAt - 1] !== 'tuckerize' || argv[runAt - 2] !== '-m') continue;
    const jobFile = argv[runAt + 1] ?? '';
    if (!jobFile.startsWith(prefix)) continue;
    // /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may contain spaces, so parse after ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z') continue; // a zombie has exited already
    found.push({ pid: Number(entry), pgid: Number(fields[2]), jobFile });
  }
  return found;
}

/** SIGKILLs every engine process group of `storageDir`; returns how many groups it hit. */
export async function killEngines(storageDir: string): Promise<number> {
  const groups = new Set((await engineProcesses(storageDir)).map((p) => p.pgid));
  for (const pgid of groups) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }
  return groups.size;
}

/**
 * Undo stack for a scenario: every started resource registers its teardown at once, and `run` tears down
 * in reverse order, continuing past failures and reporting them all together.
 */
export class Teardown {
  private readonly steps: Array<{ what: string; fn: () => Promise<unknown> }> = [];

  defer(what: string, fn: () => Promise<unknown>): void {
    this.steps.push({ what, fn });
  }

  async run(): Promise<void> {
    const failures: string[] = [];
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.fn();
      } catch (err) {
        failures.push(`${step.what}: ${(err as Error).message}`);
      }
    }
    if (failures.length > 0) throw new Error(`teardown failed: ${failures.join('; ')}`);
  }
}
