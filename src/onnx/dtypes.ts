// TensorProto.DataType: the one table of ONNX element types, their names (onnxruntime's spelling) and sizes.

export interface ElementType {
  name: string;
  /** bytes per element; 4-bit types pack two elements per byte; 0 for strings (no fixed size) */
  bytes: number;
  float: boolean;
}

export const ELEMENT_TYPES: Readonly<Record<number, ElementType>> = {
  1: { name: 'float32', bytes: 4, float: true },
  2: { name: 'uint8', bytes: 1, float: false },
  3: { name: 'int8', bytes: 1, float: false },
  4: { name: 'uint16', bytes: 2, float: false },
  5: { name: 'int16', bytes: 2, float: false },
  6: { name: 'int32', bytes: 4, float: false },
  7: { name: 'int64', bytes: 8, float: false },
  8: { name: 'string', bytes: 0, float: false },
  9: { name: 'bool', bytes: 1, float: false },
  10: { name: 'float16', bytes: 2, float: true },
  11: { name: 'float64', bytes: 8, float: true },
  12: { name: 'uint32', bytes: 4, float: false },
  13: { name: 'uint64', bytes: 8, float: false },
  14: { name: 'complex64', bytes: 8, float: false },
  15: { name: 'complex128', bytes: 16, float: false },
  16: { name: 'bfloat16', bytes: 2, float: true },
  17: { name: 'float8e4m3fn', bytes: 1, float: true },
  18: { name: 'float8e4m3fnuz', bytes: 1, float: true },
  19: { name: 'float8e5m2', bytes: 1, float: true },
  20: { name: 'float8e5m2fnuz', bytes: 1, float: true },
  21: { name: 'uint4', bytes: 0.5, float: false },
  22: { name: 'int4', bytes: 0.5, float: false },
  23: { name: 'float4e2m1', bytes: 0.5, float: true },
};

export const FLOAT32 = 1;
export const INT32 = 6;
export const INT64 = 7;

/** 'float32', 'int64', ...; 'undeclared' for 0 (a value info without a type); 'unknown(N)' otherwise. */
export function dataTypeName(code: number): string {
  if (code === 0) return 'undeclared';
  return ELEMENT_TYPES[code]?.name ?? `unknown(${code})`;
}

/** Bytes per element, 0 when the type has no fixed size or is unknown. */
export function elementBytes(code: number): number {
  return ELEMENT_TYPES[code]?.bytes ?? 0;
}

/** Bytes per element of an onnxruntime tensor type name ('float32', ...); 0 when not sized. */
export function elementBytesByName(name: string): number {
  for (const t of Object.values(ELEMENT_TYPES)) if (t.name === name) return t.bytes;
  return 0;
}
