// A temporary folder per test file, removed when the file's tests are done.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after } from 'node:test';

export interface Scratch {
  dir: string;
  /** Writes the bytes to a new file `m<n>.onnx` in the folder and returns its path. */
  writeModel(bytes: Buffer): string;
}

/** Call at the top level of a test file: the folder goes away in that file's `after`. */
export function scratchDir(prefix: string): Scratch {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  after(() => rmSync(dir, { recursive: true, force: true }));
  let counter = 0;
  return {
    dir,
    writeModel(bytes) {
      const file = path.join(dir, `m${counter++}.onnx`);
      writeFileSync(file, bytes);
      return file;
    },
  };
}
