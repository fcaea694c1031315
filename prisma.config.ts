// Prisma CLI configuration (used by `prisma generate` / `prisma migrate diff`, never by the running service,
// which reads its config through src/config.ts). The JS engine with a driver adapter is the combination that
// works offline here; the Rust/wasm engines need downloads or fail (see docs/design.md, "Environment notes").
import path from 'node:path';
import { defineConfig } from 'prisma/config';

// `prisma generate` needs a resolvable env("DATABASE_URL") in the schema, otherwise it cannot read the
// generator block and falls back to downloading the classic query engine (no network here). Generation
// never connects, so a local default is safe.
const FALLBACK_URL = 'postgresql://postgres@127.0.0.1:5432/postgres';
process.env.DATABASE_URL ??= FALLBACK_URL;

export default defineConfig({
  schema: path.join('prisma', 'schema.prisma'),
  engine: 'js',
  experimental: { adapter: true },
  async adapter() {
    const { PrismaPg } = await import('@prisma/adapter-pg');
    return new PrismaPg({ connectionString: process.env.DATABASE_URL ?? FALLBACK_URL });
  },
});
