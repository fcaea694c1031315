// Top-1 of an ONNX classifier on Fashion-MNIST's test split, measured with onnxruntime-node, outside the
// engine: the demo checks the artifact it downloaded (and the model it uploaded) the way a client would,
// with its own reader of the IDX files and its own preprocessing (pixels scaled to [0, 1], NCHW; the
// reference nets normalise inside their graphs), so the engine's own evaluation is not taking its own word.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import * as ort from 'onnxruntime-node';

/** Where Debian's dataset-fashion-mnist package puts the files (make setup installs it). */
export const FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';

export interface TestSplit {
  count: number;
  height: number;
  width: number;
  /** count × height × width pixels, 0..255 */
  pixels: Uint8Array;
  labels: Uint8Array;
}

/** An unsigned-byte IDX file (gzip or plain): its dims and data. */
export function parseIdx(raw: Buffer, name: string): { dims: number[]; data: Uint8Array } {
  const bytes = raw[0] === 0x1f && raw[1] === 0x8b ? gunzipSync(raw) : raw;
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0 || bytes[2] !== 0x08) {
    throw new Error(`${name} is not an unsigned-byte IDX file`);
  }
  const ndim = bytes[3]!;
  const dims = Array.from({ length: ndim }, (_, i) => bytes.readUInt32BE(4 + 4 * i));
  const offset = 4 + 4 * ndim;
  const data = new Uint8Array(bytes.buffer, bytes.byteOffset + offset, bytes.length - offset);
  const expected = dims.reduce((a, b) => a * b, 1);
  if (data.length !== expected) throw new Error(`${name} declares dims ${dims.join('×')} but holds ${data.length} bytes`);
  return { dims, data };
}

export async function readTestSplit(dir = FASHION_MNIST_DIR, limit?: number): Promise<TestSplit> {
  const images = parseIdx(await readFile(path.join(dir, 't10k-images-idx3-ubyte.gz')), 't10k-images');
  const labels = parseIdx(await readFile(path.join(dir, 't10k-labels-idx1-ubyte.gz')), 't10k-labels');
  const [n, height, width] = images.dims as [number, number, number];
  if (images.dims.length !== 3 || labels.dims.length !== 1 || labels.dims[0] !== n) {
    throw new Error(`Fashion-MNIST test files in ${dir} disagree: images ${images.dims.join('×')}, labels ${labels.dims.join('×')}`);
  }
  const count = Math.min(n, limit ?? n);
  return { count, height, width, pixels: images.data.subarray(0, count * height * width), labels: labels.data.subarray(0, count) };
}

export interface Top1 {
  top1: number;
  correct: number;
  count: number;
  seconds: number;
}

/** Top-1 of `modelPath` on `split`, in batches of `batchSize` (falls back to 1 for a fixed-batch model). */
export async function evaluateTop1(modelPath: string, split: TestSplit, batchSize = 256, threads = 2): Promise<Top1> {
  const session = await ort.InferenceSession.create(modelPath, {
    executionProviders: ['cpu'],
    intraOpNumThreads: threads,
    graphOptimizationLevel: 'all',
  });
  try {
    const inputName = session.inputNames[0]!;
    const outputName = session.outputNames[0]!;
    const meta = session.inputMetadata[0];
    const fixedBatch = meta?.isTensor && typeof meta.shape[0] === 'number' ? meta.shape[0] : null;
    const batch = fixedBatch ?? batchSize;
    const plane = split.height * split.width;
    const started = performance.now();
    let correct = 0;
    for (let start = 0; start < split.count; start += batch) {
      const n = Math.min(batch, split.count - start);
      const x = new Float32Array(batch * plane);
      for (let i = 0; i < n * plane; i += 1) x[i] = split.pixels[start * plane + i]! / 255;
      const feeds = { [inputName]: new ort.Tensor('float32', x, [batch, 1, split.height, split.width]) };
      const logits = (await session.run(feeds))[outputName]!;
      const classes = logits.dims[1]!;
      const values = logits.data as Float32Array;
      for (let i = 0; i < n; i += 1) {
        let best = 0;
        for (let c = 1; c < classes; c += 1) if (values[i * classes + c]! > values[i * classes + best]!) best = c;
        if (best === split.labels[start + i]) correct += 1;
      }
    }
    return { top1: correct / split.count, correct, count: split.count, seconds: (performance.now() - started) / 1000 };
  } finally {
    await session.release();
  }
}
