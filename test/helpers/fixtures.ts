// Small ONNX models and datasets built at test time with the engine's Python (onnx.helper), so no binary is committed
// and each fixture's construction is visible here.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const PYTHON = '/usr/bin/python3';

const SCRIPT = String.raw`
import sys, numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
out = sys.argv[1]
rng = np.random.default_rng(0)

def conv_model(channels=8, opset=13, seed_bias=0.0):
    x = helper.make_tensor_value_info('input', TensorProto.FLOAT, ['N', 3, 16, 16])
    y = helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['N', 10])
    w1 = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), 'conv1.weight')
    b1 = numpy_helper.from_array((np.zeros(channels) + seed_bias).astype(np.float32), 'conv1.bias')
    w2 = numpy_helper.from_array(rng.standard_normal((10, channels)).astype(np.float32), 'fc.weight')
    b2 = numpy_helper.from_array(np.zeros(10, np.float32), 'fc.bias')
    nodes = [
        helper.make_node('Conv', ['input', 'conv1.weight', 'conv1.bias'], ['c1'], pads=[1, 1, 1, 1], name='conv1'),
        helper.make_node('Relu', ['c1'], ['r1'], name='relu1'),
        helper.make_node('GlobalAveragePool', ['r1'], ['p1'], name='pool'),
        helper.make_node('Flatten', ['p1'], ['f1'], axis=1, name='flatten'),
        helper.make_node('Gemm', ['f1', 'fc.weight', 'fc.bias'], ['logits'], transB=1, name='fc'),
    ]
    graph = helper.make_graph(nodes, 'tiny', [x], [y], [w1, b1, w2, b2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)], producer_name='tuckerize-tests')
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model

onnx.save(conv_model(), out + '/tiny.onnx')
onnx.save(conv_model(seed_bias=1.0), out + '/tiny2.onnx')

m = conv_model()
onnx.save(m, out + '/external.onnx', save_as_external_data=True, all_tensors_to_one_file=True,
          location='external.bin', size_threshold=0)

x = helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 4])
y = helper.make_tensor_value_info('output', TensorProto.FLOAT, [1, 4])
custom = helper.make_graph([helper.make_node('FrobnicateOp', ['input'], ['output'], domain='com.example')], 'custom', [x], [y])
cm = helper.make_model(custom, opset_imports=[helper.make_opsetid('', 13), helper.make_opsetid('com.example', 1)])
cm.ir_version = 7
onnx.save(cm, out + '/custom-op.onnx')

huge = helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 3, 10000000, 10000000])
hy = helper.make_tensor_value_info('output', TensorProto.FLOAT, [1, 3, 10000000, 10000000])
hg = helper.make_graph([helper.make_node('Relu', ['input'], ['output'])], 'huge', [huge], [hy])
hm = helper.make_model(hg, opset_imports=[helper.make_opsetid('', 13)])
hm.ir_version = 7
onnx.save(hm, out + '/absurd-shape.onnx')

# Structurally fine and shapes agree, but MatMul of float32 by int64 cannot type-check: onnxruntime
# refuses it at load time (the upload shape inference follows shapes, not element types).
mx = helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 4])
my = helper.make_tensor_value_info('output', TensorProto.FLOAT, [1, 2])
mw = numpy_helper.from_array(np.ones((4, 2), np.int64), 'w')
mg = helper.make_graph([helper.make_node('MatMul', ['input', 'w'], ['output'], name='mm')], 'bad', [mx], [my], [mw])
mm = helper.make_model(mg, opset_imports=[helper.make_opsetid('', 13)])
mm.ir_version = 7
onnx.save(mm, out + '/ort-refuses.onnx')

# datasets
import zipfile, zlib, struct
np.savez(out + '/images.npz', x=rng.integers(0, 255, (8, 3, 16, 16), dtype=np.uint8), y=np.arange(8) % 2)
np.savez(out + '/mnist-shaped.npz', x=np.zeros((4, 1, 28, 28), np.float32))
np.savez(out + '/pickled.npz', x=np.array([{'a': 1}, None], dtype=object))

def png(width=4, height=4, gray=128):
    raw = b''.join(b'\x00' + bytes([gray]) * width for _ in range(height))
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))

with zipfile.ZipFile(out + '/classes.zip', 'w') as z:
    for cls in ('cat', 'dog'):
        for i in range(3):
            z.writestr(f'{cls}/{i}.png', png(gray=40 * i + (100 if cls == 'dog' else 0)))
with zipfile.ZipFile(out + '/slip.zip', 'w') as z:
    z.writestr('cat/0.png', png())
    z.writestr('../../evil.png', png())
`;

export interface Fixtures {
  dir: string;
  /** Conv → Relu → GAP → Flatten → Gemm, input [N,3,16,16], output [N,10], opset 13 */
  tiny: string;
  /** same graph, different weights (a different sha256) */
  tiny2: string;
  /** tiny model whose tensors live in external.bin next to it */
  external: string;
  /** one node of an op nobody implements (domain com.example) */
  customOp: string;
  /** declares a 3·10^14-element input (dims of 10^7) */
  absurdShape: string;
  /** passes the structural checks; onnxruntime refuses it (MatMul shape mismatch) */
  ortRefuses: string;
  /** x uint8 [8,3,16,16], y [8]: fits `tiny` */
  imagesNpz: string;
  /** x float32 [4,1,28,28]: does not fit `tiny` */
  mnistShapedNpz: string;
  /** x is an object array (would need pickle) */
  pickledNpz: string;
  /** cat/ and dog/ folders with 3 PNGs each */
  classesZip: string;
  /** holds ../../evil.png */
  slipZip: string;
  /** the first half of tiny.onnx */
  truncated: string;
  /** 4 KiB of random bytes */
  random: string;
  empty: string;
  cleanup(): Promise<void>;
}

export async function createFixtures(): Promise<Fixtures> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-fixtures-'));
  await run(PYTHON, ['-c', SCRIPT, dir]);
  const tiny = path.join(dir, 'tiny.onnx');
  const bytes = await readFile(tiny);
  const truncated = path.join(dir, 'truncated.onnx');
  await writeFile(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)));
  const random = path.join(dir, 'random.onnx');
  const noise = Buffer.alloc(4096);
  // Deterministic noise (an LCG) so a failure reproduces.
  let state = 12345;
  for (let i = 0; i < noise.length; i += 1) {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    noise[i] = state & 0xff;
  }
  await writeFile(random, noise);
  const empty = path.join(dir, 'empty.onnx');
  await writeFile(empty, Buffer.alloc(0));
  return {
    dir,
    tiny,
    tiny2: path.join(dir, 'tiny2.onnx'),
    external: path.join(dir, 'external.onnx'),
    customOp: path.join(dir, 'custom-op.onnx'),
    absurdShape: path.join(dir, 'absurd-shape.onnx'),
    ortRefuses: path.join(dir, 'ort-refuses.onnx'),
    imagesNpz: path.join(dir, 'images.npz'),
    mnistShapedNpz: path.join(dir, 'mnist-shaped.npz'),
    pickledNpz: path.join(dir, 'pickled.npz'),
    classesZip: path.join(dir, 'classes.zip'),
    slipZip: path.join(dir, 'slip.zip'),
    truncated,
    random,
    empty,
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}
