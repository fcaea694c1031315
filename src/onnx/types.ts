// The shapes the reader returns, shared by the upload inspector, the model record and the worker.

/** A number, a symbolic name (dim_param) or null when the dimension is not declared. */
export type Dim = number | string | null;

/** A graph input or output as the file declares it; also what OnnxModel.inputs/outputs keep per tensor. */
export interface TensorInfo {
  name: string;
  /** ONNX TensorProto.DataType code; 0 when undeclared */
  elemType: number;
  /** element type name, e.g. float32 (dtypes.ts) */
  type: string;
  /** empty when the file declares no shape */
  dims: Dim[];
}

/** Where a message's payload lies in the file: what derived models copy verbatim. */
export interface Span {
  offset: number;
  length: number;
}
