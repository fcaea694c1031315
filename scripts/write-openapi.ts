// Writes openapi.yaml from the routes' zod schemas (`npm run openapi`). test/openapi.test.ts fails when the
// committed file differs from what this produces. Building the app connects to nothing: Prisma and Redis
// connect lazily, and nothing is queried here.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildApp } from '../src/api/app.js';
import { loadConfig } from '../src/config.js';

export const OPENAPI_PATH = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'openapi.yaml');

export async function generateOpenApi(): Promise<string> {
  const config = loadConfig({
    DATABASE_URL: 'postgresql://openapi@127.0.0.1:5432/openapi',
    REDIS_URL: 'redis://127.0.0.1:6379',
    LOG_LEVEL: 'silent',
  });
  const app = await buildApp(config, { analyzeModels: false });
  try {
    return app.swagger({ yaml: true });
  } finally {
    await app.close();
  }
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const yaml = await generateOpenApi();
  await writeFile(OPENAPI_PATH, yaml);
  console.log(`wrote ${path.relative(process.cwd(), OPENAPI_PATH)} (${yaml.length} bytes)`);
}
