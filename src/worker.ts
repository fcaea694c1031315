// Worker process: `npm run worker`. Config from the environment; SIGTERM/SIGINT drain (no new jobs,
// running ones finish), a second signal exits at once (BullMQ's stall detection then hands the job on).
import { pino } from 'pino';
import { loadConfig } from './config.js';
import { createWorkerMetrics, probeDevice, serveMetrics } from './ops/worker-metrics.js';
import { startWorker } from './worker/runner.js';

const config = loadConfig();
const logger = pino({ level: config.logLevel, base: { service: 'worker' } });

try {
  const running = await startWorker(config, {
    logger,
    lockDurationMs: config.workerLockDurationMs,
    stalledIntervalMs: config.workerStalledIntervalMs,
  });
  // /metrics for Prometheus (deploy/prometheus.yml): slots, utilisation, and the engine's device.
  const metrics = createWorkerMetrics(running.worker, { workerId: running.workerId, slots: config.workerConcurrency, device: 'unknown' });
  const metricsServer = await serveMetrics(metrics.registry, config.host, config.workerMetricsPort);
  logger.info({ port: metricsServer.port }, 'worker metrics on /metrics');
  void probeDevice(config.enginePython, config.engineDir).then((device) => {
    metrics.setDevice(device);
    logger.info({ device }, 'engine device');
  });
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals += 1;
    if (signals > 1) {
      logger.warn({ signal }, 'second signal: exiting without waiting for running jobs');
      process.exit(1);
    }
    logger.info({ signal }, 'draining: no new jobs, waiting for running ones');
    Promise.all([running.close(), metricsServer.close()]).then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'error while closing the worker');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
} catch (err) {
  logger.fatal({ err }, 'worker failed to start');
  process.exit(1);
}
