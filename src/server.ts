// API process: config → migrations → app → listen; SIGTERM/SIGINT close the app (in-flight requests finish,
// Prisma/Redis/QueueEvents are closed by its onClose hooks).
import { buildApp } from './api/app.js';
import { loadConfig } from './config.js';
import { migrate } from './db/migrate.js';

async function main(): Promise<void> {
  const config = loadConfig();
  const migrations = await migrate(config.databaseUrl);
  const app = await buildApp(config);
  app.log.info({ applied: migrations.applied }, 'database migrated');
  let closing = false;
  const shutdown = (signal: string) => {
    if (closing) return;
    closing = true;
    app.log.info({ signal }, 'shutting down');
    app.close().then(
      () => process.exit(0),
      (err: unknown) => {
        app.log.error({ err }, 'error while shutting down');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  await app.listen({ port: config.port, host: config.host });
}

main().catch((err: unknown) => {
  console.error(`tuckerize api: ${(err as Error).message}`);
  process.exit(1);
});
