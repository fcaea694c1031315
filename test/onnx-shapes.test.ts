// Upload-time shape inference (src/onnx/shapes.ts) against onnx's own shape inference, and the bounds the
// upload inspector puts on it: the hostile models of issue 12 (input [1,1,1e6,1e6], ConvTranspose stride
// 60000, Conv pads 200000) and activations that grow past the limit are refused with 422 naming the node
// and the value, through inspectOnnx and through POST /v1/models.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readModelFile } from '../src/onnx/index.js';
import { inferShapes } from '../src/onnx/shapes.js';
import { DEFAULT_ONNX_LIMITS, InputRejected, inspectOnnx, type RejectionCode } from '../src/security/index.js';
import { assertProblem, startTestApp, type TestApp } from './helpers/app.js';
import { scratchDir } from './helpers/scratch.js';
import { convModel, intAttribute, intsAttribute, model, node, pb, tensor, valueInfo } from './fixtures/hostile/protobuf-writer.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PYTHON = process.env.ENGINE_PYTHON ?? '/usr/bin/python3';
const scratch = scratchDir('tuckerize-shapes-');

// Every op family the inference follows, written as exporters write them (shape arithmetic included).
const MANY_OPS_MODEL = `
import sys, numpy as np, onnx
from onnx import helper, numpy_helper
from onnx_builders import make_model, value
rng = np.random.default_rng(0)
f = lambda name, shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
i64 = lambda name, values: numpy_helper.from_array(np.array(values, np.int64), name)
n = helper.make_node
nodes = [
    n('Conv', ['x', 'w1'], ['c1'], name='conv1', pads=[1, 1, 1, 1], strides=[2, 2]),
    n('BatchNormalization', ['c1', 'g', 'b', 'm', 'v'], ['bn'], name='bn'),
    n('Relu', ['bn'], ['r1']),
    n('MaxPool', ['r1'], ['p1'], name='pool', kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    n('Conv', ['p1', 'w2'], ['c2'], name='dilated', dilations=[2, 2], auto_pad='SAME_UPPER'),
    n('ConvTranspose', ['c2', 'wt'], ['up'], name='up', strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    n('Resize', ['up', '', 'scales'], ['rs'], name='resize', mode='nearest'),
    n('Pad', ['rs', 'pads'], ['pd'], name='pad'),
    n('Slice', ['pd', 'starts', 'ends', 'axes'], ['sl'], name='slice'),
    n('Split', ['sl', 'split'], ['s1', 's2'], name='split', axis=1),
    n('Concat', ['s2', 's1'], ['cat'], name='cat', axis=1),
    n('AveragePool', ['cat'], ['ap'], name='avg', kernel_shape=[2, 2], strides=[2, 2]),
    n('Shape', ['ap'], ['shp']),
    n('Gather', ['shp', 'zero'], ['batch']),
    n('Unsqueeze', ['batch', 'axes0'], ['batch1']),
    n('Concat', ['batch1', 'minus1'], ['target'], axis=0),
    n('Reshape', ['ap', 'target'], ['flat'], name='flatten'),
    n('MatMul', ['flat', 'wm'], ['mm'], name='matmul'),
    n('Transpose', ['mm'], ['tr'], perm=[1, 0]),
    n('ReduceMean', ['tr'], ['red'], axes=[0], keepdims=0),
    n('Unsqueeze', ['red', 'axes0'], ['red1']),
    n('Add', ['red1', 'bias'], ['y']),
    n('GlobalAveragePool', ['c2'], ['gap']),
    n('Flatten', ['gap'], ['gf']),
    n('Gemm', ['gf', 'wg'], ['z'], name='fc', transB=1),
]
variance = numpy_helper.from_array(np.abs(rng.standard_normal(8)).astype(np.float32) + 0.1, 'v')
inits = [f('w1', (8, 3, 3, 3)), f('g', (8,)), f('b', (8,)), f('m', (8,)), variance,
         f('w2', (6, 8, 3, 3)), f('wt', (6, 4, 3, 3)), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), 'scales'),
         i64('pads', [0, 0, 1, 2, 0, 0, 3, 4]), i64('starts', [1, 0]), i64('ends', [-1, 1000]), i64('axes', [2, 3]),
         i64('split', [1, 3]), i64('zero', 0), i64('axes0', [0]), i64('minus1', [-1]), f('wm', (4 * 17 * 19, 7)),
         f('bias', (7,)), f('wg', (5, 6))]
m = make_model(nodes, [value('x', [1, 3, 31, 31], np.float32)], [value('y', [1, 7], np.float32), value('z', [1, 5], np.float32)], inits, ir_version=7)
onnx.checker.check_model(m)
onnx.save(m, sys.argv[1])
`;

