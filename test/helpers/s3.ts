// A real S3 protocol server for the tests: s3rver on a free local port, one bucket, files in a temp dir.
// Its credentials are fixed (S3RVER / S3RVER); the SDK finds them through its default chain (the env).
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import S3rver from 's3rver';

export interface TestS3 {
  endpoint: string;
  bucket: string;
  /** env for loadConfig: STORAGE_URL, S3_ENDPOINT, S3_FORCE_PATH_STYLE */
  env: Record<string, string>;
  close(): Promise<void>;
}

export async function startS3(bucket = 'tuckerize-test'): Promise<TestS3> {
  const directory = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-s3rver-'));
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket }] });
  const address = await server.run();
  const endpoint = `http://127.0.0.1:${address.port}`;
  // The SDK's default credential chain reads these; s3rver accepts only this pair.
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
  return {
    endpoint,
    bucket,
    env: { STORAGE_URL: `s3://${bucket}/tz`, S3_ENDPOINT: endpoint, S3_FORCE_PATH_STYLE: 'true', AWS_REGION: 'us-east-1' },
    async close() {
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}
