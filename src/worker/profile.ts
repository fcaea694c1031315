// Per-layer profile: each rewritten layer's original node against its replacement chain, as two
// standalone models at the layer's real input shape, timed interleaved in onnxruntime. The table shows
// where MACs fell but time did not (the paper's caveat: 1×1 convolutions are cache-unfriendly).
//
// The chain is found from the graphs, not from naming conventions: the engine's surgery keeps the
// layer's data input X and output Y, so the replacement is every compressed-graph node on the paths
// from X to Y. plan.json, when given, labels rows (kind, ranks) and says which layers were kept.
import { readFile } from 'node:fs/promises';
import * as ort from 'onnxruntime-node';
import { z } from 'zod';
import {
  buildSubgraphModel, nodeMacs, observeTensorShapes, ONNX_FLOAT, parseOnnxModel, readOnnxModel,
  type OnnxModelInfo, type OnnxNode,
} from './onnx-info.js';
import {
  fillNormal, latencyStats, MIN_TIMED_RUNS, ratioOf, resolveInputShape, seededUniform, sessionOptions, timeInterleaved,
  type ExecutionMode, type GraphOptimizationLevel, type LatencyStats,
} from './verify.js';

const COMPUTE_OPS = new Set(['Conv', 'Gemm', 'MatMul']);
/** A Tucker-2 chain is 3 nodes; anything much longer means the walk escaped the layer. */
const MAX_CHAIN_NODES = 8;

const planSchema = z.object({
  layers: z.array(z.object({
    name: z.string(),
    kind: z.string(),
    ranks: z.array(z.number()).optional(),
    weight: z.string().nullable().optional(),
    reason: z.string().nullable().optional(),
  }).passthrough()),
}).passthrough();
export type PlanFile = z.infer<typeof planSchema>;
type PlanLayer = PlanFile['layers'][number];

export interface ProfileOptions {
  originalPath: string;
  compressedPath: string;
  planPath?: string;
  threads: number;
  runs: number;
  warmup: number;
  seed: number;
  /** [N, C, H, W] where the model's input has dynamic non-batch dimensions; batch 1 is profiled */
  inputShape?: number[];
  graphOptimizationLevel?: GraphOptimizationLevel;
  executionMode?: ExecutionMode;
}

export interface LayerProfileRow {
  layer: string;
  opType: string;
  kind: string;
  ranks: number[] | null;
  replacement: string[];
  inputShape: number[];
  macs: { original: number; replacement: number; ratio: number };
  original: LatencyStats;
  replacementTime: LatencyStats;
  /** original median / replacement median (wall clock) */
  speedup: number;
  /** the same ratio of median CPU times: steadier than wall time on a shared machine */
  cpuSpeedup: number | null;
  /** speedup ÷ MACs ratio: 1 means time fell as much as MACs did */
  efficiency: number;
}

export interface LayerProfile {
  threads: number;
  runs: number;
  warmup: number;
  graphOptimizationLevel: GraphOptimizationLevel;
  rows: LayerProfileRow[];
  /** layers not profiled, with why (kept by the plan, or no separable replacement found) */
  skipped: Array<{ layer: string; reason: string }>;
}

export async function readPlan(path: string): Promise<PlanFile> {
  const parsed = planSchema.safeParse(JSON.parse(await readFile(path, 'utf8')));
  if (!parsed.success) throw new Error(`${path} is not a plan.json with layers[{name, kind}]: ${parsed.error.message}`);
  return parsed.data;
}

function producers(model: OnnxModelInfo): Map<string, OnnxNode> {
  const map = new Map<string, OnnxNode>();
  for (const node of model.nodes) for (const out of node.outputs) if (out !== '') map.set(out, node);
  return map;
}

/**
 * The nodes of `model` computing `output` from `input` (and initializers), in graph (topological)
 * order, or a reason why the layer does not separate into such a chain.
 */
