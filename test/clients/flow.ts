// What both client flows share: the inputs, the checks of a downloaded artifact, and the parts of the flow
// that are plain HTTP rather than client calls (none: each flow uses only its generated client).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';

export interface FlowInput {
  baseUrl: string;
  apiKey: string;
  /** a small ONNX model with a 3-channel input: compresses in seconds */
  model: Blob;
  modelName: string;
  /** an .npz that fits the model */
  dataset: Blob;
  datasetName: string;
}

export interface FlowRecord {
  /** SSE event names in arrival order */
  events: string[];
  /** progress events that carried a rate and an ETA */
  progressWithEta: number;
  artifactBytes: number;
  /** how many pages the job list took at limit=1 */
  pages: number;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The two halves of a resumed download joined, checked against the server's whole-file checksum. */
export function joinAndCheck(first: Uint8Array, rest: Uint8Array, checksum: string | null, size: number): Uint8Array {
  const whole = new Uint8Array(first.length + rest.length);
  whole.set(first, 0);
  whole.set(rest, first.length);
  assert.equal(whole.length, size, 'the two ranges add up to the whole artifact');
  assert.equal(sha256Hex(whole), checksum, 'the resumed download has the X-Content-SHA256 of the artifact');
  return whole;
}

/** `bytes a-b/size` → size */
export function rangeSize(contentRange: string | null): number {
  const match = /^bytes \d+-\d+\/(\d+)$/.exec(contentRange ?? '');
  assert.ok(match?.[1], `Content-Range ${contentRange} names the size`);
  return Number(match[1]);
}
