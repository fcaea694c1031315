// GET /v1/jobs/:id/report.html: served with the report route's auth and tenant scoping, and rendered in
// headless Chromium (Debian's chromium, installed by `make test-service`) under the page's own
// Content-Security-Policy: the Table-1 rows, one pair of MACs bars per layer, one error bar per rewritten
// layer, one point per trade-off candidate, no CSP violation and nothing a report string could inject.
// The report is a real one: a DEMO_QUICK=1 service run on fmnist-vgg (test/fixtures/report/README.md).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { assertProblem, startTestApp, type TestApp } from './helpers/app.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = '/usr/bin/chromium';
const run = promisify(execFile);

let t: TestApp;
let modelId = '';
let report: Record<string, unknown>;
let work = '';

before(async () => {
  t = await startTestApp();
  work = await mkdtemp(path.join(tmpdir(), 'tuckerize-report-page-'));
  report = JSON.parse(await readFile(path.join(HERE, 'fixtures', 'report', 'fmnist-vgg-quick.json'), 'utf8'));
  const upload = await t.http().post('/v1/models').set(t.authA).attach('file', path.join(HERE, 'fixtures', 'hostile', 'good_tinynet.onnx'), 'fmnist-vgg.onnx');
  assert.equal(upload.status, 201, JSON.stringify(upload.body));
  modelId = upload.body.id;
});
after(async () => {
  await t.close();
  await rm(work, { recursive: true, force: true });
});

/** A job of tenant A whose row holds `jobReport` (null: still running, no report). */
async function jobWith(jobReport: Record<string, unknown> | null): Promise<string> {
  const created = await t.http().post('/v1/jobs').set(t.authA).send({ modelId });
  assert.equal(created.status, 202, JSON.stringify(created.body));
  const id = created.body.id as string;
  if (jobReport) await t.env.prisma.job.update({ where: { id }, data: { status: 'succeeded', report: { ...jobReport, jobId: id } } });
  return id;
}

/**
 * Loads the page in headless Chromium as a browser would get it (same body, same headers, CSP included)
 * and returns the DOM after rendering and what Chromium logged (CSP violations are console errors).
 */
async function renderInChromium(body: string, headers: Record<string, string>): Promise<{ dom: string; log: string }> {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, headers);
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = server.address() as AddressInfo;
    const { stdout, stderr } = await run(CHROMIUM, [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
      '--disable-component-update', '--disable-sync', `--user-data-dir=${path.join(work, 'profile')}`,
      '--enable-logging=stderr', '--v=0', '--dump-dom', `http://127.0.0.1:${port}/`,
    ], { timeout: 60_000, maxBuffer: 16 * 1024 * 1024 });
    return { dom: stdout, log: stderr };
  } finally {
    server.close();
  }
}

const occurrences = (html: string, pattern: RegExp): number => html.match(new RegExp(pattern.source, 'g'))?.length ?? 0;

