// A throwaway Redis for tests that stop or restart it: its own port and directory, nothing kept on disk
// (like the machine's Redis, so a restart loses every key, the worst case for BullMQ).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort, portOpen } from './ports.js';
import { waitUntil } from './wait.js';

const START_TIMEOUT_MS = 10_000;

export class ThrowawayRedis {
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private output = '';

  private constructor(readonly port: number, readonly dir: string) {}

  static async create(): Promise<ThrowawayRedis> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-fault-redis-'));
    const redis = new ThrowawayRedis(await freePort(), dir);
    try {
      await redis.start();
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    return redis;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.child !== null;
  }

  async start(): Promise<void> {
    if (this.child) throw new Error(`redis on port ${this.port} is already running`);
    const child = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--dir', this.dir],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (this.output = (this.output + chunk).slice(-8000)));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (this.output = (this.output + chunk).slice(-8000)));
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    await waitUntil(
      `redis-server to accept connections on port ${this.port}`,
      async () => {
        if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}: ${this.output}`);
        return portOpen(this.port);
      },
      { timeoutMs: START_TIMEOUT_MS, intervalMs: 50 },
    );
  }

  /** SIGKILL by default: the abrupt case (a crash, an OOM kill); clients see connections reset. */
  async stop(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (!child) return;
    child.kill(signal);
    await this.exited;
    this.child = null;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  async destroy(): Promise<void> {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}
