// The engine's stdout protocol (docs/design.md, engine contract): one JSON object per line — progress, log,
// result, and before a non-zero exit the error event of the C2 contract. Anything else is a stray line.

import { EngineErrorEventSchema, type EngineErrorEvent } from '../contract/engine-events.js';

/** One line of the engine's stdout protocol (docs/design.md, engine contract). */
export type EngineEvent =
  | { event: 'progress'; stage: string; done: number; total: number; message?: string; [k: string]: unknown }
  | { event: 'log'; level: 'info' | 'warn'; message: string; [k: string]: unknown }
  | {
      event: 'result';
      artifact: string;
      plan: string;
      report: string;
      summary: Record<string, unknown>;
      [k: string]: unknown;
    }
  | EngineErrorEvent;

export type { EngineErrorEvent };

/** Splits a byte stream into lines, keeping an incomplete tail until its newline arrives. */
export class LineSplitter {
  private pending = '';

  constructor(private readonly maxLineChars = 1 << 20) {}

  push(chunk: string): string[] {
    const text = this.pending + chunk;
    const parts = text.split('\n');
    this.pending = parts.pop() ?? '';
    // A runaway line without newline (a tensor dumped by mistake) must not grow memory unbounded.
    if (this.pending.length > this.maxLineChars) {
      parts.push(this.pending);
      this.pending = '';
    }
    return parts.map((line) => line.replace(/\r$/, '')).filter((line) => line.length > 0);
  }

  /** The unterminated last line, if the stream ended without a newline. */
  flush(): string[] {
    const rest = this.pending.replace(/\r$/, '');
    this.pending = '';
    return rest.length > 0 ? [rest] : [];
  }
}

/** Parses one stdout line; null when it is not a protocol event. */
export function parseEngineLine(line: string): EngineEvent | null {
  if (!line.startsWith('{')) return null;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const obj = value as Record<string, unknown>;
  switch (obj.event) {
    case 'progress':
      if (typeof obj.stage === 'string' && typeof obj.done === 'number' && typeof obj.total === 'number') {
        return obj as EngineEvent;
      }
      return null;
    case 'log':
      if (typeof obj.message === 'string') {
        return { ...obj, event: 'log', level: obj.level === 'warn' ? 'warn' : 'info', message: obj.message };
      }
      return null;
    case 'result':
      if (typeof obj.artifact === 'string' && typeof obj.report === 'string') {
        return {
          ...obj,
          event: 'result',
          artifact: obj.artifact,
          plan: typeof obj.plan === 'string' ? obj.plan : 'plan.json',
          report: obj.report,
          summary: typeof obj.summary === 'object' && obj.summary !== null ? (obj.summary as Record<string, unknown>) : {},
        };
      }
      return null;
    case 'error': {
      // The contract's own schema (src/contract/engine-events.ts): code, detail, field, node, data.
      const parsed = EngineErrorEventSchema.safeParse(obj);
      return parsed.success ? parsed.data : null;
    }
    default:
      return null;
  }
}

/** Keeps the last `limit` characters of a stream. */
export class TailBuffer {
  private text = '';
  constructor(private readonly limit: number) {}
  push(chunk: string): void {
    this.text += chunk;
    if (this.text.length > 2 * this.limit) this.text = this.text.slice(-this.limit);
  }
  toString(): string {
    return this.text.slice(-this.limit);
  }
}

/** The last non-empty line of a text (stderr's last line is the engine's one-line complaint). */
export function lastLine(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  return lines[lines.length - 1] ?? '';
}

