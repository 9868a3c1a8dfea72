// Pure helpers for the ReNO front end (no ComfyUI imports, so Node's test runner can load them).

/** Formats a number for a node label: 4 significant digits, no exponent for ordinary values. */
export function fmt(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return "–";
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
  return Number(x.toPrecision(4)).toString();
}

/**
 * The sampling chain a run backpropagated through, from the `chain` of its `reno_summary` / `reno_chart`
 * ({steps, sampler, scheduler, gradient, gradient_steps}): "4 steps · euler · exact", "8 steps · lcm · last k
 * (k = 2)". null for anything that is not a chain.
 */
export function chainLine(chain) {
  if (!chain || typeof chain !== "object") return null;
  const steps = Number(chain.steps);
  if (!Number.isInteger(steps) || steps < 1 || typeof chain.sampler !== "string" || typeof chain.gradient !== "string") {
    return null;
  }
  const k = Number(chain.gradient_steps);
  const gradient = chain.gradient !== "exact" && Number.isInteger(k) ? `${chain.gradient} (k = ${k})` : chain.gradient;
  return `${steps} ${steps === 1 ? "step" : "steps"} · ${chain.sampler} · ${gradient}`;
}

/**
 * Lines describing a finished ReNO run, from the sampler's `reno_summary` UI output
 * ({iterations, best_iteration[], initial_loss[], best_loss[], rewards[], stop_reason, chain}): one line
 * per image, then the chain ("4 steps · euler · exact"), then an early stop.
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
  const chain = chainLine(summary.chain);
  if (chain) lines.push(chain);
  const search = searchLine(summary.search);
  if (search) lines.push(search);
  if (summary.stop_reason) lines.push(`stopped: ${String(summary.stop_reason)}`);
  return lines;
}

/**
 * The search before the gradient (ReNO Sampler's candidates / keep), from a summary's `search`
 * ({candidates, keep, kept_seeds[], kept_totals[], best, worst}): "search: 8 seeds, kept 12, 15 · weighted total
 * 0.41 (worst 0.12)". null for anything else.
 */
export function searchLine(search) {
  if (!search || typeof search !== "object" || !Array.isArray(search.kept_seeds)) return null;
  const n = Number(search.candidates);
  if (!Number.isInteger(n) || n < 2) return null;
  const seeds = search.kept_seeds.map((x) => String(x)).join(", ");
  return `search: ${n} seeds, kept ${seeds} · weighted total ${fmt(search.best)} (worst ${fmt(search.worst)})`;
}

/**
 * Lines under ReNO Train Reward LoRA after training, from its `reno_training` UI output ({method, steps,
 * held_out_before, held_out_after, best_step, stop_reason}): "alignprop · 200 steps · held-out reward 0.12 → 0.31".
 */
export function trainingLines(t) {
  if (!t || typeof t !== "object" || typeof t.method !== "string") return [];
  const steps = Number(t.steps);
  let line = `${t.method} · ${Number.isInteger(steps) ? steps : "?"} ${steps === 1 ? "step" : "steps"}`;
  if (typeof t.held_out_before === "number" && typeof t.held_out_after === "number") {
    line += ` · held-out reward ${fmt(t.held_out_before)} → ${fmt(t.held_out_after)}`;
  }
  const lines = [line];
  if (Number.isInteger(t.best_step)) lines.push(`kept the LoRA of step ${t.best_step} (best held-out reward)`);
  if (t.stop_reason) lines.push(`stopped: ${String(t.stop_reason)}`);
  return lines;
}
