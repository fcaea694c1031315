// One Prisma client per process, on the JS query engine through @prisma/adapter-pg (the combination that
// works offline; see docs/design.md). A `?schema=name` in the URL selects a PostgreSQL schema.
import { PrismaPg } from '@prisma/adapter-pg';
import { PrismaClient } from '@prisma/client';

export interface ParsedDatabaseUrl {
  /** connection string without the Prisma-only `schema` parameter (pg would pass it on as a server option) */
  connectionString: string;
  schema: string | undefined;
}

export function parseDatabaseUrl(databaseUrl: string): ParsedDatabaseUrl {
  const url = new URL(databaseUrl);
  const schema = url.searchParams.get('schema') ?? undefined;
  url.searchParams.delete('schema');
  return { connectionString: url.toString(), schema: schema === '' ? undefined : schema };
}

export function createPrisma(databaseUrl: string): PrismaClient {
  const { connectionString, schema } = parseDatabaseUrl(databaseUrl);
  // Short connect timeout: when Postgres is down, requests should fail fast (503) instead of hanging.
  // A transaction left open by a lost client (seen once under heavy load: BEGIN, then nothing) is ended by
  // the server after a minute, so its connection and locks come back instead of pinning the pool.
  const adapter = new PrismaPg(
    { connectionString, connectionTimeoutMillis: 5000, max: 10, idle_in_transaction_session_timeout: 60_000 },
    schema ? { schema } : undefined,
  );
  return new PrismaClient({ adapter });
}

export type { PrismaClient };
