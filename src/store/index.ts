// Picks the artifact store the configuration names: file:///abs/path (the default, from STORAGE_DIR) or
// s3://bucket/prefix. The AWS SDK is loaded only for the second.
import path from 'node:path';
import type { Config } from '../config.js';
import { FileStore, type ArtifactStore } from './artifacts.js';

export * from './artifacts.js';

export async function createStore(config: Config): Promise<ArtifactStore> {
  const { storage } = config;
  if (storage.kind === 'file') return new FileStore(storage.dir);
  const { S3Store } = await import('./s3.js');
  return new S3Store({
    bucket: storage.bucket,
    prefix: storage.prefix,
    endpoint: storage.endpoint,
    region: storage.region,
    forcePathStyle: storage.forcePathStyle,
    presignDownloads: storage.presignDownloads,
    presignExpiresSeconds: storage.presignExpiresSeconds,
    cacheDir: path.join(config.workDir, 'cache'),
  });
}