/** onnx's shape inference (with data propagation, so Shape → Reshape chains resolve), batch fixed to 1. */
const ONNX_SHAPES = `
import json, sys, onnx
from onnx import shape_inference
out = []
for p in sys.argv[1:]:
    m = onnx.load(p)
    for i in m.graph.input:
        dims = i.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField('dim_value'):
            dims[0].dim_value = 1
    m = shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField('shape') and all(d.HasField('dim_value') for d in dims):
            shapes[v.name] = [d.dim_value for d in dims]
    out.append(shapes)
print(json.dumps(out))
`;

describe('shape inference', () => {
  let files: string[] = [];
  before(() => {
    execFileSync(PYTHON, ['-c', MANY_OPS_MODEL, path.join(scratch.dir, 'many_ops.onnx')], { env: { ...process.env, PYTHONPATH: path.join(REPO, 'engine', 'tests') } });
    execFileSync(PYTHON, [path.join(REPO, 'benchmarks', 'fixtures', 'tiny_models.py'), scratch.dir], { stdio: 'ignore' });
    const assets = path.join(REPO, 'assets', 'models');
    files = [
      ...['many_ops', 'tiny', 'tiny_lowrank', 'tiny_sharedbias'].map((name) => path.join(scratch.dir, `${name}.onnx`)),
      ...readdirSync(assets).filter((f) => f.endsWith('.onnx')).map((f) => path.join(assets, f)),
    ];
  });

  test('agrees with onnx.shape_inference on every tensor of exported and hand-built models', async () => {
    const reference = JSON.parse(execFileSync(PYTHON, ['-c', ONNX_SHAPES, ...files], { encoding: 'utf8' })) as Record<string, number[]>[];
    for (const [i, file] of files.entries()) {
      const model = await readModelFile(file);
      const input = model.declaredInputs[0]!;
      const dims = input.dims.map((d, k) => (typeof d === 'number' ? d : k === 0 ? 1 : NaN));
      const known = inferShapes(model, 13, new Map([[input.name, dims]]), () => undefined);
      const expected = reference[i]!;
      const names = Object.keys(expected);
      assert.ok(names.length > 3, `${path.basename(file)}: onnx inferred ${names.length} shapes`);
      for (const name of names) assert.deepEqual(known.get(name)?.dims, expected[name], `${path.basename(file)}: ${name}`);
    }
  });

  test('reference nets and real exports pass the upload inspector with the default bounds', async () => {
    for (const file of files) await inspectOnnx(file);
  });
});

async function rejection(bytes: Buffer, limits = DEFAULT_ONNX_LIMITS): Promise<InputRejected> {
  try {
    await inspectOnnx(scratch.writeModel(bytes), limits);
  } catch (err) {
    assert.ok(err instanceof InputRejected, `expected InputRejected, got ${String(err)}`);
    return err;
  }
  assert.fail('the model was accepted');
}

