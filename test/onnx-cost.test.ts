// The worker's params/MACs counter (src/worker/onnx-info.ts, on shapes onnxruntime observes) against the
// engine's (engine/tuckerize/metrics.py), which is the reference: the same totals and per-node MACs on the
// reference nets and on a graph with the ops where they used to disagree (ConvTranspose, Identity-shared
// biases, a batch larger than one).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { modelCost, observeTensorShapes, readOnnxModel } from '../src/worker/onnx-info.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PYTHON = process.env.ENGINE_PYTHON ?? '/usr/bin/python3';
let dir = '';

const MIXED_MODEL = `
import sys, numpy as np, onnx
from onnx import helper, numpy_helper
from onnx_builders import make_model, value
rng = np.random.default_rng(0)
init = lambda name, shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
nodes = [
    helper.make_node('ConvTranspose', ['x', 'w_up'], ['t'], name='up', strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    helper.make_node('Conv', ['t', 'w_conv'], ['c'], name='conv', pads=[1, 1, 1, 1], group=2),
    helper.make_node('Reshape', ['c', 'flat_shape'], ['f'], name='flat'),
    helper.make_node('Identity', ['b'], ['b_shared'], name='alias'),
    helper.make_node('Gemm', ['f', 'w_fc', 'b_shared'], ['y'], name='fc', transB=1),
]
inits = [init('w_up', (4, 6, 3, 3)), init('w_conv', (6, 3, 3, 3)), init('w_fc', (5, 6 * 16 * 16)), init('b', (5,)),
         numpy_helper.from_array(np.array([0, -1], np.int64), 'flat_shape')]
model = make_model(nodes, [value('x', ['N', 4, 8, 8], np.float32)], [value('y', ['N', 5], np.float32)], inits, ir_version=7)
onnx.checker.check_model(model)
onnx.save(model, sys.argv[1])
`;

const ENGINE_METRICS = `
import json, sys, onnx
from tuckerize.metrics import graph_metrics
from tuckerize.onnx_graph import node_labels
out = []
for p in sys.argv[1:]:
    m = onnx.load(p)
    g = graph_metrics(m)
    out.append({'params': g.params, 'macs': g.macs, 'nodeMacs': g.node_macs, 'labels': node_labels(m)})
print(json.dumps(out))
`;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'tuckerize-cost-'));
  execFileSync(PYTHON, ['-c', MIXED_MODEL, path.join(dir, 'mixed.onnx')], { env: { ...process.env, PYTHONPATH: path.join(REPO, 'engine', 'tests') } });
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sessionOptions: ort.InferenceSession.SessionOptions = { executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 1, logSeverityLevel: 3 };

async function workerCost(file: string, batch: number) {
  const model = await readOnnxModel(file);
  const input = model.inputs[0]!;
  const dims = input.dims.map((d, i) => (i === 0 ? batch : (d as number)));
  const feeds = { [input.name]: new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims) };
  return modelCost(model, await observeTensorShapes(model, feeds, sessionOptions));
}

test('params and MACs agree with the engine, per node and in total, at batch 1 and 3', async () => {
  const assets = path.join(REPO, 'assets', 'models');
  const files = [path.join(dir, 'mixed.onnx'), ...(await readdir(assets)).filter((f) => f.endsWith('.onnx')).map((f) => path.join(assets, f))];
  const engine = JSON.parse(execFileSync(PYTHON, ['-c', ENGINE_METRICS, ...files], {
    encoding: 'utf8', env: { ...process.env, PYTHONPATH: path.join(REPO, 'engine') },
  })) as { params: number; macs: number; nodeMacs: Record<string, number>; labels: string[] }[];
  for (const [i, file] of files.entries()) {
    const ref = engine[i]!;
    for (const batch of [1, 3]) {
      const cost = await workerCost(file, batch);
      assert.equal(cost.params, ref.params, `${path.basename(file)} params`);
      assert.equal(cost.macs, ref.macs, `${path.basename(file)} MACs at batch ${batch}`);
      const perNode = Object.fromEntries(cost.perNode.map((n, k) => [ref.labels[k]!, n.macs]).filter(([, macs]) => macs !== 0));
      assert.deepEqual(perNode, ref.nodeMacs, `${path.basename(file)} per-node MACs`);
    }
  }
  // The mixed graph by hand: ConvTranspose 4·8·8 inputs × 6·3·3, grouped Conv 6·16·16 outputs × 3·3·3,
  // Gemm 5 × 1536; params count the Identity-shared bias twice.
  const mixed = engine[0]!;
  assert.equal(mixed.macs, 256 * 54 + 1536 * 27 + 5 * 1536);
  assert.equal(mixed.params, 216 + 162 + 7680 + 5 + 5);
});
