// The artifact store in an S3 bucket (AWS S3, MinIO or any S3-compatible store), for API replicas and
// workers on different hosts. Uploads stream to a temporary key while their sha256 is computed and are then
// copied server-side to their content address; the bytes are also kept in a local cache (WORK_DIR/cache),
// because inspection and the engine need files. Credentials come from the AWS SDK's default chain.
import { randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client,
  type _Object,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import {
  ArtifactNotFoundError,
  assertKey,
  assertPrefix,
  fsyncPath,
  HashingMeter,
  isFile,
  isObjectKey,
  linkOrCopy,
  objectKeyFor,
  PayloadTooLargeError,
  removeOlderThan,
  touch,
  wasTruncated,
  type ArtifactStore,
  type ByteRange,
  type StoredObject,
} from './artifacts.js';

export interface S3StoreOptions {
  bucket: string;
  /** '' or a prefix ending in '/' */
  prefix: string;
  endpoint?: string | undefined;
  region: string;
  forcePathStyle: boolean;
  /** downloadUrl answers a presigned URL instead of null */
  presignDownloads: boolean;
  presignExpiresSeconds: number;
  /** local directory for the cache of objects (and its temp files) */
  cacheDir: string;
}

/** Multipart part size: S3's minimum is 5 MiB; 8 MiB keeps a 600 MB model at 75 parts. */
const PART_BYTES = 8 * 1024 * 1024;
/** Stray upload keys (a crashed API) older than this are deleted by cleanupTemp. */
const TMP_KEY_DIR = 'tmp/';

export class S3Store implements ArtifactStore {
  readonly url: string;
  private readonly client: S3Client;
  private readonly cacheTmp: string;

  constructor(private readonly options: S3StoreOptions, client?: S3Client) {
    this.url = `s3://${options.bucket}/${options.prefix}`;
    this.cacheTmp = path.join(options.cacheDir, 'tmp');
    this.client =
      client ??
      new S3Client({
        region: options.region,
        forcePathStyle: options.forcePathStyle,
        ...(options.endpoint ? { endpoint: options.endpoint } : {}),
        // S3-compatible stores (MinIO releases, Ceph) do not all accept the SDK's newer default checksums.
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      });
  }

  async exists(key: string): Promise<boolean> {
    assertKey(key);
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.options.bucket, Key: this.s3Key(key) }));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  async openRead(key: string, range?: ByteRange): Promise<Readable> {
    assertKey(key);
    try {
      const res = await this.client.send(
        new GetObjectCommand({
          Bucket: this.options.bucket,
          Key: this.s3Key(key),
          ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}),
        }),
      );
      if (!(res.Body instanceof Readable)) throw new Error(`S3 returned no body stream for ${key}`);
      return res.Body;
    } catch (err) {
      if (isNotFound(err)) throw new ArtifactNotFoundError(`artifact ${key} is missing from the store`);
      throw err;
    }
  }

  /** The cached copy, downloaded (and, for content-addressed keys, hash-checked) when missing. */
  async localPath(key: string): Promise<string> {
    assertKey(key);
    const cached = path.join(this.options.cacheDir, key);
    if (await isFile(cached)) {
      await touch(cached);
      return cached;
    }
    await this.download(key, cached);
    return cached;
  }

  async fetchTo(key: string, target: string): Promise<void> {
    if (isObjectKey(key)) {
      // Through the cache: the next job on this host with the same model or dataset skips the download.
      await linkOrCopy(await this.localPath(key), target);
    } else {
      await this.download(key, target);
    }
  }

  async downloadUrl(key: string, fileName: string): Promise<string | null> {
    assertKey(key);
    if (!this.options.presignDownloads) return null;
    const command = new GetObjectCommand({
      Bucket: this.options.bucket,
      Key: this.s3Key(key),
      ResponseContentDisposition: `attachment; filename="${fileName.replace(/["\\]/g, '_')}"`,
      ResponseContentType: 'application/octet-stream',
    });
    return getSignedUrl(this.client, command, { expiresIn: this.options.presignExpiresSeconds });
  }

  async ingestStream(source: Readable, limitBytes = Number.POSITIVE_INFINITY): Promise<StoredObject> {
    await mkdir(this.cacheTmp, { recursive: true });
    const localTmp = path.join(this.cacheTmp, `${Date.now()}-${randomUUID()}.part`);
    const uploadKey = this.s3Key(`${TMP_KEY_DIR}${Date.now()}-${randomUUID()}`);
    const local = await open(localTmp, 'wx');
    const meter = new HashingMeter(limitBytes, async (chunk) => {
      await local.write(chunk);
    });
    const body = new PassThrough();
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.options.bucket, Key: uploadKey, Body: body },
      partSize: PART_BYTES,
      queueSize: 2,
    });
    let closed = false;
    try {
      const [piped, uploaded] = await Promise.allSettled([pipeline(source, meter, body), upload.done()]);
      if (piped.status === 'rejected') {
        await upload.abort().catch(() => undefined);
        throw piped.reason;
      }
      if (uploaded.status === 'rejected') throw uploaded.reason;
      if (wasTruncated(source)) throw new PayloadTooLargeError(limitBytes);
      await local.sync();
      await local.close();
      closed = true;

      const sha256 = meter.hash.digest('hex');
      const key = objectKeyFor(sha256);
      if (!(await this.exists(key))) {
        await this.client.send(
          new CopyObjectCommand({
            Bucket: this.options.bucket,
            Key: this.s3Key(key),
            CopySource: `${this.options.bucket}/${encodeURI(uploadKey)}`,
          }),
        );
      }
      const cached = path.join(this.options.cacheDir, key);
      await mkdir(path.dirname(cached), { recursive: true });
      await rename(localTmp, cached);
      return { sha256, bytes: meter.bytes, key };
    } finally {
      if (!closed) await local.close().catch(() => undefined);
      await rm(localTmp, { force: true });
      await this.deleteS3Key(uploadKey).catch(() => undefined);
    }
  }

  async ingestFile(filePath: string): Promise<StoredObject> {
    return this.ingestStream(createReadStream(filePath));
  }

  async putFile(key: string, filePath: string): Promise<void> {
    assertKey(key);
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.options.bucket, Key: this.s3Key(key), Body: createReadStream(filePath) },
      partSize: PART_BYTES,
      queueSize: 2,
    });
    await upload.done();
  }

  async list(prefix: string): Promise<string[]> {
    assertPrefix(prefix);
    return (await this.listRaw(this.s3Key(prefix))).map((o) => o.Key!.slice(this.options.prefix.length));
  }

  async remove(key: string): Promise<void> {
    assertKey(key);
    await this.deleteS3Key(this.s3Key(key));
    await rm(path.join(this.options.cacheDir, key), { force: true });
  }

  async removePrefix(prefix: string): Promise<void> {
    for (const key of await this.list(prefix)) await this.remove(key);
  }

  /** Local temp files and cached copies unused for `olderThanMs`, and upload keys a crash left in the bucket. */
  async cleanupTemp(olderThanMs: number): Promise<number> {
    let removed = await removeOlderThan(this.cacheTmp, olderThanMs);
    for (const top of ['objects', 'checkpoints']) {
      const dir = path.join(this.options.cacheDir, top);
      let subdirs: string[] = [];
      try {
        subdirs = await readdir(dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      for (const sub of subdirs) removed += await removeOlderThan(path.join(dir, sub), olderThanMs);
    }
    const cutoff = Date.now() - olderThanMs;
    for (const object of await this.listRaw(this.s3Key(TMP_KEY_DIR))) {
      if (object.LastModified && object.LastModified.getTime() <= cutoff) {
        await this.deleteS3Key(object.Key!);
        removed += 1;
      }
    }
    return removed;
  }

  /** Downloads to `target` via tmp + rename; content-addressed keys are checked against their hash. */
  private async download(key: string, target: string): Promise<void> {
    await mkdir(path.dirname(target), { recursive: true });
    const tmp = `${target}.${randomUUID()}.tmp`;
    try {
      const meter = new HashingMeter();
      await pipeline(await this.openRead(key), meter, createWriteStream(tmp, { flags: 'wx' }));
      if (isObjectKey(key) && objectKeyFor(meter.hash.digest('hex')) !== key) {
        throw new Error(`object ${key} in ${this.url} does not hash to its key; the bucket copy is corrupt`);
      }
      await fsyncPath(tmp);
      await rename(tmp, target);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  private async listRaw(fullPrefix: string): Promise<_Object[]> {
    const out: _Object[] = [];
    let token: string | undefined;
    do {
      const page = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: fullPrefix, ...(token ? { ContinuationToken: token } : {}) }),
      );
      for (const object of page.Contents ?? []) if (object.Key) out.push(object);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  private async deleteS3Key(fullKey: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.options.bucket, Key: fullKey }));
  }

  private s3Key(key: string): string {
    return `${this.options.prefix}${key}`;
  }
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}
