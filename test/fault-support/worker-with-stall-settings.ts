// src/worker.ts with short BullMQ lock/stall settings (argv: lockDurationMs stalledIntervalMs). The worker
// entry point takes its settings from the environment only, and BullMQ's defaults (30 s lock, 30 s stall
// check) would make the stall-recovery test wait up to a minute for the handover. Everything else is the
// production path: loadConfig, startWorker, the same signal handling.
import { pino } from 'pino';
import { loadConfig } from '../../src/config.js';
import { startWorker } from '../../src/worker/runner.js';

const [lockArg, stalledArg] = process.argv.slice(2);
const lockDurationMs = Number(lockArg);
const stalledIntervalMs = Number(stalledArg);
if (!Number.isInteger(lockDurationMs) || lockDurationMs <= 0 || !Number.isInteger(stalledIntervalMs) || stalledIntervalMs <= 0) {
  console.error(`usage: worker-with-stall-settings.ts LOCK_DURATION_MS STALLED_INTERVAL_MS (got ${lockArg} ${stalledArg})`);
  process.exit(2);
}

const config = loadConfig();
const logger = pino({ level: config.logLevel, base: { service: 'worker' } });
const running = await startWorker(config, { logger, lockDurationMs, stalledIntervalMs });
const onSignal = (): void => {
  running.close().then(
    () => process.exit(0),
    (err: unknown) => {
      logger.error({ err }, 'error while closing the worker');
      process.exit(1);
    },
  );
};
process.once('SIGTERM', onSignal);
process.once('SIGINT', onSignal);
