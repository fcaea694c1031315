// The artifact store: content-addressed objects (uploads, compressed models) plus named per-job objects
// (engine checkpoints). Code outside src/store/ sees only the ArtifactStore interface; FileStore keeps
// objects on a filesystem, S3Store (s3.ts) in an S3 bucket. createStore (index.ts) picks one from the config.
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, link, mkdir, open, readdir, rename, rm, stat, utimes } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export interface StoredObject {
  sha256: string;
  bytes: number;
  /** store-relative key, e.g. objects/ab/ab12... */
  key: string;
}

/** Inclusive byte range, as in an HTTP Range header. */
export interface ByteRange {
  start: number;
  end: number;
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

export interface ArtifactStore {
  /** Where the objects live, for logs: file:///abs/path or s3://bucket/prefix. */
  readonly url: string;
  /**
   * Streams `source` into the store, hashing as it goes, under its content address. Past `limitBytes` the
   * stream is aborted, nothing is kept and PayloadTooLargeError is thrown.
   */
  ingestStream(source: Readable, limitBytes?: number): Promise<StoredObject>;
  /** Copies a local file (e.g. an engine output) into the store under its content address. */
  ingestFile(filePath: string): Promise<StoredObject>;
  exists(key: string): Promise<boolean>;
  /** The object's bytes, or only `range` of them. */
  openRead(key: string, range?: ByteRange): Promise<Readable>;
  /**
   * A local file holding the object, for readers that need a path (ONNX and archive inspection). The file
   * is the store's own (filesystem) or a cached copy (S3); callers only read it.
   */
  localPath(key: string): Promise<string>;
  /** Writes the object to `target` (atomically; a hard link where the filesystem allows). */
  fetchTo(key: string, target: string): Promise<void>;
  /** A short-lived URL a client can download the object from, or null when the store cannot give one. */
  downloadUrl(key: string, fileName: string): Promise<string | null>;
  /** Stores a local file under a named key (checkpoints/<jobId>/<name>), replacing what was there. */
  putFile(key: string, filePath: string): Promise<void>;
  /** Keys under a named prefix (checkpoints/<jobId>/). */
  list(prefix: string): Promise<string[]>;
  remove(key: string): Promise<void>;
  removePrefix(prefix: string): Promise<void>;
  /** Deletes temp files and local copies not used for `olderThanMs`. Returns how many. */
  cleanupTemp(olderThanMs: number): Promise<number>;
}

const OBJECT_KEY = /^objects\/[0-9a-f]{2}\/[0-9a-f]{64}$/;
const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const NAMED_KEY = new RegExp(`^checkpoints/${UUID}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`);
const NAMED_PREFIX = new RegExp(`^checkpoints/${UUID}/$`);

export function objectKeyFor(sha256: string): string {
  return `objects/${sha256.slice(0, 2)}/${sha256}`;
}

export function checkpointKeyFor(jobId: string, name: string): string {
  return `checkpoints/${jobId}/${name}`;
}

/** Rejects anything that is not a store key, so a key can never escape the store's root or prefix. */
export function assertKey(key: string): void {
  if (!OBJECT_KEY.test(key) && !NAMED_KEY.test(key)) throw new ArtifactNotFoundError(`not an artifact key: ${JSON.stringify(key)}`);
}

export function assertPrefix(prefix: string): void {
  if (!NAMED_PREFIX.test(prefix)) throw new ArtifactNotFoundError(`not a key prefix: ${JSON.stringify(prefix)}`);
}

export function isObjectKey(key: string): boolean {
  return OBJECT_KEY.test(key);
}

/**
 * A pass-through stream that hashes and counts what flows through it and fails past `limitBytes`.
 * `sink`, when given, receives every chunk first (a local copy written in step with the stream).
 */
export class HashingMeter extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;

  constructor(private readonly limitBytes = Number.POSITIVE_INFINITY, private readonly sink?: (chunk: Buffer) => Promise<void>) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null, data?: Buffer) => void): void {
    this.bytes += chunk.length;
    if (this.bytes > this.limitBytes) {
      callback(new PayloadTooLargeError(this.limitBytes));
      return;
    }
    this.hash.update(chunk);
    if (!this.sink) {
      callback(null, chunk);
      return;
    }
    this.sink(chunk).then(
      () => callback(null, chunk),
      (err: unknown) => callback(err instanceof Error ? err : new Error(String(err))),
    );
  }
}

/** Some producers (e.g. @fastify/multipart) end the stream early instead of erroring at their own limit. */
export function wasTruncated(source: Readable): boolean {
  return (source as Readable & { truncated?: boolean }).truncated === true;
}

/**
 * Objects at root/objects/ab/<sha256>, named objects at root/checkpoints/<jobId>/<name>. Writes go to
 * root/tmp first (hashed while streaming, fsynced) and are renamed into place, so a reader never sees a
 * partial object and a crash leaves only temp files, which cleanupTemp removes.
 */
export class FileStore implements ArtifactStore {
  readonly rootDir: string;
  readonly url: string;
  private readonly tmpDir: string;

