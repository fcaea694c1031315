// Operator CLI: `npm run cli -- keys create --tenant NAME | keys list | keys revoke PREFIX`.
// Errors: one line on stderr, exit 2.
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { createApiKeyForTenant } from './api/auth.js';
import { loadConfig } from './config.js';
import { createPrisma, type PrismaClient } from './db/client.js';
import { migrate } from './db/migrate.js';

class UsageError extends Error {}

const USAGE = 'usage: cli keys create --tenant NAME | keys list [--tenant NAME] | keys revoke PREFIX';

export async function runCli(argv: string[], out: (line: string) => void, prisma: PrismaClient): Promise<void> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { tenant: { type: 'string' } },
    strict: true,
  });
  const [group, command, ...rest] = positionals;
  if (group !== 'keys') throw new UsageError(USAGE);
  switch (command) {
    case 'create': {
      const tenant = values.tenant?.trim();
      if (!tenant) throw new UsageError('keys create needs --tenant NAME');
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/.test(tenant)) {
        throw new UsageError('tenant names are 1-100 characters: letters, digits, . _ - (starting with a letter or digit)');
      }
      const created = await createApiKeyForTenant(prisma, tenant);
      out(created.key);
      return;
    }
    case 'list': {
      const keys = await prisma.apiKey.findMany({
        where: values.tenant ? { tenant: { name: values.tenant } } : {},
        include: { tenant: true },
        orderBy: { createdAt: 'asc' },
      });
      for (const k of keys) {
        out(`${k.prefix}\t${k.tenant.name}\t${k.createdAt.toISOString()}\t${k.revokedAt ? `revoked ${k.revokedAt.toISOString()}` : 'active'}`);
      }
      return;
    }
    case 'revoke': {
      const prefix = rest[0];
      if (!prefix || rest.length > 1) throw new UsageError('keys revoke needs exactly one key PREFIX (see keys list)');
      const updated = await prisma.apiKey.updateMany({ where: { prefix, revokedAt: null }, data: { revokedAt: new Date() } });
      if (updated.count === 0) {
        const exists = await prisma.apiKey.findUnique({ where: { prefix } });
        throw new UsageError(exists ? `key ${prefix} is already revoked` : `no key with prefix ${prefix}; see keys list`);
      }
      out(`revoked ${prefix}`);
      return;
    }
    default:
      throw new UsageError(USAGE);
  }
}

async function main(): Promise<number> {
  let prisma: PrismaClient | undefined;
  try {
    const config = loadConfig();
    await migrate(config.databaseUrl);
    prisma = createPrisma(config.databaseUrl);
    await runCli(process.argv.slice(2), (line) => process.stdout.write(`${line}\n`), prisma);
    return 0;
  } catch (err) {
    const message = (err as Error).message.split('\n')[0];
    process.stderr.write(`tuckerize cli: ${message}\n`);
    return 2;
  } finally {
    await prisma?.$disconnect();
  }
}

// Only when run as a program, so tests can import runCli.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main();
}
