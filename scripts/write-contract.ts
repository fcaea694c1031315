/**
 * `npm run contract`: writes the generated halves of the TypeScript ↔ engine contract (src/contract/generate.ts).
 * Run it after changing src/contract/job-options.ts or a constant of the engine's tuckerize/contract.py.
 */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  ENGINE_CONSTANTS_FILE,
  JOB_OPTIONS_SCHEMA_FILE,
  readEngineConstants,
  renderEngineConstants,
  renderJobOptionsSchema,
} from '../src/contract/generate.js';

async function writeAtomic(file: string, text: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, file);
}

await writeAtomic(JOB_OPTIONS_SCHEMA_FILE, renderJobOptionsSchema());
await writeAtomic(ENGINE_CONSTANTS_FILE, renderEngineConstants(readEngineConstants()));
console.log(`wrote ${path.relative(process.cwd(), JOB_OPTIONS_SCHEMA_FILE)} and ${path.relative(process.cwd(), ENGINE_CONSTANTS_FILE)}`);