export function replacementChain(model: OnnxModelInfo, input: string, output: string): OnnxNode[] | string {
  const producedBy = producers(model);
  const graphInputs = new Set(model.inputs.map((i) => i.name));
  const chain = new Set<OnnxNode>();
  const pending = [output];
  while (pending.length > 0) {
    const tensor = pending.pop()!;
    if (tensor === input || tensor === '' || model.initializers.has(tensor)) continue;
    const node = producedBy.get(tensor);
    if (!node) {
      return graphInputs.has(tensor)
        ? `the replacement of ${output} also reads graph input ${tensor}`
        : `no node of the graph produces ${tensor}`;
    }
    if (chain.has(node)) continue;
    chain.add(node);
    if (chain.size > MAX_CHAIN_NODES) return `more than ${MAX_CHAIN_NODES} nodes lie between ${input} and ${output}`;
    pending.push(...node.inputs);
  }
  return model.nodes.filter((n) => chain.has(n));
}

/**
 * Without a plan: 3 compute nodes are Tucker-2; of 2, a spatial kernel first is Tucker-1 (output mode), a
 * spatial kernel second Tucker-1 on the input mode (tucker1in), neither SVD.
 */
function inferKind(model: OnnxModelInfo, chain: OnnxNode[]): string {
  const compute = chain.filter((n) => COMPUTE_OPS.has(n.opType));
  if (compute.length === 3) return 'tucker2';
  if (compute.length !== 2) return 'other';
  const spatial = (node: OnnxNode) =>
    node.opType === 'Conv' && (model.initializers.get(node.inputs[1] ?? '')?.dims.slice(2) ?? []).some((k) => k > 1);
  if (spatial(compute[0]!)) return 'tucker1';
  return spatial(compute[1]!) ? 'tucker1in' : 'svd';
}

const sameNode = (a: OnnxNode, b: OnnxNode) =>
  a.opType === b.opType && a.inputs.join('\u0000') === b.inputs.join('\u0000');

async function subgraphMacs(bytes: Uint8Array, feeds: Record<string, ort.Tensor>, options: ort.InferenceSession.SessionOptions) {
  const model = await parseOnnxModel(bytes);
  const shapes = await observeTensorShapes(model, feeds, options);
  return model.nodes.reduce((s, n) => s + nodeMacs(n, shapes), 0);
}

