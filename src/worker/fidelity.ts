// Fidelity of a compressed model against the original in onnxruntime-node: relative output error per
// output and top-1 agreement of the classifier output, accumulated over the verification batches.
import type * as ort from 'onnxruntime-node';

export class VerificationError extends Error {
  override name = 'VerificationError';
}

export interface FidelityResult {
  /** ‖a−b‖₂ / ‖a‖₂ per output over all samples, a = original */
  relativeError: Record<string, number>;
  maxRelativeError: number;
  /** share of samples where the argmax of the first [N, classes] output agrees; null without such an output */
  top1Agreement: number | null;
}

export class FidelityAccumulator {
  private diff2 = new Map<string, number>();
  private ref2 = new Map<string, number>();
  private agree = 0;
  private compared = 0;
  private classifierOutput: string | null | undefined = undefined;

  constructor(private readonly role: string) {}

  add(original: ort.InferenceSession.OnnxValueMapType, other: ort.InferenceSession.OnnxValueMapType): void {
    for (const [name, ref] of Object.entries(original)) {
      const cand = other[name];
      if (!cand) throw new VerificationError(`the ${this.role} model produced no output '${name}'`);
      if (ref.dims.join('x') !== cand.dims.join('x')) {
        throw new VerificationError(
          `output '${name}' has shape [${ref.dims.join(', ')}] from the original but [${cand.dims.join(', ')}] from the ${this.role} model`,
        );
      }
      const a = ref.data as Float32Array;
      const b = cand.data as Float32Array;
      let d2 = 0;
      let r2 = 0;
      for (let i = 0; i < a.length; i++) {
        const av = a[i]!;
        const bv = b[i]!;
        if (!Number.isFinite(bv)) {
          throw new VerificationError(`output '${name}' of the ${this.role} model contains ${bv} at element ${i}: the artifact is broken`);
        }
        if (!Number.isFinite(av)) {
          throw new VerificationError(`output '${name}' of the original model contains ${av} at element ${i}: cannot compare against it`);
        }
        d2 += (av - bv) ** 2;
        r2 += av ** 2;
      }
      this.diff2.set(name, (this.diff2.get(name) ?? 0) + d2);
      this.ref2.set(name, (this.ref2.get(name) ?? 0) + r2);
    }
    if (this.classifierOutput === undefined) {
      const first = Object.entries(original).find(([, v]) => v.dims.length === 2 && Number(v.dims[1]) > 1);
      this.classifierOutput = first ? first[0] : null;
    }
    if (this.classifierOutput !== null) {
      const ref = original[this.classifierOutput]!;
      const cand = other[this.classifierOutput]!;
      const [rows, cols] = ref.dims.map(Number) as [number, number];
      const argmax = (data: Float32Array, row: number) => {
        let best = 0;
        for (let c = 1; c < cols; c++) if (data[row * cols + c]! > data[row * cols + best]!) best = c;
        return best;
      };
      for (let r = 0; r < rows; r++) {
        if (argmax(ref.data as Float32Array, r) === argmax(cand.data as Float32Array, r)) this.agree++;
        this.compared++;
      }
    }
  }

  result(): FidelityResult {
    const relativeError: Record<string, number> = {};
    for (const [name, d2] of this.diff2) {
      const r2 = this.ref2.get(name)!;
      relativeError[name] = r2 === 0 ? (d2 === 0 ? 0 : Infinity) : Math.sqrt(d2 / r2);
    }
    return {
      relativeError,
      maxRelativeError: Math.max(0, ...Object.values(relativeError)),
      top1Agreement: this.compared > 0 ? this.agree / this.compared : null,
    };
  }
}
