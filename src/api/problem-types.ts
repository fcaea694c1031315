// The registry of problem types: every `type` a problem+json answer can carry, with its status and what a
// client should do about it. GET /problems/<slug> serves each entry as a page (routes/problems.ts), so a
// problem's type URI leads to its documentation; test/openapi.test.ts fails when code throws a type that is
// not listed here.
import type { RejectionCode } from '../security/rejection.js';

export interface ProblemType {
  status: number;
  title: string;
  description: string;
}

const UNPROCESSABLE = 'Unprocessable content';

/** What each upload inspection refusal means; the problem type is the code in kebab-case. */
const REJECTIONS: Record<RejectionCode, string> = {
  onnx_empty: 'The uploaded model has no bytes.',
  onnx_not_protobuf: 'The file is not an ONNX protobuf (random bytes, JSON, or another format).',
  onnx_truncated: 'The ONNX file ends inside a field: the upload was cut off.',
  onnx_not_a_model: 'The protobuf is not an ONNX ModelProto (no graph).',
  onnx_ir_version: 'The ONNX IR version is outside the supported range.',
  onnx_opset: 'The default-domain opset is outside the supported range; re-export with a supported opset.',
  onnx_external_data: 'A tensor keeps its data in an external file; save the model with all tensors inside it.',
  onnx_absurd_shape: 'A declared or inferred shape has far more elements than the service accepts (the detail names the node).',
  onnx_absurd_attribute: 'A stride, padding, dilation or kernel attribute is far beyond what a CNN uses (the detail names the node).',
  onnx_invalid_shape: 'Shapes do not fit together along the graph (the detail names the node).',
  onnx_initializer_size: "An initializer's raw data does not match its declared shape and type.",
  onnx_data_type: 'A tensor has a data type ONNX does not define.',
  onnx_sparse_initializer: 'Sparse initializers are not supported.',
  onnx_unsupported_op: 'The graph uses operators the service cannot run or rewrite (the detail names them and their nodes).',
  onnx_io: 'The model declares no usable input or output.',
  onnx_too_large: 'The model has more nodes, tensors or bytes than the service accepts.',
  zip_invalid: 'The file is not a readable ZIP archive.',
  zip_path_traversal: 'An entry name climbs out of the archive (`../`).',
  zip_absolute_path: 'An entry name is an absolute path.',
  zip_bad_name: 'An entry name has control characters or is not valid UTF-8.',
  zip_duplicate_entry: 'Two entries have the same name.',
  zip_symlink: 'An entry is a symbolic link.',
  zip_special_file: 'An entry is a device, FIFO or other special file.',
  zip_encrypted: 'An entry is encrypted.',
  zip_too_many_entries: 'The archive has more entries than the service accepts.',
  zip_too_large: 'The archive expands to more bytes than the service accepts.',
  zip_bomb: 'An entry expands far more than real images do.',
  zip_size_mismatch: "An entry's size does not match its header.",
  zip_nested_archive: 'The archive contains another archive.',
  zip_not_image: 'An entry is not a PNG or JPEG image.',
  zip_image_too_large: 'An image has more pixels than the service accepts.',
  zip_layout: 'The archive is not one folder per class with images inside.',
  zip_empty: 'The archive has no images.',
  npz_bad_entry: 'An .npz entry is not a .npy array.',
  npz_bad_header: 'A .npy header cannot be read.',
  npz_pickle: 'An array needs pickle (object dtype); save plain numeric arrays.',
  npz_dtype: 'An array has a dtype the service does not read (use uint8, float16/32/64 or integers for labels).',
  npz_shape: 'The array `x` is not [N, C, H, W] or [N, H, W].',
  npz_missing_x: 'The .npz has no array named `x`.',
  npz_labels: 'The labels `y` do not match `x` (count or dtype).',
  npz_too_large: 'The arrays are larger than the service accepts.',
  npz_size_mismatch: "An array's data does not match its header.",
  dataset_shape_mismatch: "The dataset's images do not fit the model input (channels or size); the detail says which dimension.",
};

