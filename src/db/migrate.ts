// Applies the committed SQL migrations (prisma/migrations/*/migration.sql) in name order, each in its own
// transaction, recorded in a tracking table, under a PostgreSQL advisory lock so an API and several workers
// starting together apply each migration exactly once. `prisma migrate deploy` cannot be used here (its wasm
// schema engine fails in this environment; docs/design.md), so this is the startup migration step.
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { parseDatabaseUrl } from './client.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** src/db → repo root; dist/src/db → repo root */
function defaultMigrationsDir(): string {
  const up = here.includes(`${path.sep}dist${path.sep}`) ? '../../..' : '../..';
  return path.resolve(here, up, 'prisma', 'migrations');
}

const TRACKING_TABLE = '_tuckerize_migrations';
/** arbitrary constant shared by every process that migrates this database */
const LOCK_KEY = 724_118_305;

export interface MigrationResult {
  applied: string[];
  alreadyApplied: string[];
}

export class MigrationError extends Error {
  override name = 'MigrationError';
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

export async function migrate(databaseUrl: string, migrationsDir = defaultMigrationsDir()): Promise<MigrationResult> {
  const { connectionString, schema } = parseDatabaseUrl(databaseUrl);
  const entries = await readdir(migrationsDir, { withFileTypes: true });
  const names = entries.filter((e) => e.isDirectory()).map((e) => e.name).sort();
  if (names.length === 0) throw new MigrationError(`no migrations found in ${migrationsDir}`);

  const client = new pg.Client({ connectionString, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    if (schema) {
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(schema)}`);
      // Unqualified names in the migrations (tables, the enum type) then land in the chosen schema.
      await client.query(`SET search_path TO ${quoteIdent(schema)}`);
    }
    await client.query('SELECT pg_advisory_lock($1)', [LOCK_KEY]);
    try {
      await client.query(
        `CREATE TABLE IF NOT EXISTS ${TRACKING_TABLE} (
           name TEXT PRIMARY KEY, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
      );
      const done = await client.query<{ name: string; checksum: string }>(`SELECT name, checksum FROM ${TRACKING_TABLE}`);
      const appliedChecksums = new Map(done.rows.map((r) => [r.name, r.checksum]));
      const result: MigrationResult = { applied: [], alreadyApplied: [] };
      for (const name of names) {
        const sql = await readFile(path.join(migrationsDir, name, 'migration.sql'), 'utf8');
        const checksum = createHash('sha256').update(sql).digest('hex');
        const previous = appliedChecksums.get(name);
        if (previous !== undefined) {
          if (previous !== checksum) {
            throw new MigrationError(
              `migration ${name} was edited after it was applied (checksum ${previous.slice(0, 12)} → ${checksum.slice(0, 12)}); ` +
                'add a new migration instead of changing an applied one',
            );
          }
          result.alreadyApplied.push(name);
          continue;
        }
        await client.query('BEGIN');
        try {
          await client.query(sql);
          await client.query(`INSERT INTO ${TRACKING_TABLE} (name, checksum) VALUES ($1, $2)`, [name, checksum]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK');
          throw new MigrationError(`migration ${name} failed: ${(err as Error).message}`);
        }
        result.applied.push(name);
      }
      return result;
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [LOCK_KEY]);
    }
  } finally {
    await client.end();
  }
}