export async function profileLayers(options: ProfileOptions): Promise<LayerProfile> {
  if (!(options.runs >= MIN_TIMED_RUNS)) throw new RangeError(`runs must be at least ${MIN_TIMED_RUNS}, got ${options.runs}`);
  const settings = {
    threads: options.threads,
    graphOptimizationLevel: options.graphOptimizationLevel ?? 'all' as const,
    executionMode: options.executionMode ?? 'sequential' as const,
  };
  const sessOpts = sessionOptions(settings);
  const original = await readOnnxModel(options.originalPath);
  const compressed = await readOnnxModel(options.compressedPath);
  const plan = options.planPath ? await readPlan(options.planPath) : null;
  const planFor = (node: OnnxNode): PlanLayer | undefined => plan?.layers.find(
    (l) => (l.weight && l.weight === node.inputs[1]) || l.name === node.name,
  );

  // Real input shapes of every layer, observed once on the whole original model at batch 1.
  const uniform = seededUniform(options.seed);
  const feeds: Record<string, ort.Tensor> = {};
  for (const input of original.inputs) {
    const signature = { name: input.name, type: 'float32', shape: input.dims.map((d) => d ?? '?') };
    const dims = resolveInputShape(signature, 1, options.inputShape);
    feeds[input.name] = new ort.Tensor('float32', fillNormal(new Float32Array(dims.reduce((a, b) => a * b, 1)), uniform), dims);
  }
  const shapes = await observeTensorShapes(original, feeds, sessOpts);
  const compressedProducers = producers(compressed);

  const rows: LayerProfileRow[] = [];
  const skipped: LayerProfile['skipped'] = [];
  for (const node of original.nodes) {
    if (!COMPUTE_OPS.has(node.opType) || !original.initializers.has(node.inputs[1] ?? '')) continue;
    const label = node.name || node.outputs[0]!;
    const entry = planFor(node);
    if (entry?.kind === 'keep') {
      skipped.push({ layer: label, reason: `kept by the plan${entry.reason ? `: ${entry.reason}` : ''}` });
      continue;
    }
    const [x, y] = [node.inputs[0]!, node.outputs[0]!];
    const producer = compressedProducers.get(y);
    if (producer && sameNode(producer, node)) {
      if (entry) skipped.push({ layer: label, reason: 'the compressed graph still holds the original node' });
      continue;
    }
    const chain = replacementChain(compressed, x, y);
    if (typeof chain === 'string') {
      skipped.push({ layer: label, reason: chain });
      continue;
    }
    const xShape = shapes.get(x);
    if (!xShape) {
      skipped.push({ layer: label, reason: `no shape observed for its input ${x}` });
      continue;
    }
    // The same walk on the original picks up the node plus whatever computes its constant inputs
    // (exporters share equal biases through Identity nodes).
    const originalChain = replacementChain(original, x, y);
    if (typeof originalChain === 'string') {
      skipped.push({ layer: label, reason: `in the original graph: ${originalChain}` });
      continue;
    }
    const input = { name: x, elemType: ONNX_FLOAT, dims: xShape.dims };
    const originalBytes = await buildSubgraphModel(original, originalChain, [input], [y]);
    const chainBytes = await buildSubgraphModel(compressed, chain, [input], [y]);
    const layerFeeds = {
      [x]: new ort.Tensor('float32', fillNormal(new Float32Array(xShape.dims.reduce((a, b) => a * b, 1)), uniform), xShape.dims),
    };
    const macsOriginal = await subgraphMacs(originalBytes, layerFeeds, sessOpts);
    const macsReplacement = await subgraphMacs(chainBytes, layerFeeds, sessOpts);
    const a = await ort.InferenceSession.create(originalBytes, sessOpts);
    const b = await ort.InferenceSession.create(chainBytes, sessOpts);
    try {
      const t = await timeInterleaved(a, b, layerFeeds, options.runs, options.warmup);
      const originalStats = latencyStats(t.a.wallMs, t.a.cpuMs);
      const replacementStats = latencyStats(t.b.wallMs, t.b.cpuMs);
      const macsRatio = macsOriginal / macsReplacement;
      const speedup = originalStats.medianMs / replacementStats.medianMs;
      rows.push({
        layer: label,
        opType: node.opType,
        kind: entry?.kind ?? inferKind(compressed, chain),
        ranks: entry?.ranks ?? null,
        replacement: chain.filter((n) => COMPUTE_OPS.has(n.opType)).map((n) => n.name || n.opType),
        inputShape: xShape.dims,
        macs: { original: macsOriginal, replacement: macsReplacement, ratio: macsRatio },
        original: originalStats,
        replacementTime: replacementStats,
        speedup,
        cpuSpeedup: ratioOf(originalStats.cpuMedianMs, replacementStats.cpuMedianMs),
        efficiency: speedup / macsRatio,
      });
    } finally {
      await a.release();
      await b.release();
    }
  }
  return {
    threads: settings.threads,
    runs: options.runs,
    warmup: options.warmup,
    graphOptimizationLevel: settings.graphOptimizationLevel,
    rows,
    skipped,
  };
}

/** three significant digits without exponent notation: 1850, 387, 88.3, 0.524 */
const millions = (v: number) => (v >= 1e8 ? (v / 1e6).toFixed(0) : (v / 1e6).toPrecision(3));
const fmt = (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : String(v));

/** Markdown table; rows whose time fell by less than half of what their MACs fell are marked. */
export function formatProfileTable(profile: LayerProfile): string {
  const lines = [
    '| layer | kind | ranks | input | MACs before (M) | MACs after (M) | MACs ratio | time before (ms) | time after (ms) | speed-up | speed-up ÷ MACs ratio | CPU-time speed-up |',
    '|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of profile.rows) {
    const flag = r.efficiency < 0.5 ? ' ⚠' : '';
    lines.push(`| ${r.layer} | ${r.kind} | ${r.ranks?.join('/') ?? '—'} | ${r.inputShape.join('×')} | `
      + `${millions(r.macs.original)} | ${millions(r.macs.replacement)} | ${fmt(r.macs.ratio)}× | `
      + `${fmt(r.original.medianMs, 3)} | ${fmt(r.replacementTime.medianMs, 3)} | ${fmt(r.speedup)}× | ${fmt(r.efficiency)}${flag} | ${r.cpuSpeedup === null ? '—' : `${fmt(r.cpuSpeedup)}×`} |`);
  }
  if (profile.skipped.length > 0) {
    lines.push('', `Not profiled: ${profile.skipped.map((s) => `${s.layer} (${s.reason})`).join('; ')}.`);
  }
  return lines.join('\n');
}
