// Pure helpers for the ReNO front end (no ComfyUI imports, so Node's test runner can load them).

/** Formats a number for a node label: 4 significant digits, no exponent for ordinary values. */
export function fmt(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return "–";
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
  return Number(x.toPrecision(4)).toString();
}

/**
 * Lines describing a finished ReNO run, from the sampler's `reno_summary` UI output
 * ({iterations, best_iteration[], initial_loss[], best_loss[], rewards[], stop_reason}).
 * Returns [] for anything that is not a summary.
 */
export function summaryLines(summary) {
  if (!summary || typeof summary !== "object" || !Array.isArray(summary.best_iteration)) return [];
  const n = Number(summary.iterations) || 0;
  const lines = [];
  summary.best_iteration.forEach((best, b) => {
    const prefix = summary.best_iteration.length > 1 ? `#${b}: ` : "";
    const start = summary.initial_loss?.[b];
    const end = summary.best_loss?.[b];
    lines.push(`${prefix}best iteration ${best} of ${n} · loss ${fmt(start)} → ${fmt(end)}`);
  });
  if (summary.stop_reason) lines.push(`stopped: ${String(summary.stop_reason)}`);
  return lines;
}
