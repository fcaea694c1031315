// Energy per inference: an ESTIMATE from a stated model, not a measurement.
//
//   E = MACs · e_mac + bytes_moved · e_byte
//
// Constants: M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
// 45 nm process, 0.9 V:
//   32-bit float multiply 3.7 pJ + 32-bit float add 0.9 pJ  → e_mac  = 4.6 pJ per fp32 MAC
//   32-bit DRAM access 640 pJ                                → e_byte = 160 pJ per byte
//   (8 KB SRAM 32-bit read 5 pJ = 1.25 pJ/byte: quoted to show that DRAM traffic, not arithmetic,
//    dominates when tensors do not fit on chip; the estimate charges DRAM for all traffic.)
// Bytes moved, per inference:
//   weights (all initializers) read once from DRAM
//   + the network input read once
//   + every intermediate activation written once and read once (2×)
//   + the outputs written once.
// Caches that keep a layer's activations on chip would lower the activation term; reuse of weights
// across a batch would lower the weight term. Both are ignored: the model is for comparing an
// original network with its compressed version under the same assumptions.

export interface EnergyConstants {
  source: string;
  picojoulesPerMac: number;
  picojoulesPerDramByte: number;
  picojoulesPerSramByte: number;
}

export const HOROWITZ_45NM: EnergyConstants = {
  source: 'M. Horowitz, "Computing\'s energy problem (and what we can do about it)", ISSCC 2014, 45 nm: '
    + 'fp32 mult 3.7 pJ + add 0.9 pJ per MAC; 32-bit DRAM access 640 pJ (160 pJ/byte); 8 KB SRAM 32-bit read 5 pJ',
  picojoulesPerMac: 4.6, // 3.7 pJ multiply + 0.9 pJ add
  picojoulesPerDramByte: 640 / 4,
  picojoulesPerSramByte: 5 / 4,
};

export const ENERGY_MODEL_STATEMENT =
  'estimate: E = MACs·e_mac + bytes_moved·e_byte (DRAM); bytes moved = weights read once + input read once '
  + '+ each intermediate activation written and read once + outputs written once';

export interface EnergyInputs {
  macs: number;
  weightBytes: number;
  inputBytes: number;
  /** bytes of every tensor nodes produce, the graph outputs included */
  activationBytes: number;
  outputBytes: number;
}

export interface EnergyEstimate {
  kind: 'estimate';
  statement: string;
  constants: EnergyConstants;
  bytesMoved: number;
  computeMillijoules: number;
  memoryMillijoules: number;
  millijoules: number;
}

const PICO_TO_MILLI = 1e-9;

export function estimateEnergy(inputs: EnergyInputs, constants: EnergyConstants = HOROWITZ_45NM): EnergyEstimate {
  const intermediateBytes = inputs.activationBytes - inputs.outputBytes;
  if (intermediateBytes < 0 || inputs.macs < 0 || inputs.weightBytes < 0 || inputs.inputBytes < 0) {
    throw new RangeError(
      `energy model inputs must be non-negative and outputs ⊆ activations; got ${JSON.stringify(inputs)}`,
    );
  }
  const bytesMoved = inputs.weightBytes + inputs.inputBytes + 2 * intermediateBytes + inputs.outputBytes;
  const computeMillijoules = inputs.macs * constants.picojoulesPerMac * PICO_TO_MILLI;
  const memoryMillijoules = bytesMoved * constants.picojoulesPerDramByte * PICO_TO_MILLI;
  return {
    kind: 'estimate',
    statement: ENERGY_MODEL_STATEMENT,
    constants,
    bytesMoved,
    computeMillijoules,
    memoryMillijoules,
    millijoules: computeMillijoules + memoryMillijoules,
  };
}
