// Receiving one multipart file into the artifact store, shared by the model and dataset routes.
// A malformed multipart body is a 400; an upload that stalls for `uploadIdleTimeoutMs` (the app's
// UPLOAD_IDLE_TIMEOUT_MS, decorated on the instance) is cut with 408 and its temp file removed by the store.
import type {} from '@fastify/multipart';
import type { FastifyRequest } from 'fastify';
import { Transform, type Readable } from 'node:stream';
import type { PrismaClient } from '../../db/client.js';
import { PayloadTooLargeError, type ArtifactStore, type StoredObject } from '../../store/artifacts.js';
import { ApiError, BadRequestError, UnprocessableError, UnsupportedMediaTypeError } from '../errors.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** milliseconds an upload may go without a byte before it is cut (set by buildApp) */
    uploadIdleTimeoutMs: number;
  }
}

/** busboy's errors for a body that is not well-formed multipart: they are the client's, not ours. */
const MALFORMED_MULTIPART = /^Multipart: Boundary not found$|Unexpected end of multipart data|terminated early due to unexpected end of multipart data|Malformed part header/;

export class UploadStalledError extends ApiError {
  constructor(idleMs: number) {
    super(408, 'request-timeout', 'Request timeout', `the upload sent no data for ${idleMs / 1000} s and was cut; retry on a steadier connection`);
  }
}

/** Passes bytes through; errors with UploadStalledError when none arrive for `idleMs`. */
function idleWatchdog(idleMs: number): Transform {
  let timer: NodeJS.Timeout | undefined;
  const watchdog: Transform = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      timer?.refresh();
      callback(null, chunk);
    },
    flush(callback) {
      clearTimeout(timer);
      callback();
    },
    destroy(err, callback) {
      clearTimeout(timer);
      callback(err);
    },
  });
  timer = setTimeout(() => watchdog.destroy(new UploadStalledError(idleMs)), idleMs);
  return watchdog;
}

function clientFault(err: unknown): unknown {
  const message = (err as { message?: unknown }).message;
  if (!(err instanceof ApiError) && typeof message === 'string' && MALFORMED_MULTIPART.test(message)) {
    return new BadRequestError(`the multipart body is malformed (${message}); send multipart/form-data with a boundary parameter and a complete, terminated part "file"`);
  }
  return err;
}

const MULTIPART_OVERHEAD_BYTES = 64 * 1024;

export interface ReceivedUpload {
  stored: StoredObject;
  fileName: string | undefined;
}

export async function receiveUpload(
  request: FastifyRequest,
  store: ArtifactStore,
  limitBytes: number,
  what: string,
): Promise<ReceivedUpload> {
  if (!request.isMultipart()) {
    throw new UnsupportedMediaTypeError(`send multipart/form-data with ${what} in the field "file"`);
  }
  // A declared length far past the limit is refused before a byte is read (multipart framing adds little).
  const declared = Number(request.headers['content-length']);
  if (Number.isFinite(declared) && declared > limitBytes + MULTIPART_OVERHEAD_BYTES) {
    throw new PayloadTooLargeError(limitBytes);
  }
  const idleMs = request.server.uploadIdleTimeoutMs;
  let stored: StoredObject;
  let fileName: string | undefined;
  try {
    const part = await withIdleTimeout(request.file({ limits: { fileSize: limitBytes, files: 1 } }), idleMs);
    if (!part) throw new BadRequestError(`the multipart body has no file; send ${what} in the field "file"`);
    if (part.fieldname !== 'file') {
      part.file.resume();
      throw new BadRequestError(`unexpected multipart field "${part.fieldname}"; send ${what} in the field "file"`);
    }
    fileName = part.filename;
    const watched: Readable = part.file.pipe(idleWatchdog(idleMs));
    // Errors of the multipart stream (malformed or aborted bodies, the size limit) reach the store through
    // the watchdog, which then removes its temp file.
    const abort = (err: Error) => {
      if (!watched.destroyed) watched.destroy(err);
    };
    part.file.on('error', abort);
    part.file.on('limit', () => abort(new PayloadTooLargeError(limitBytes)));
    // A body that arrived in one piece has been parsed before we could listen: it may already have failed
    // or passed the size limit.
    if (part.file.errored) abort(part.file.errored);
    if ((part.file as Readable & { truncated?: boolean }).truncated) abort(new PayloadTooLargeError(limitBytes));
    // The store's pipeline reports the error; this keeps one raised after it settled from going uncaught.
    watched.on('error', () => undefined);
    stored = await store.ingestStream(watched, limitBytes);
  } catch (err) {
    throw clientFault(err);
  }
  if (stored.bytes === 0) {
    // An empty object is never referenced by a row; leaving it would be harmless but pointless.
    await store.remove(stored.key);
    throw new UnprocessableError(`the uploaded file is empty; send ${what} in the field "file"`);
  }
  return { stored, fileName };
}

/** Waiting for the first part's headers is bounded by the idle timeout too. */
async function withIdleTimeout<T>(promise: Promise<T>, idleMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new UploadStalledError(idleMs)), idleMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Deletes a stored object that an upload was refused for, unless some row already uses the same bytes
 * (objects are shared across tenants by content).
 */
export async function removeIfUnreferenced(prisma: PrismaClient, store: ArtifactStore, key: string): Promise<void> {
  const [models, datasets, artifacts] = await Promise.all([
    prisma.onnxModel.count({ where: { storageKey: key } }),
    prisma.dataset.count({ where: { storageKey: key } }),
    prisma.artifact.count({ where: { storageKey: key } }),
  ]);
  if (models + datasets + artifacts === 0) await store.remove(key);
}