// The three models of issue 12 item 6, and what grows from small declarations.
const hostile: [string, Buffer, RejectionCode, RegExp][] = [
  [
    'input dims [1, 1, 1e6, 1e6]',
    convModel('Conv', [1, 1, 1_000_000, 1_000_000], [1, 1, 3, 3]),
    'onnx_absurd_shape',
    /graph input "x" declares dims \[1, 1, 1000000, 1000000\] = 1000000000000 elements at batch 1, over the limit of 200000000 elements per tensor/,
  ],
  [
    'ConvTranspose strides 60000',
    convModel('ConvTranspose', ['N', 1, 28, 28], [1, 1, 3, 3], intsAttribute('strides', [60000, 60000])),
    'onnx_absurd_attribute',
    /node "layer" \(ConvTranspose\) has strides \[60000, 60000\]: each must be between 1 and 1024/,
  ],
  [
    'Conv pads 200000',
    convModel('Conv', ['N', 1, 28, 28], [1, 1, 3, 3], intsAttribute('pads', [200000, 200000, 200000, 200000])),
    'onnx_absurd_attribute',
    /node "layer" \(Conv\) has pads \[200000, 200000, 200000, 200000\]: each must be between 0 and 4096/,
  ],
  [
    'an activation that grows past the bound (ConvTranspose within the attribute bounds)',
    convModel('ConvTranspose', ['N', 64, 224, 224], [64, 512, 4, 4], intsAttribute('strides', [1024, 1024])),
    'onnx_absurd_shape',
    /node "layer" \(ConvTranspose\) produces "y" of dims \[1, 512, 228356, 228356\] = \d+ elements at batch 1, over the limit/,
  ],
  [
    'a kernel larger than its input',
    convModel('Conv', ['N', 1, 4, 4], [1, 1, 7, 7]),
    'onnx_invalid_shape',
    /node "layer" \(Conv\) cannot run at the declared input shapes: its 7-wide window \(dilated to 7\) does not fit dimension 2 of its input, 4 wide/,
  ],
  [
    'a Reshape to dims that do not hold its input',
    model({
      nodes: [node('Reshape', ['x', 'shape'], ['y'], 'reshape')],
      initializers: [Buffer.concat([pb.packed(1, [2]), pb.varint(2, 7), pb.bytes(8, 'shape'), pb.packed(7, [5, 5])])],
      inputs: [valueInfo('x', [1, 16])],
      outputs: [valueInfo('y', [])],
    }),
    'onnx_invalid_shape',
    /node "reshape" \(Reshape\) cannot run at the declared input shapes: cannot reshape \[1, 16\] \(16 elements\) to \[5, 5\]/,
  ],
];

describe('bounds', () => {
  for (const [name, bytes, code, detail] of hostile) {
    test(name, async () => {
      const err = await rejection(bytes);
      assert.equal(err.code, code, err.message);
      assert.match(err.detail, detail);
    });
  }

  test('the element bound is configurable; a symbolic batch counts as 1, other symbolic dims are not followed', async () => {
    const conv = convModel('Conv', ['N', 3, 64, 64], [8, 3, 3, 3], intAttribute('group', 1), intsAttribute('pads', [1, 1, 1, 1]));
    await inspectOnnx(scratch.writeModel(conv), { ...DEFAULT_ONNX_LIMITS, maxTensorElements: 8 * 64 * 64 });
    const err = await rejection(conv, { ...DEFAULT_ONNX_LIMITS, maxTensorElements: 8 * 64 * 64 - 1 });
    assert.match(err.detail, /node "layer" \(Conv\) produces "y" of dims \[1, 8, 64, 64\] = 32768 elements at batch 1, over the limit of 32767/);
    // The weights (216 elements) are within this bound; the input's H and W are not known, so nothing else is checked.
    const dynamic = convModel('Conv', ['N', 3, 'H', 'W'], [8, 3, 3, 3]);
    await inspectOnnx(scratch.writeModel(dynamic), { ...DEFAULT_ONNX_LIMITS, maxTensorElements: 216 });
  });
});

describe('POST /v1/models', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp({ ONNX_MAX_TENSOR_ELEMENTS: '100000' });
  });
  after(async () => {
    await t.close();
  });

  test('refuses the hostile models with 422 problem+json naming the node and the value, and stores nothing', async () => {
    for (const [, bytes, code, detail] of hostile.slice(0, 3)) {
      const res = await t.http().post('/v1/models').set(t.authA).attach('file', bytes, 'model.onnx');
      assertProblem(res, 422, detail.source.includes('200000000') ? /1000000000000 elements at batch 1, over the limit of 100000 elements/ : detail);
      assert.match(String(res.body.type), new RegExp(`${code.replace(/_/g, '[-_]')}$`));
    }
    // ONNX_MAX_TENSOR_ELEMENTS=100000 refuses a model the default accepts.
    const res = await t.http().post('/v1/models').set(t.authA).attach('file', convModel('Conv', ['N', 3, 128, 128], [8, 3, 3, 3]), 'model.onnx');
    assertProblem(res, 422, /node "layer" \(Conv\) produces "y" of dims \[1, 8, 126, 126\] = 127008 elements at batch 1, over the limit of 100000/);
    assert.equal(await t.env.prisma.onnxModel.count(), 0);
  });
});
