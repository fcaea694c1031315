// Content-addressed artifact store on the filesystem: objects live at root/objects/ab/<sha256>. Writes go to
// root/tmp first (hashed while streaming, fsynced) and are renamed into place, so a reader never sees a
// partial object and a crash leaves only temp files, which cleanupTemp removes.
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream, type ReadStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export interface StoredObject {
  sha256: string;
  bytes: number;
  /** store-relative key, e.g. objects/ab/ab12... */
  key: string;
}

export class PayloadTooLargeError extends Error {
  override name = 'PayloadTooLargeError';
  constructor(readonly limitBytes: number) {
    super(`upload exceeds the limit of ${limitBytes} bytes`);
  }
}

export class ArtifactNotFoundError extends Error {
  override name = 'ArtifactNotFoundError';
}

const KEY_PATTERN = /^objects\/[0-9a-f]{2}\/[0-9a-f]{64}$/;

export class ArtifactStore {
  readonly rootDir: string;
  private readonly tmpDir: string;

  constructor(rootDir: string) {
    this.rootDir = path.resolve(rootDir);
    this.tmpDir = path.join(this.rootDir, 'tmp');
  }

  static keyFor(sha256: string): string {
    return `objects/${sha256.slice(0, 2)}/${sha256}`;
  }

  /** Absolute path of an object. Rejects keys that are not store keys, so a key can never escape the root. */
  pathFor(key: string): string {
    if (!KEY_PATTERN.test(key)) throw new ArtifactNotFoundError(`not an artifact key: ${JSON.stringify(key)}`);
    return path.join(this.rootDir, key);
  }

  async exists(key: string): Promise<boolean> {
    try {
      return (await stat(this.pathFor(key))).isFile();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  async openRead(key: string): Promise<ReadStream> {
    const file = this.pathFor(key);
    if (!(await this.exists(key))) throw new ArtifactNotFoundError(`artifact ${key} is missing from the store`);
    return createReadStream(file);
  }

  /** A fresh temp path inside the store (same filesystem as objects/, so the final rename is atomic). */
  async tempPath(): Promise<string> {
    await mkdir(this.tmpDir, { recursive: true });
    return path.join(this.tmpDir, `${Date.now()}-${randomUUID()}.part`);
  }

  /**
   * Streams `source` into the store, hashing as it goes. Past `limitBytes` the stream is aborted, the temp file
   * removed and PayloadTooLargeError thrown. When the object already exists the new copy is dropped.
   */
  async ingestStream(source: Readable, limitBytes = Number.POSITIVE_INFINITY): Promise<StoredObject> {
    const tmp = await this.tempPath();
    const hash = createHash('sha256');
    let bytes = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        bytes += chunk.length;
        if (bytes > limitBytes) {
          callback(new PayloadTooLargeError(limitBytes));
          return;
        }
        hash.update(chunk);
        callback(null, chunk);
      },
    });
    try {
      await pipeline(source, meter, createWriteStream(tmp, { flags: 'wx' }));
      // Some producers (e.g. @fastify/multipart) end the stream early instead of erroring at their own limit.
      if ((source as Readable & { truncated?: boolean }).truncated) throw new PayloadTooLargeError(limitBytes);
      await fsyncFile(tmp);
      return await this.commit(tmp, hash.digest('hex'), bytes);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  /** Copies a local file (e.g. an engine output) into the store. The source file is left in place. */
  async ingestFile(filePath: string): Promise<StoredObject> {
    return this.ingestStream(createReadStream(filePath));
  }

  /** Removes an object (used when an upload is refused after it was stored and no row references it). */
  async remove(key: string): Promise<void> {
    await rm(this.pathFor(key), { force: true });
  }

  /** Deletes temp files older than `olderThanMs` (left behind by crashed uploads). Returns how many. */
  async cleanupTemp(olderThanMs: number): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.tmpDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw err;
    }
    const cutoff = Date.now() - olderThanMs;
    let removed = 0;
    for (const name of names) {
      const file = path.join(this.tmpDir, name);
      try {
        const info = await stat(file);
        if (info.mtimeMs <= cutoff) {
          await rm(file, { force: true, recursive: true });
          removed += 1;
        }
      } catch (err) {
        // Another process finished or removed it between readdir and stat.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return removed;
  }

  private async commit(tmp: string, sha256: string, bytes: number): Promise<StoredObject> {
    const key = ArtifactStore.keyFor(sha256);
    const finalPath = this.pathFor(key);
    await mkdir(path.dirname(finalPath), { recursive: true });
    if (await this.exists(key)) {
      await rm(tmp, { force: true });
    } else {
      await rename(tmp, finalPath);
      await fsyncDir(path.dirname(finalPath));
    }
    return { sha256, bytes, key };
  }
}

async function fsyncFile(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Makes the rename durable: without it a power loss can forget the new directory entry. */
async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