export const PROBLEM_TYPES: Record<string, ProblemType> = {
  'bad-request': {
    status: 400,
    title: 'Bad request',
    description: 'The request is malformed: a field is missing, of the wrong type or out of range. `errors[]` names each field (`in` and an RFC 6901 `pointer`).',
  },
  'invalid-job-options': {
    status: 422,
    title: 'Invalid job options',
    description: 'The job request is well-formed but its `options` cannot be run: a value out of range or a combination the engine refuses (the same rules the engine checks, from one shared schema). `errors[]` names each option with an RFC 6901 `pointer` under `/options`.',
  },
  unauthorized: {
    status: 401,
    title: 'Unauthorized',
    description: 'No API key, a malformed one, or an unknown or revoked one. Send `Authorization: Bearer tk_<prefix>_<secret>`.',
  },
  forbidden: { status: 403, title: 'Forbidden', description: 'The API key may not do this.' },
  'not-found': {
    status: 404,
    title: 'Not found',
    description: "No such route, or no such model, dataset or job for this API key's tenant (another tenant's ids read as not found).",
  },
  'request-timeout': {
    status: 408,
    title: 'Request timeout',
    description: 'The request headers or body arrived too slowly; the connection is closed. Retry on a better connection.',
  },
  conflict: {
    status: 409,
    title: 'Conflict',
    description: 'The resource is not in a state that allows this: the report or artifact of a job that has not succeeded, or an Idempotency-Key reused with another body.',
  },
  'payload-too-large': { status: 413, title: 'Payload too large', description: 'The upload or body is larger than the configured limit.' },
  'unsupported-media-type': {
    status: 415,
    title: 'Unsupported media type',
    description: 'Send application/json, or multipart/form-data with the file in the field `file` for uploads.',
  },
  'range-not-satisfiable': {
    status: 416,
    title: 'Range not satisfiable',
    description: 'The Range starts past the end of the artifact; Content-Range says its size.',
  },
  unprocessable: {
    status: 422,
    title: UNPROCESSABLE,
    description: 'The request is well-formed but cannot be carried out as asked (options that do not fit the model, data a fine-tuning needs but lacks, a job over the limits).',
  },
  'onnx-runtime-load': { status: 422, title: UNPROCESSABLE, description: 'onnxruntime refused to load the model (the detail quotes why).' },
  ...Object.fromEntries(
    Object.entries(REJECTIONS).map(([code, description]) => [code.replaceAll('_', '-'), { status: 422, title: UNPROCESSABLE, description }]),
  ),
  'too-many-requests': {
    status: 429,
    title: 'Too many requests',
    description: 'The rate limit of this API key (or, before authentication, of this address) is used up; wait Retry-After seconds.',
  },
  'quota-exceeded': {
    status: 429,
    title: 'Quota exceeded',
    description: "The tenant's jobs in flight or compute per hour are at their limit; wait Retry-After seconds or for jobs to finish.",
  },
  internal: {
    status: 500,
    title: 'Internal server error',
    description: 'A fault of the service. Quote the X-Request-Id when reporting it.',
  },
  'service-unavailable': {
    status: 503,
    title: 'Service unavailable',
    description: 'A dependency (PostgreSQL or Redis) is unavailable; retry after a few seconds.',
  },
};

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A small HTML page for one problem type, or the index of all of them. */
export function problemPage(slug: string | null): string | null {
  const entries = slug === null ? Object.entries(PROBLEM_TYPES) : PROBLEM_TYPES[slug] ? [[slug, PROBLEM_TYPES[slug]] as const] : [];
  if (entries.length === 0) return null;
  const title = slug === null ? 'tuckerize problem types' : `${slug}: ${PROBLEM_TYPES[slug]?.title}`;
  const rows = entries
    .map(
      ([name, t]) =>
        `<section id="${escapeHtml(name)}"><h2><a href="/problems/${escapeHtml(name)}">${escapeHtml(name)}</a></h2>` +
        `<p><strong>${t.status} ${escapeHtml(t.title)}</strong></p><p>${escapeHtml(t.description)}</p></section>`,
    )
    .join('\n');
  return (
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head><body>` +
    `<h1>${escapeHtml(title)}</h1><p>Problem details (RFC 9457) of the tuckerize API carry <code>type</code> = ` +
    `<code>https://tuckerize.dev/problems/&lt;name&gt;</code>; the <code>detail</code> says what to change.</p>\n${rows}\n` +
    (slug === null ? '' : '<p><a href="/problems">all problem types</a></p>') +
    '</body></html>'
  );
}
