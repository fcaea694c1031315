// The ONNX inspector against real exports, crafted protobuf and every rejection reason it has.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { InputRejected, inspectOnnx, SUPPORTED_OPS, type RejectionCode } from '../src/security/index.js';
import { gemmModel, model, node, pb, tensor, valueInfo } from './fixtures/hostile/protobuf-writer.js';
import { scratchDir } from './helpers/scratch.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'hostile');
const REPO = path.resolve(FIXTURES, '..', '..', '..');
const PYTHON = '/usr/bin/python3';
const scratch = scratchDir('tuckerize-onnx-');

async function rejection(file: string): Promise<InputRejected> {
  try {
    await inspectOnnx(file);
  } catch (err) {
    assert.ok(err instanceof InputRejected, `expected InputRejected, got ${String(err)}`);
    return err;
  }
  assert.fail(`${path.basename(file)} was accepted`);
}

/** What the onnx Python package sees in the same files: the reference for the summary. */
function onnxReference(files: string[]): { params: number; opset: number; inputs: { name: string; dims: (number | string | null)[] }[]; ops: Record<string, number> }[] {
  const script = `
import json, sys, onnx, numpy as np
out = []
for p in sys.argv[1:]:
    m = onnx.load(p, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    dims = lambda v: [d.dim_value if d.HasField('dim_value') else (d.dim_param if d.HasField('dim_param') else None) for d in v.type.tensor_type.shape.dim]
    ops = {}
    for n in m.graph.node: ops[n.op_type] = ops.get(n.op_type, 0) + 1
    out.append({'params': int(sum(int(np.prod(t.dims)) for t in m.graph.initializer)),
                'opset': [o.version for o in m.opset_import if o.domain in ('', 'ai.onnx')][0],
                'inputs': [{'name': i.name, 'dims': dims(i)} for i in m.graph.input if i.name not in inits],
                'ops': ops})
print(json.dumps(out))
`;
  return JSON.parse(execFileSync(PYTHON, ['-c', script, ...files], { encoding: 'utf8' }));
}

describe('valid models', () => {
  test('torch.onnx exports, the reference nets and a model with a tensor larger than the read buffer match the onnx package', async () => {
    // 700×500 float32 = 1.4 MB of raw_data: the payload crosses the reader's 1 MiB window, and an
    // unpacked-dims initializer after it must still be found.
    const unpackedDims = Buffer.concat([pb.varint(1, 3), pb.varint(1, 2), pb.varint(2, 1), pb.bytes(8, 'b2'), pb.bytes(9, Buffer.alloc(24))]);
    const big = scratch.writeModel(gemmModel(700, 500, [unpackedDims]));
    // The reference nets the engine trains (assets/models) must pass too: they are what the demo uploads.
    const assets = path.join(REPO, 'assets', 'models');
    const referenceNets = readdirSync(assets).filter((f) => f.endsWith('.onnx')).map((f) => path.join(assets, f));
    assert.ok(referenceNets.length > 0, `no reference models in ${assets}`);
    const files = [path.join(FIXTURES, 'good_tinynet.onnx'), path.join(FIXTURES, 'good_tiny.onnx'), big, ...referenceNets];
    const reference = onnxReference(files);
    for (const [i, file] of files.entries()) {
      const summary = await inspectOnnx(file);
      const ref = reference[i]!;
      assert.equal(summary.params, ref.params, file);
      assert.equal(summary.opset, ref.opset, file);
      assert.deepEqual(
        summary.inputs.map((x) => ({ name: x.name, dims: x.dims })),
        ref.inputs,
        file,
      );
      assert.deepEqual(summary.opCounts, ref.ops, file);
    }
    const tinynet = await inspectOnnx(files[0]!);
    assert.equal(tinynet.params, 537); // conv 1→4 3×3 (40) + conv 4→6 3×3 (222) + fc 54→5 (275)
    assert.deepEqual(tinynet.inputs[0]!.dims, ['batch', 1, 8, 8]);
    assert.equal(tinynet.inputs[0]!.type, 'float32');
    assert.deepEqual(tinynet.outputs.map((o) => o.name), ['logits']);
    const bigSummary = await inspectOnnx(big);
    assert.deepEqual(bigSummary.initializers.map((t) => [t.name, t.dims]), [
      ['w', [700, 500]],
      ['b2', [3, 2]],
    ]);
  });

  test('float_data written unpacked (one fixed32 field per element) is counted element by element', async () => {
    const floats = Buffer.concat([1, 2, 3, 4, 5, 6].map((v) => pb.fixed32(4, v)));
    const file = scratch.writeModel(
      model({
        nodes: [node('Gemm', ['x', 'w'], ['y'], 'fc')],
        initializers: [tensor('w', [2, 3], floats)],
        inputs: [valueInfo('x', [1, 3])],
        outputs: [valueInfo('y', [1, 2])],
      }),
    );
    assert.equal(onnxReference([file])[0]!.params, 6);
    assert.equal((await inspectOnnx(file)).params, 6);
  });
});

