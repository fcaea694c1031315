// The one error type the inspectors throw for a file the service refuses. The API maps it to a 422
// problem+json whose `type` ends in the code, so clients can branch on the code and show the detail.

export type RejectionCode =
  // ONNX
  | 'onnx_empty'
  | 'onnx_not_protobuf'
  | 'onnx_truncated'
  | 'onnx_not_a_model'
  | 'onnx_ir_version'
  | 'onnx_opset'
  | 'onnx_external_data'
  | 'onnx_absurd_shape'
  | 'onnx_initializer_size'
  | 'onnx_data_type'
  | 'onnx_sparse_initializer'
  | 'onnx_unsupported_op'
  | 'onnx_io'
  | 'onnx_too_large'
  | 'onnx_absurd_attribute'
  | 'onnx_invalid_shape'
  // ZIP datasets (and the zip container of an NPZ)
  | 'zip_invalid'
  | 'zip_path_traversal'
  | 'zip_absolute_path'
  | 'zip_bad_name'
  | 'zip_duplicate_entry'
  | 'zip_symlink'
  | 'zip_special_file'
  | 'zip_encrypted'
  | 'zip_too_many_entries'
  | 'zip_too_large'
  | 'zip_bomb'
  | 'zip_size_mismatch'
  | 'zip_nested_archive'
  | 'zip_not_image'
  | 'zip_image_too_large'
  | 'zip_layout'
  | 'zip_empty'
  // NPZ
  | 'npz_bad_entry'
  | 'npz_bad_header'
  | 'npz_pickle'
  | 'npz_dtype'
  | 'npz_shape'
  | 'npz_missing_x'
  | 'npz_labels'
  | 'npz_too_large'
  | 'npz_size_mismatch'
  // dataset vs model
  | 'dataset_shape_mismatch';

export class InputRejected extends Error {
  override readonly name = 'InputRejected';
  /** Every rejection is about the content of a well-formed request: 422 Unprocessable Content. */
  readonly status = 422;

  constructor(
    readonly code: RejectionCode,
    readonly detail: string,
  ) {
    super(`${code}: ${detail}`);
  }
}

/** Shortens user-controlled strings (entry names, node names) before they go into a message. */
export function quote(value: string, max = 120): string {
  const clean = value.replace(/[\u0000-\u001f\u007f]/g, '?');
  return JSON.stringify(clean.length > max ? `${clean.slice(0, max)}…` : clean);
}
