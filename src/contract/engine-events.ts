/**
 * The engine's error event (contract C2): before exiting 1 or 2, `python3 -m tuckerize` prints one JSON line
 * on stdout, `{"event":"error","code":…,"detail":…,"field"?:…,"node"?:…,"data"?:{…}}` (engine/tuckerize/errors.py).
 * `detail` is written for users (no server paths); `field` is an option path such as `finetune.lr`.
 * Exit 2 (ENGINE_EXIT.input) is bad input, never retried; exit 1 (code internal_error) is retried.
 */
import { z } from 'zod';
import { ENGINE_ERROR_CODES, type EngineErrorCode } from './engine.js';

const CODES = Object.keys(ENGINE_ERROR_CODES) as [EngineErrorCode, ...EngineErrorCode[]];

export const EngineErrorEventSchema = z.object({
  event: z.literal('error'),
  code: z.enum(CODES),
  detail: z.string(),
  field: z.string().optional(),
  node: z.string().optional(),
  /** numbers a program acts on, per code (ENGINE_ERROR_CODES says which): target_unreachable has `range` or `nearest` */
  data: z.record(z.string(), z.unknown()).optional(),
});
export type EngineErrorEvent = z.infer<typeof EngineErrorEventSchema>;

/** The error event among the engine's stdout lines (the last one that is one), or null. */
export function findEngineError(stdout: string): EngineErrorEvent | null {
  const lines = stdout.split('\n');
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!.trim();
    if (!line.startsWith('{')) continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      continue;
    }
    const parsed = EngineErrorEventSchema.safeParse(value);
    if (parsed.success) return parsed.data;
  }
  return null;
}

/** The MACs or params targets the engine says it can reach, from a target_unreachable event. */
export function reachableTargets(event: EngineErrorEvent): { range?: [number, number]; nearest?: [number, number] } | null {
  if (event.code !== 'target_unreachable' || !event.data) return null;
  const pair = z.tuple([z.number(), z.number()]);
  const range = pair.safeParse(event.data.range);
  const nearest = pair.safeParse(event.data.nearest);
  if (!range.success && !nearest.success) return null;
  return { ...(range.success ? { range: range.data } : {}), ...(nearest.success ? { nearest: nearest.data } : {}) };
}
