// Generates both clients from the committed openapi.yaml, offline, as a mobile team would:
// openapi-typescript (types for openapi-fetch) and @hey-api/openapi-ts (an SDK with its fetch client).
// `npx tsx test/clients/generate.ts` writes test/clients/generated/ (git-ignored); the client test calls it.
import { execFile } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import openapiTS, { astToString } from 'openapi-typescript';
import ts from 'typescript';

const run = promisify(execFile);
const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
export const GENERATED_DIR = path.join(HERE, 'generated');
const SPEC = path.join(ROOT, 'openapi.yaml');

/** openapi-fetch's documented way to upload files: `format: binary` typed as Blob (openapi-typescript `transform`). */
const BLOB = ts.factory.createTypeReferenceNode(ts.factory.createIdentifier('Blob'));

export async function generateClients(): Promise<void> {
  await rm(GENERATED_DIR, { recursive: true, force: true });
  await mkdir(path.join(GENERATED_DIR, 'openapi-typescript'), { recursive: true });
  const ast = await openapiTS(pathToFileURL(SPEC), {
    transform: (schema) => (schema.format === 'binary' ? BLOB : undefined),
  });
  await writeFile(path.join(GENERATED_DIR, 'openapi-typescript', 'schema.d.ts'), astToString(ast));
  const heyApi = path.join(ROOT, 'node_modules', '.bin', 'openapi-ts');
  await run(heyApi, ['--input', SPEC, '--output', path.join(GENERATED_DIR, 'hey-api'), '--silent', '--no-log-file'], {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: '1' },
  });
}

/** Type-checks the flows against the generated code; rejects with tsc's report when it finds errors. */
export async function typecheckClients(): Promise<void> {
  const tsc = path.join(ROOT, 'node_modules', '.bin', 'tsc');
  try {
    await run(tsc, ['-p', path.join(HERE, 'tsconfig.json')], { cwd: ROOT });
  } catch (err) {
    const report = typeof err === 'object' && err !== null && 'stdout' in err ? String(err.stdout) : String(err);
    throw new Error(`tsc found errors in the client flows:\n${report}`);
  }
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await generateClients();
  await typecheckClients();
  console.log(`generated and type-checked ${path.relative(process.cwd(), GENERATED_DIR)}`);
}
