// Streaming linear-interpolation resampler, shared by both worklets (imported as an ES module).
// It carries the fractional read position and the previous block's last sample across calls,
// so consecutive blocks join without clicks whatever the two rates are.
export class LinearResampler {
  constructor(fromRate, toRate) {
    if (!(fromRate > 0 && toRate > 0)) throw new Error(`bad resampler rates ${fromRate} -> ${toRate}`);
    this.step = fromRate / toRate; // input samples advanced per output sample
    this.pos = 0; // position of the next output sample; -1 means "the previous block's last sample"
    this.prev = 0;
  }

  // input: Float32Array at fromRate -> Float32Array at toRate
  process(input) {
    const n = input.length;
    if (n === 0) return new Float32Array(0);
    const out = new Float32Array(Math.ceil((n - this.pos) / this.step) + 1);
    let count = 0;
    let pos = this.pos;
    while (pos < n - 1) {
      const i = Math.floor(pos);
      const frac = pos - i;
      const a = i < 0 ? this.prev : input[i];
      out[count++] = a + (input[i + 1] - a) * frac;
      pos += this.step;
    }
    this.pos = pos - n;
    this.prev = input[n - 1];
    return out.subarray(0, count);
  }
}
