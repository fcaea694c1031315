// Prometheus metrics of one worker process, served on WORKER_METRICS_PORT: how many of its slots are busy,
// how long they have been busy (utilisation = rate(worker_busy_seconds_total) / worker_slots), what it
// processed, and the device its engine computes on. Job totals and durations come from the API's /metrics
// (read from PostgreSQL); these series are what only the worker itself knows.
import { execFile } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Worker } from 'bullmq';
import client, { Counter, Gauge, Registry } from 'prom-client';

export interface WorkerMetrics {
  registry: Registry;
  /** the engine reported the device it ran on (e.g. "NVIDIA H100 80GB HBM3" or "cpu") */
  setDevice(device: string): void;
}

export function createWorkerMetrics(worker: Worker, options: { workerId: string; slots: number; device: string }): WorkerMetrics {
  const registry = new Registry();
  client.collectDefaultMetrics({ register: registry });
  const labels = { worker: options.workerId };
  let device = options.device;
  const running = new Map<string, number>();
  let busySeconds = 0;

  new Gauge({
    name: 'worker_info',
    help: 'One series per worker process; the device label names the accelerator its engine runs on ("cpu" without one)',
    labelNames: ['worker', 'device'],
    registers: [registry],
    collect() {
      this.reset();
      this.set({ ...labels, device }, 1);
    },
  });
  new Gauge({
    name: 'worker_slots',
    help: 'Jobs this worker runs at once (WORKER_CONCURRENCY)',
    labelNames: ['worker', 'device'],
    registers: [registry],
    collect() {
      this.reset();
      this.set({ ...labels, device }, options.slots);
    },
  });
  new Gauge({
    name: 'worker_busy_slots',
    help: 'Slots of this worker running a job right now',
    labelNames: ['worker', 'device'],
    registers: [registry],
    collect() {
      this.reset();
      this.set({ ...labels, device }, running.size);
    },
  });
  new Counter({
    name: 'worker_busy_seconds_total',
    help: 'Slot-seconds spent running jobs; rate() over worker_slots is the utilisation',
    labelNames: ['worker', 'device'],
    registers: [registry],
    collect() {
      const now = performance.now();
      let ongoing = 0;
      for (const started of running.values()) ongoing += (now - started) / 1000;
      this.reset();
      this.inc({ ...labels, device }, busySeconds + ongoing);
    },
  });
  const processed = new Counter({
    name: 'worker_jobs_processed_total',
    help: 'Job attempts this worker finished, by outcome (completed: the processor returned; failed: it threw)',
    labelNames: ['worker', 'device', 'outcome'],
    registers: [registry],
  });

  const finish = (id: string | undefined, outcome: 'completed' | 'failed'): void => {
    if (id === undefined) return;
    const started = running.get(id);
    if (started === undefined) return;
    running.delete(id);
    busySeconds += (performance.now() - started) / 1000;
    processed.inc({ ...labels, device, outcome });
  };
  worker.on('active', (job) => {
    if (job.id !== undefined) running.set(job.id, performance.now());
  });
  worker.on('completed', (job) => finish(job.id, 'completed'));
  worker.on('failed', (job) => finish(job?.id, 'failed'));

  return {
    registry,
    setDevice(name) {
      device = name;
    },
  };
}

/** GET /metrics on `port` (0: any free port); resolves with the bound port and a close function. */
export async function serveMetrics(registry: Registry, host: string, port: number): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || req.url?.split('?')[0] !== '/metrics') {
      res.statusCode = 404;
      res.end('only GET /metrics here\n');
      return;
    }
    registry.metrics().then(
      (text) => {
        res.setHeader('content-type', registry.contentType);
        res.end(text);
      },
      (err: unknown) => {
        res.statusCode = 500;
        res.end(`metrics collection failed: ${(err as Error).message}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/**
 * The device the engine will compute on, as the engine names it (tuckerize.device): the CUDA device's name
 * when torch sees one (after CUDA_VISIBLE_DEVICES), else "cpu"; "unknown" when the probe fails.
 */
export function probeDevice(python: string, engineDir: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve) => {
    execFile(
      python,
      ['-c', 'from tuckerize.device import device_name; print(device_name())'],
      { env: { ...env, PYTHONPATH: engineDir }, timeout: 120_000 },
      (err, stdout) => resolve(err ? 'unknown' : stdout.trim().split('\n').pop() || 'unknown'),
    );
  });
}
