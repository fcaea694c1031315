// One streaming reader of ONNX files (protobuf wire format) for the whole service: the upload inspector
// (src/security) adds limits and policy on top, the worker's verification and profiling read and derive
// models through it, and the tests' hostile-file writer encodes with the same codec.
export { WIRE_FIXED32, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT, decodeVarint, encodeVarint, encodeKey, encode } from './wire.js';
export { ELEMENT_TYPES, FLOAT32, INT32, INT64, dataTypeName, elementBytes, elementBytesByName, type ElementType } from './dtypes.js';
export * as fields from './fields.js';
export { OnnxFormatError, openFileSource, bufferSource, readBytes, type ByteSource, type FormatErrorCode } from './cursor.js';
export {
  readModel, readModelFile, readModelBytes, fedInputs, describeNode, DEFAULT_READ_LIMITS, MAX_RANK, SMALL_TENSOR_ELEMENTS,
  type OnnxModel, type OnnxNode, type AttributeValue, type ValueInfo, type ReadLimits, type TensorHeader,
} from './reader.js';
export type { Dim, Span, TensorInfo } from './types.js';