test('the page renders in Chromium under its CSP: Table 1, a bar pair per layer, an error bar per rewritten layer, the trade-off points', async () => {
  // An accuracy-target search (engine/tuckerize/search.py) adds report.tradeoff and report.search; these
  // three candidates are test input in that shape, not measurements.
  const tradeoff = [
    { candidate: 1, macsRatio: 0.1, accuracy: 0.9, drop: 5.65, withinLimit: false },
    { candidate: 2, macsRatio: 0.2, accuracy: 0.953, drop: 0.35, withinLimit: true },
    { candidate: 3, macsRatio: 0.4, accuracy: 0.955, drop: 0.15, withinLimit: true },
  ];
  const search = { maxAccuracyDrop: 0.5, met: true, originalAccuracy: 0.9565, chosen: 2, message: 'candidate 2: 5.00× fewer MACs' };
  const id = await jobWith({ ...report, tradeoff, search });
  const res = await t.http().get(`/v1/jobs/${id}/report.html`).set(t.authA);
  assert.equal(res.status, 200);
  assert.match(res.headers['content-type'] ?? '', /^text\/html; charset=utf-8/);
  const csp = res.headers['content-security-policy'] ?? '';
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /style-src 'sha256-[A-Za-z0-9+/]+=*'/);
  assert.doesNotMatch(csp, /unsafe-inline|script-src/);

  const { dom, log } = await renderInChromium(res.text, { 'content-type': res.headers['content-type']!, 'content-security-policy': csp });
  assert.doesNotMatch(log, /Content Security Policy/, 'the page triggers no CSP violation');
  const layers = report.layers as { kind: string }[];
  assert.ok(layers.length > 0);
  assert.equal(occurrences(dom, /<rect [^>]*class="bar-before"/), layers.length);
  assert.equal(occurrences(dom, /<rect [^>]*class="bar-after"/), layers.length);
  assert.equal(occurrences(dom, /<rect [^>]*class="bar-error"/), layers.filter((l) => l.kind !== 'keep').length);
  assert.equal(occurrences(dom, /<circle [^>]*class="tradeoff-point/), tradeoff.length);
  assert.equal(occurrences(dom, /class="tradeoff-point chosen"/), 1);
  assert.equal(occurrences(dom, /class="tradeoff-point outside"/), 1);
  assert.equal(occurrences(dom, /<line [^>]*class="limit-line"/), 1);
  assert.match(dom, /candidate 2: 5\.00× fewer MACs/);
  const table = dom.slice(dom.indexOf('<table id="table1"'), dom.indexOf('</table>'));
  for (const row of ['Weights', 'MACs per image', 'Top-1 accuracy', 'Top-1 before fine-tuning', 'Latency, batch 1 (ms)', 'Energy, estimated (mJ)']) assert.match(table, new RegExp(`<td>${row.replace(/[()]/g, '\\$&')}</td>`));
  // The fixture's figures, formatted: engine totals for weights and MACs, onnxruntime for latency.
  const totals = report.totals as { macs: { before: number; after: number } };
  assert.match(table, new RegExp(`${(totals.macs.before / totals.macs.after).toFixed(2)}×`));
  const latency = (report.measurement as { table1: { latencyMs: { before: number; after: number } } }).table1.latencyMs;
  assert.match(table, new RegExp(`<td>${latency.before.toFixed(3)}</td><td>${latency.after.toFixed(3)}</td><td>${(latency.before / latency.after).toFixed(2)}×</td>`));
  assert.equal(occurrences(dom, /<script/), 0);
});

test('no trade-off section without candidates; strings from the report are escaped', async () => {
  const hostileName = '</svg><script>document.title="owned"</script><img src=x onerror=alert(1)>';
  const layers = (report.layers as Record<string, unknown>[]).map((l, i) => (i === 0 ? { ...l, name: hostileName } : l));
  const id = await jobWith({ ...report, layers, rule: '<b>vbmf</b>' });
  const res = await t.http().get(`/v1/jobs/${id}/report.html`).set(t.authA);
  assert.equal(res.status, 200);
  assert.doesNotMatch(res.text, /<script|<img|<b>/);
  const { dom } = await renderInChromium(res.text, { 'content-type': 'text/html; charset=utf-8', 'content-security-policy': res.headers['content-security-policy']! });
  assert.equal(occurrences(dom, /<script|<img/), 0);
  assert.equal(occurrences(dom, /id="tradeoff-chart"/), 0);
  assert.equal(occurrences(dom, /<rect [^>]*class="bar-before"/), layers.length);
});

test('same auth and tenant scoping as the JSON report: 401 without a key, 404 for another tenant, 409 before there is a report', async () => {
  const id = await jobWith(report);
  assertProblem(await t.http().get(`/v1/jobs/${id}/report.html`), 401, /.+/);
  assertProblem(await t.http().get(`/v1/jobs/${id}/report.html`).set(t.authB), 404, /does not exist/);
  const running = await jobWith(null);
  assertProblem(await t.http().get(`/v1/jobs/${running}/report.html`).set(t.authA), 409, /has no report yet/);
});
