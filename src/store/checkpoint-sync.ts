// Engine checkpoints travel through the artifact store, so a job interrupted on one host resumes on another.
// The engine writes its checkpoints atomically into the job's work directory (rewrite.onnx +
// rewrite.plan.json after the rewrite, finetune.ckpt while fine-tuning); this copies every new or changed
// one to checkpoints/<jobId>/<name> while the engine runs and when an attempt ends, and copies them back
// into an empty work directory before the next attempt, on whichever worker it lands.
import type { Stats } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { checkpointKeyFor, type ArtifactStore } from './artifacts.js';

/** Names the engine writes through temp files (atomic.py: .name.XXXX.tmp; checkpoints.py: name.tmp). */
const CHECKPOINT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const TEMP_NAME = /\.(tmp|part)$/;

export class CheckpointSync {
  private readonly uploaded = new Map<string, string>();
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> = Promise.resolve();

  constructor(
    private readonly store: ArtifactStore,
    private readonly jobId: string,
    private readonly workDir: string,
    private readonly logger: Logger,
  ) {}

  private get prefix(): string {
    return `checkpoints/${this.jobId}/`;
  }

  /** Copies the stored checkpoints into the work directory where it lacks them; returns their names. */
  async restore(): Promise<string[]> {
    const restored: string[] = [];
    for (const key of await this.store.list(this.prefix)) {
      const name = key.slice(this.prefix.length);
      const target = path.join(this.workDir, name);
      const local = await stat(target).catch(() => null);
      if (local) continue; // this host ran an earlier attempt: its own copy is at least as new
      await this.store.fetchTo(key, target);
      const info = await stat(target);
      this.uploaded.set(name, fingerprint(info));
      restored.push(name);
    }
    if (restored.length > 0) this.logger.info({ restored }, 'engine checkpoints restored from the store');
    return restored;
  }

  /** Uploads new or changed checkpoints every `everyMs` until stop(). */
  start(everyMs: number): void {
    this.timer = setInterval(() => void this.flush(), everyMs);
    this.timer.unref();
  }

  /** Uploads what changed since the last upload; runs one at a time, never throws (logs). */
  flush(): Promise<void> {
    this.running = this.running.then(() =>
      this.upload().catch((err: unknown) => this.logger.warn({ err }, 'engine checkpoints not copied to the store; a retry elsewhere starts over')),
    );
    return this.running;
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
  }

  /** The job is over: its checkpoints are of no further use. */
  async discard(): Promise<void> {
    await this.stop();
    await this.store.removePrefix(this.prefix);
  }

  private async upload(): Promise<void> {
    let names: string[];
    try {
      names = await readdir(this.workDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    const files: { name: string; file: string; info: Stats }[] = [];
    for (const name of names) {
      if (!CHECKPOINT_NAME.test(name) || TEMP_NAME.test(name)) continue;
      const file = path.join(this.workDir, name);
      const info = await stat(file).catch(() => null);
      if (info?.isFile()) files.push({ name, file, info });
    }
    // In the order the engine wrote them: a later checkpoint in the store implies the earlier ones are there
    // (fine-tuning's finetune.ckpt builds on the rewrite's rewrite.onnx + rewrite.plan.json).
    files.sort((a, b) => a.info.mtimeMs - b.info.mtimeMs);
    for (const { name, file, info } of files) {
      const print = fingerprint(info);
      if (this.uploaded.get(name) === print) continue;
      await this.store.putFile(checkpointKeyFor(this.jobId, name), file);
      this.uploaded.set(name, print);
      this.logger.debug({ name, bytes: info.size }, 'engine checkpoint copied to the store');
    }
  }
}

function fingerprint(info: { size: number; mtimeMs: number }): string {
  return `${info.size}:${info.mtimeMs}`;
}
