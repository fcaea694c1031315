// The tests' judge: runs an ONNX model once with onnxruntime-node (CPU) and writes the outputs.
//
// Usage: node engine/tests/ort_run.mjs MANIFEST.json      (one model, then exit)
//        node engine/tests/ort_run.mjs --serve            (manifest paths on stdin, replies on stdout)
// MANIFEST: {"model": path, "threads": n, "optimization": "all"|"disabled"|...,
//            "inputs": [{"name", "dtype", "shape", "file"}], "outputDir": dir}
// Tensors travel as raw little-endian files so a 600 MB model's activations never pass through JSON.
// Writes outputDir/outputs.json: [{"name", "dtype", "shape", "file"}] in the graph's output order.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import ort from 'onnxruntime-node';

const TYPED_ARRAYS = {
  float32: Float32Array,
  float64: Float64Array,
  int64: BigInt64Array,
  int32: Int32Array,
  int8: Int8Array,
  uint8: Uint8Array,
  bool: Uint8Array,
  float16: Uint16Array,
};

function readTensor(spec) {
  const ArrayType = TYPED_ARRAYS[spec.dtype];
  if (ArrayType === undefined) {
    throw new Error(`input "${spec.name}": dtype ${spec.dtype} is not supported; use one of ${Object.keys(TYPED_ARRAYS).join(', ')}`);
  }
  const bytes = readFileSync(spec.file);
  // Copy into a fresh ArrayBuffer: Node may hand back a pooled, unaligned slice.
  const aligned = new ArrayBuffer(bytes.byteLength);
  new Uint8Array(aligned).set(bytes);
  const data = new ArrayType(aligned);
  const expected = spec.shape.reduce((a, b) => a * b, 1);
  if (data.length !== expected) {
    throw new Error(`input "${spec.name}": file holds ${data.length} ${spec.dtype} values, shape [${spec.shape}] needs ${expected}`);
  }
  return new ort.Tensor(spec.dtype, data, spec.shape);
}

async function runManifest(manifestPath) {
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
  const threads = manifest.threads ?? 1;
  const session = await ort.InferenceSession.create(manifest.model, {
    executionProviders: ['cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: manifest.optimization ?? 'all',
  });
  try {
    const feeds = {};
    for (const spec of manifest.inputs) feeds[spec.name] = readTensor(spec);
    const results = await session.run(feeds);
    const written = [];
    session.outputNames.forEach((name, index) => {
      const tensor = results[name];
      if (tensor.type === 'string') throw new Error(`output "${name}" is a string tensor; only numeric outputs are supported`);
      const file = join(manifest.outputDir, `out${index}.bin`);
      const data = tensor.data;
      writeFileSync(file, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      written.push({ name, dtype: tensor.type, shape: tensor.dims, file });
    });
    writeFileSync(join(manifest.outputDir, 'outputs.json'), JSON.stringify(written));
  } finally {
    await session.release();
  }
}

const message = (error) => (error && error.message ? error.message : String(error));

// --serve: one manifest path per stdin line, one "ORT_RUN {json}" reply line each, so a test session
// pays node's and onnxruntime's start-up once instead of once per model.
async function serve() {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let reply;
    try {
      await runManifest(line.trim());
      reply = { ok: true };
    } catch (error) {
      reply = { ok: false, error: message(error) };
    }
    process.stdout.write(`ORT_RUN ${JSON.stringify(reply)}\n`);
  }
}

const [arg] = process.argv.slice(2);
if (!arg) {
  process.stderr.write('usage: node ort_run.mjs MANIFEST.json | --serve\n');
  process.exit(2);
}
(arg === '--serve' ? serve() : runManifest(arg)).catch((error) => {
  process.stderr.write(`ort_run: ${message(error)}\n`);
  process.exit(1);
});