  constructor(rootDir: string) {
    this.rootDir = path.resolve(rootDir);
    this.url = `file://${this.rootDir}`;
    this.tmpDir = path.join(this.rootDir, 'tmp');
  }

  /** Absolute path of an object. */
  pathFor(key: string): string {
    assertKey(key);
    return path.join(this.rootDir, key);
  }

  async exists(key: string): Promise<boolean> {
    return isFile(this.pathFor(key));
  }

  async openRead(key: string, range?: ByteRange): Promise<Readable> {
    const file = this.pathFor(key);
    if (!(await this.exists(key))) throw new ArtifactNotFoundError(`artifact ${key} is missing from the store`);
    return createReadStream(file, range ? { start: range.start, end: range.end } : {});
  }

  async localPath(key: string): Promise<string> {
    if (!(await this.exists(key))) throw new ArtifactNotFoundError(`artifact ${key} is missing from the store`);
    return this.pathFor(key);
  }

  async fetchTo(key: string, target: string): Promise<void> {
    await linkOrCopy(await this.localPath(key), target);
  }

  async downloadUrl(): Promise<string | null> {
    return null;
  }

  async ingestStream(source: Readable, limitBytes = Number.POSITIVE_INFINITY): Promise<StoredObject> {
    const tmp = await this.tempPath();
    const meter = new HashingMeter(limitBytes);
    const out = createWriteStream(tmp, { flags: 'wx' });
    try {
      await pipeline(source, meter, out);
      if (wasTruncated(source)) throw new PayloadTooLargeError(limitBytes);
      await fsyncPath(tmp);
      const sha256 = meter.hash.digest('hex');
      const key = objectKeyFor(sha256);
      await this.commit(tmp, key, { replace: false });
      return { sha256, bytes: meter.bytes, key };
    } catch (err) {
      // pipeline rejects at the first error, before the destroyed file stream has settled: one still
      // opening (a body refused at once, e.g. over the size limit) would create the file after the rm.
      if (!out.closed) await new Promise<void>((resolve) => out.once('close', () => resolve()));
      await rm(tmp, { force: true });
      throw err;
    }
  }

  async ingestFile(filePath: string): Promise<StoredObject> {
    return this.ingestStream(createReadStream(filePath));
  }

  async putFile(key: string, filePath: string): Promise<void> {
    assertKey(key);
    const tmp = await this.tempPath();
    try {
      await copyFile(filePath, tmp);
      await fsyncPath(tmp);
      await this.commit(tmp, key, { replace: true });
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  async list(prefix: string): Promise<string[]> {
    assertPrefix(prefix);
    try {
      const names = await readdir(path.join(this.rootDir, prefix));
      return names.map((n) => `${prefix}${n}`).filter((k) => NAMED_KEY.test(k));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }

  async remove(key: string): Promise<void> {
    await rm(this.pathFor(key), { force: true });
  }

  async removePrefix(prefix: string): Promise<void> {
    assertPrefix(prefix);
    await rm(path.join(this.rootDir, prefix), { recursive: true, force: true });
  }

  async cleanupTemp(olderThanMs: number): Promise<number> {
    return removeOlderThan(this.tmpDir, olderThanMs);
  }

  /** A fresh temp path inside the store (same filesystem as objects/, so the final rename is atomic). */
  async tempPath(): Promise<string> {
    await mkdir(this.tmpDir, { recursive: true });
    return path.join(this.tmpDir, `${Date.now()}-${randomUUID()}.part`);
  }

  private async commit(tmp: string, key: string, { replace }: { replace: boolean }): Promise<void> {
    const finalPath = this.pathFor(key);
    await mkdir(path.dirname(finalPath), { recursive: true });
    if (!replace && (await this.exists(key))) {
      await rm(tmp, { force: true });
      return;
    }
    await rename(tmp, finalPath);
    await fsyncPath(path.dirname(finalPath));
  }
}

export async function isFile(file: string): Promise<boolean> {
  try {
    return (await stat(file)).isFile();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Hard link when on the same filesystem (no copy of a 500 MB model), copy otherwise; tmp + rename. */
export async function linkOrCopy(source: string, target: string): Promise<void> {
  await mkdir(path.dirname(target), { recursive: true });
  const tmp = `${target}.${randomUUID()}.tmp`;
  try {
    await link(source, tmp);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'EMLINK') throw err;
    await copyFile(source, tmp);
  }
  await rename(tmp, target);
}

/** Marks a cached file as used now, so cleanupTemp keeps it. */
export async function touch(file: string): Promise<void> {
  const now = new Date();
  await utimes(file, now, now);
}

/** Removes entries of `dir` (recursively for directories) last modified before now - olderThanMs. */
export async function removeOlderThan(dir: string, olderThanMs: number): Promise<number> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  const cutoff = Date.now() - olderThanMs;
  let removed = 0;
  for (const name of names) {
    const file = path.join(dir, name);
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

/** fsync of a file, or of a directory (makes a rename durable: a power loss can forget the new entry). */
export async function fsyncPath(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
