// What each DCGM metric means on screen: its label, unit and the range its colours span.

/** Known metrics. A metric not listed (a derived one, say) spans its values' own range. */
export const METRICS = {
  DCGM_FI_DEV_GPU_TEMP: { label: 'GPU temperature', unit: '°C', min: 20, max: 90 },
  DCGM_FI_DEV_POWER_USAGE: { label: 'Power', unit: 'W', min: 0, max: 700 },
  DCGM_FI_DEV_GPU_UTIL: { label: 'GPU utilisation', unit: '%', min: 0, max: 100 },
  DCGM_FI_DEV_MEM_COPY_UTIL: { label: 'Memory copy utilisation', unit: '%', min: 0, max: 100 },
  DCGM_FI_DEV_ENC_UTIL: { label: 'Encoder utilisation', unit: '%', min: 0, max: 100 },
  DCGM_FI_DEV_DEC_UTIL: { label: 'Decoder utilisation', unit: '%', min: 0, max: 100 },
  DCGM_FI_DEV_SM_CLOCK: { label: 'SM clock', unit: 'MHz', min: 0, max: 2000 },
  DCGM_FI_DEV_MEM_CLOCK: { label: 'Memory clock', unit: 'MHz', min: 0, max: 2700 },
  DCGM_FI_DEV_FB_USED: { label: 'Frame buffer used', unit: 'MiB', min: 0, max: 81559 },
  DCGM_FI_DEV_FB_FREE: { label: 'Frame buffer free', unit: 'MiB', min: 0, max: 81559 },
};

export const DEFAULT_METRIC = 'DCGM_FI_DEV_GPU_TEMP';

export function label(metric) {
  return METRICS[metric] ? METRICS[metric].label : metric;
}

export function unit(metric) {
  return METRICS[metric] ? METRICS[metric].unit : '';
}

/** "45 °C", "111.99 W": at most two decimals, so a table lines up. */
export function format(metric, value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  const n = Math.abs(value) >= 100 ? value.toFixed(0) : String(Math.round(value * 100) / 100);
  return `${n}${unit(metric) ? ` ${unit(metric)}` : ''}`;
}

/** The colour range: the metric's known span, widened to the values actually seen. */
export function domain(metric, values) {
  let lo = METRICS[metric] ? METRICS[metric].min : Infinity;
  let hi = METRICS[metric] ? METRICS[metric].max : -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  return lo === hi ? [lo, lo + 1] : [lo, hi];
}

// A perceptually ordered ramp (dark blue, teal, yellow, orange, red), sampled into 256 steps
// once, so colouring 25,000 cells is a table lookup.
const STOPS = [
  [0.0, [49, 54, 149]],
  [0.25, [69, 117, 180]],
  [0.45, [116, 196, 174]],
  [0.6, [254, 224, 139]],
  [0.8, [244, 109, 67]],
  [1.0, [165, 0, 38]],
];
const RAMP = Array.from({ length: 256 }, (_, i) => {
  const t = i / 255;
  let k = 1;
  while (k < STOPS.length - 1 && STOPS[k][0] < t) k += 1;
  const [t0, c0] = STOPS[k - 1];
  const [t1, c1] = STOPS[k];
  const f = (t - t0) / (t1 - t0);
  const c = c0.map((x, j) => Math.round(x + (c1[j] - x) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
});

export function color(value, [lo, hi]) {
  const t = Math.min(1, Math.max(0, (value - lo) / (hi - lo)));
  return RAMP[Math.round(t * 255)];
}

/** A CSS gradient of the ramp, for the legend. */
export function gradient() {
  return `linear-gradient(to right, ${STOPS.map(([t], i) => `${RAMP[Math.round(t * 255)]} ${t * 100}%`).join(', ')})`;
}
