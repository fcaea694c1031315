// Receiving one multipart file into the artifact store, shared by the model and dataset routes.
import type {} from '@fastify/multipart';
import type { FastifyRequest } from 'fastify';
import type { PrismaClient } from '../../db/client.js';
import { PayloadTooLargeError, type ArtifactStore, type StoredObject } from '../../store/artifacts.js';
import { BadRequestError, UnprocessableError, UnsupportedMediaTypeError } from '../errors.js';

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
  const part = await request.file({ limits: { fileSize: limitBytes, files: 1 } });
  if (!part) throw new BadRequestError(`the multipart body has no file; send ${what} in the field "file"`);
  if (part.fieldname !== 'file') {
    part.file.resume();
    throw new BadRequestError(`unexpected multipart field "${part.fieldname}"; send ${what} in the field "file"`);
  }
  const stored = await store.ingestStream(part.file, limitBytes);
  if (stored.bytes === 0) {
    // An empty object is never referenced by a row; leaving it would be harmless but pointless.
    await store.remove(stored.key);
    throw new UnprocessableError(`the uploaded file is empty; send ${what} in the field "file"`);
  }
  return { stored, fileName: part.filename };
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
