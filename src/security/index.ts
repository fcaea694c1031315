// Hostile-input checks for everything a tenant uploads. The API calls these on the stored temp file
// before it records anything; each throws InputRejected (→ 422 problem+json) naming what is wrong.
import yauzl from 'yauzl';
import { DEFAULT_NPZ_LIMITS, inspectNpz, type NpzLimits, type NpzSummary } from './npz-inspect.js';
import { DEFAULT_ONNX_LIMITS, type Dim, type OnnxLimits } from './onnx-inspect.js';
import { InputRejected, quote } from './rejection.js';
import { DEFAULT_ZIP_LIMITS, inspectZipDataset, type ZipDatasetSummary, type ZipLimits } from './zip-inspect.js';

export { InputRejected, quote, type RejectionCode } from './rejection.js';
export {
  inspectOnnx,
  SUPPORTED_OPS,
  MIN_OPSET,
  MAX_OPSET,
  DEFAULT_ONNX_LIMITS,
  type OnnxLimits,
  type OnnxSummary,
  type TensorInfo,
  type NodeInfo,
  type InitializerInfo,
  type Dim,
} from './onnx-inspect.js';
export { sniffImage } from './image-header.js';
export { inspectZipDataset, scanZip, DEFAULT_ZIP_LIMITS, type ZipLimits, type ZipDatasetSummary, type ZipEntryInfo, type EntrySink } from './zip-inspect.js';
export { inspectNpz, parseNpyHeader, parsePyLiteral, DEFAULT_NPZ_LIMITS, type NpzLimits, type NpzSummary } from './npz-inspect.js';

export interface SecurityLimits {
  onnx: OnnxLimits;
  zip: ZipLimits;
  npz: NpzLimits;
}

export const DEFAULT_SECURITY_LIMITS: SecurityLimits = { onnx: DEFAULT_ONNX_LIMITS, zip: DEFAULT_ZIP_LIMITS, npz: DEFAULT_NPZ_LIMITS };

export type DatasetInspection = { format: 'npz'; info: NpzSummary } | { format: 'zip'; info: ZipDatasetSummary };

/**
 * An .npz is a ZIP of .npy files, so the container alone does not tell the two dataset formats apart:
 * the entry names do. Only the central directory is read here; the inspectors do the checking.
 */
async function looksLikeNpz(path: string): Promise<boolean> {
  let zip: yauzl.ZipFile;
  try {
    zip = await yauzl.openPromise(path, { lazyEntries: true, autoClose: false, decodeStrings: false, validateEntrySizes: false });
  } catch {
    return false; // not a zip at all: inspectZipDataset reports that with the right message
  }
  try {
    for await (const entry of zip.eachEntry()) {
      if (entry.fileNameRaw.toString('latin1').endsWith('.npy')) return true;
    }
    return false;
  } catch {
    return false; // a corrupt directory: inspectZipDataset names the problem when it reads it
  } finally {
    zip.close();
  }
}

/** Inspects an uploaded dataset (.npz or class-per-folder .zip of images). */
export async function inspectDataset(path: string, fileBytes: number, limits: SecurityLimits = DEFAULT_SECURITY_LIMITS): Promise<DatasetInspection> {
  if (fileBytes === 0) throw new InputRejected('zip_empty', 'the uploaded dataset is empty; upload an .npz or a .zip of images');
  if (await looksLikeNpz(path)) return { format: 'npz', info: await inspectNpz(path, fileBytes, limits.npz) };
  return { format: 'zip', info: await inspectZipDataset(path, fileBytes, limits.zip) };
}

/** What the model record keeps about each graph input (OnnxModel.inputs). */
export interface ModelInput {
  name: string;
  elemType?: number;
  dims: Dim[];
}

const FLOAT32 = 1;

/**
 * Refuses a job whose dataset cannot be fed to its model: the model must take one float32 (N,C,H,W)
 * input; an .npz's C, H, W must equal the model's fixed dimensions (symbolic ones accept any size); image
 * folders are decoded to 1 or 3 channels and resized by the engine, so only C is checked for them. With
 * `outputs`, labelled data must not hold more classes than a 2-D (N, K) output scores.
 */
export function checkDatasetFitsModel(dataset: DatasetInspection, inputs: ModelInput[], outputs?: ModelInput[]): void {
  if (inputs.length !== 1) {
    throw new InputRejected('dataset_shape_mismatch', `the model has ${inputs.length} inputs (${inputs.map((i) => quote(i.name)).join(', ')}); datasets can feed only single-input models`);
  }
  const input = inputs[0]!;
  if (input.dims.length !== 4) {
    throw new InputRejected('dataset_shape_mismatch', `model input ${quote(input.name)} has shape [${input.dims.join(', ')}]; a dataset feeds images, so the input must be 4-D (N, C, H, W)`);
  }
  if (input.elemType !== undefined && input.elemType !== FLOAT32) {
    throw new InputRejected('dataset_shape_mismatch', `model input ${quote(input.name)} has element type ${input.elemType}; dataset images are fed as float32`);
  }
  if (dataset.format === 'npz') {
    const [, c, h, w] = dataset.info.shape;
    const names = ['C', 'H', 'W'];
    [c, h, w].forEach((size, k) => {
      const dim = input.dims[k + 1];
      if (typeof dim === 'number' && dim !== size) {
        throw new InputRejected(
          'dataset_shape_mismatch',
          `the dataset's images are (C, H, W) = (${c}, ${h}, ${w}) but model input ${quote(input.name)} expects [${input.dims.join(', ')}]: ${names[k]} differs (${size} vs ${dim})`,
        );
      }
    });
  } else {
    const channels = input.dims[1];
    if (typeof channels === 'number' && channels !== 1 && channels !== 3) {
      throw new InputRejected(
        'dataset_shape_mismatch',
        `model input ${quote(input.name)} takes ${channels} channels; image datasets are decoded to 1 (grayscale) or 3 (RGB) channels: upload an .npz with ${channels}-channel arrays instead`,
      );
    }
  }
  const classes = dataset.format === 'npz' ? dataset.info.classes : (dataset.info.numClasses ?? undefined);
  const scores = outputs?.length === 1 && outputs[0]!.dims.length === 2 ? outputs[0]!.dims[1] : undefined;
  if (classes !== undefined && typeof scores === 'number' && classes > scores) {
    throw new InputRejected(
      'dataset_shape_mismatch',
      `the dataset's labels go up to ${classes - 1} but model output ${quote(outputs![0]!.name)} scores ${scores} classes; use labels below ${scores}`,
    );
  }
}
