// Upload-time checking of an ONNX model: first the structural inspection of src/security (protobuf read
// without a runtime: truncation, external data, absurd shapes, unsupported ops and opsets), then a load in
// onnxruntime-node — what the runtime cannot load, the service cannot verify or benchmark either.
import * as ort from 'onnxruntime-node';
import { inspectOnnx as inspectStructure, type Dim, type OnnxSummary } from '../security/index.js';
import { ApiError } from './errors.js';

/** What OnnxModel.inputs/outputs keep per tensor (also what checkDatasetFitsModel reads). */
export interface TensorInfo {
  name: string;
  /** element type name, e.g. float32 */
  type: string;
  /** ONNX TensorProto.DataType code */
  elemType: number;
  /** numbers, symbolic names, or null when undeclared */
  dims: Dim[];
}

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

function tensorInfo(t: OnnxSummary['inputs'][number]): TensorInfo {
  return { name: t.name, type: t.elemTypeName, elemType: t.elemType, dims: t.dims };
}

/**
 * Throws InputRejected (structural problems) or OnnxLoadError (onnxruntime refuses it). `displayName` replaces
 * the server-side path in runtime messages.
 */
export async function inspectModelUpload(filePath: string, displayName: string, ortThreads = 1): Promise<ModelInspection> {
  const summary = await inspectStructure(filePath);
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(filePath, {
      executionProviders: ['cpu'],
      intraOpNumThreads: ortThreads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'disabled',
    });
  } catch (err) {
    const message = (err as Error).message.replaceAll(filePath, displayName).replace(/\s+/g, ' ').trim();
    throw new OnnxLoadError(`onnxruntime cannot load ${displayName}: ${message}; check that the model runs in onnxruntime before uploading it`);
  }
  await session.release();
  return { summary, inputs: summary.inputs.map(tensorInfo), outputs: summary.outputs.map(tensorInfo) };
}
