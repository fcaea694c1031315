// Upload-time checking of an ONNX model: first the structural inspection of src/security (protobuf read
// without a runtime: truncation, external data, absurd shapes, shape inference with bounds, unsupported ops and
// opsets), then a load in onnxruntime-node — what the runtime cannot load, the service cannot verify or benchmark either.
import * as ort from 'onnxruntime-node';
import type { TensorInfo } from '../onnx/index.js';
import type { Config } from '../config.js';
import { DEFAULT_ONNX_LIMITS, inspectOnnx as inspectStructure, type OnnxSummary } from '../security/index.js';
import { ApiError } from './errors.js';

/** What OnnxModel.inputs/outputs keep per tensor (also what checkDatasetFitsModel reads). */
export type { TensorInfo } from '../onnx/index.js';

export interface ModelInspection {
  summary: OnnxSummary;
  inputs: TensorInfo[];
  outputs: TensorInfo[];
}

export class OnnxLoadError extends ApiError {
  constructor(detail: string) {
    super(422, 'onnx_runtime_load', 'Unprocessable content', detail);
  }
}

/**
 * Throws InputRejected (structural problems) or OnnxLoadError (onnxruntime refuses it). `displayName` replaces
 * the server-side path in runtime messages.
 */
export async function inspectModelUpload(
  filePath: string,
  displayName: string,
  config: Pick<Config, 'ortThreads' | 'onnxMaxTensorElements'>,
): Promise<ModelInspection> {
  const summary = await inspectStructure(filePath, { ...DEFAULT_ONNX_LIMITS, maxTensorElements: config.onnxMaxTensorElements });
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(filePath, {
      executionProviders: ['cpu'],
      intraOpNumThreads: config.ortThreads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'disabled',
    });
  } catch (err) {
    const message = (err as Error).message.replaceAll(filePath, displayName).replace(/\s+/g, ' ').trim();
    throw new OnnxLoadError(`onnxruntime cannot load ${displayName}: ${message}; check that the model runs in onnxruntime before uploading it`);
  }
  await session.release();
  return { summary, inputs: summary.inputs, outputs: summary.outputs };
}