describe('rejections', () => {
  const cases: [string, RejectionCode, RegExp][] = [
    ['external_data.onnx', 'onnx_external_data', /initializer "w".*external file in "weights\.bin"/],
    ['external_constant.onnx', 'onnx_external_data', /node "const_k" \(Constant\).*"\/etc\/passwd"/],
    ['unsupported_op.onnx', 'onnx_unsupported_op', /ops RoiAlign \(node "roi_align"\); NonMaxSuppression \(node "nms"\)/],
    ['custom_domain_op.onnx', 'onnx_unsupported_op', /com\.example::FancyActivation \(node "fancy"\)/],
    ['opset_9.onnx', 'onnx_opset', /opset 9; supported opsets are 11 to 21/],
    ['opset_22.onnx', 'onnx_opset', /opset 22/],
    ['no_default_opset.onnx', 'onnx_opset', /no version of the default ONNX operator set/],
    ['ir_version_2.onnx', 'onnx_ir_version', /ir_version is 2/],
    ['absurd_input_dim.onnx', 'onnx_absurd_shape', /graph input "x" declares dimension 2 = 10000000/],
    ['negative_output_dim.onnx', 'onnx_absurd_shape', /graph output "y" declares dimension 2 = -3/],
    ['absurd_initializer.onnx', 'onnx_absurd_shape', /initializer "w" declares dims \[100000, 100000\] = 10000000000 elements/],
    ['initializer_size_mismatch.onnx', 'onnx_initializer_size', /initializer "w" declares dims \[2, 1, 3, 3\] of float32 \(72 bytes\) but its raw_data holds 16 bytes/],
    ['unknown_data_type.onnx', 'onnx_data_type', /initializer "w" has data_type 99/],
    ['sparse_initializer.onnx', 'onnx_sparse_initializer', /sparse initializer/],
    ['sequence_input.onnx', 'onnx_io', /graph input "x" is a sequence/],
    ['no_real_input.onnx', 'onnx_io', /no input besides its weights/],
    ['long_node_name.onnx', 'onnx_too_large', /name of node #0 is 10000 bytes long/],
    ['no_graph.onnx', 'onnx_not_a_model', /holds no graph/],
  ];
  for (const [file, code, message] of cases) {
    test(`${file} → ${code}`, async () => {
      const err = await rejection(path.join(FIXTURES, file));
      assert.equal(err.code, code);
      assert.match(err.detail, message);
      assert.equal(err.status, 422);
    });
  }

  test('an empty file', async () => {
    const err = await rejection(scratch.writeModel(Buffer.alloc(0)));
    assert.equal(err.code, 'onnx_empty');
    assert.match(err.detail, /empty/);
  });

  test('a model cut anywhere inside its graph is reported as truncated', async () => {
    const good = readFileSync(path.join(FIXTURES, 'good_tinynet.onnx'));
    for (const cut of [1, 40, Math.floor(good.length / 2), good.length - 30]) {
      const err = await rejection(scratch.writeModel(good.subarray(0, cut)));
      assert.equal(err.code, 'onnx_truncated', `cut at ${cut}: ${err.message}`);
      assert.match(err.detail, /truncated/);
    }
  });

  test('JSON, PNG and ZIP files are not protobuf', async () => {
    const files = [
      Buffer.from('{"model": "resnet"}'),
      Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(64)]),
      Buffer.concat([Buffer.from('PK\x03\x04'), Buffer.alloc(64)]),
    ];
    for (const bytes of files) {
      const err = await rejection(scratch.writeModel(bytes));
      assert.equal(err.code, 'onnx_not_protobuf', err.message);
      assert.match(err.detail, /not (a protobuf-encoded |part of an )?ONNX/);
    }
  });

  test('a known field with the wrong wire type', async () => {
    const good = readFileSync(path.join(FIXTURES, 'good_tiny.onnx'));
    // The graph is field 7; re-tag it as fixed32 (7<<3 | 5).
    const graphAt = good.indexOf(0x3a);
    const bad = Buffer.from(good);
    bad[graphAt] = 0x3d;
    const err = await rejection(scratch.writeModel(bad));
    assert.equal(err.code, 'onnx_not_protobuf');
    assert.match(err.detail, /field 7 \(fixed32\)/);
  });

  test('a tensor that stores its data in two fields', async () => {
    const file = scratch.writeModel(
      model({
        nodes: [node('Gemm', ['x', 'w'], ['y'], 'fc')],
        initializers: [tensor('w', [1, 2], pb.bytes(9, Buffer.alloc(8)), pb.fixed32(4, 1), pb.fixed32(4, 2))],
        inputs: [valueInfo('x', [1, 2])],
        outputs: [valueInfo('y', [1, 1])],
      }),
    );
    const err = await rejection(file);
    assert.equal(err.code, 'onnx_initializer_size');
    assert.match(err.detail, /several fields \(raw_data, float_data\)/);
  });

  test('a field length running past its enclosing message is corruption, not truncation', async () => {
    // The graph holds one node whose op_type claims 200 bytes while the node is 10 bytes long.
    const badNode = Buffer.concat([Buffer.from([0x22, 200, 1]), Buffer.from('Relu')]);
    const graph = Buffer.concat([pb.message(1, badNode), Buffer.alloc(300)]);
    const file = scratch.writeModel(Buffer.concat([pb.varint(1, 7), pb.message(7, graph)]));
    const err = await rejection(file);
    assert.equal(err.code, 'onnx_not_protobuf');
    assert.match(err.detail, /more than its enclosing message holds/);
  });

  test('random bytes and bit flips of a real model never escape as anything but InputRejected', async () => {
    let seed = 12345;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const good = readFileSync(path.join(FIXTURES, 'good_tinynet.onnx'));
    const codes = new Set<string>();
    let accepted = 0;
    for (let trial = 0; trial < 200; trial++) {
      let bytes: Buffer;
      if (trial < 50) {
        bytes = Buffer.from(Array.from({ length: 2048 }, () => Math.floor(random() * 256)));
      } else {
        bytes = Buffer.from(good);
        for (let k = 0; k < 3; k++) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
      }
      try {
        await inspectOnnx(scratch.writeModel(bytes));
        accepted++;
      } catch (err) {
        assert.ok(err instanceof InputRejected, `trial ${trial}: ${String(err)}`);
        codes.add(err.code);
      }
    }
    // Flips inside weight payloads leave a valid model; flips in the structure must be refused.
    assert.ok(accepted < 200 && codes.has('onnx_not_protobuf'), `accepted ${accepted}, codes ${[...codes].join(',')}`);
  });
});

test('SUPPORTED_OPS matches the engine interpreter table', () => {
  // The interpreter's table is OPS; Constant nodes are folded into buffers outside it.
  const script = [
    'import json',
    'from tuckerize import interpret',
    'ops = getattr(interpret, "SUPPORTED_OPS", None) or (set(interpret.OPS) | {"Constant"})',
    'print(json.dumps(sorted(ops)))',
  ].join('\n');
  const out = execFileSync(PYTHON, ['-c', script], { encoding: 'utf8', env: { ...process.env, PYTHONPATH: path.join(REPO, 'engine') } });
  const engineOps = JSON.parse(out) as string[];
  assert.deepEqual([...SUPPORTED_OPS].sort(), engineOps);
});
