// Pure logic of the ReNO gallery and chart (no DOM, no ComfyUI imports: Node's test runner loads it).
//
// A "run" is what the live `reno.iteration` events of one ReNO Sampler (or ReNO Sampler (custom)) have
// said so far; a "chart model" is what the chart draws, made from a run or from the `reno_chart` UI
// output; "frames" are what the gallery shows (one image per iteration).
import { fmt } from "./reno_summary.js";

export const SAMPLER = "ReNOSampler";
export const CUSTOM_SAMPLER = "ReNOSamplerCustom";
export const PREVIEW = "ReNOIterationPreview";
export const SCORE = "ReNOScoreImages"; // a gallery of the scored images (no chart), for preference picks
export const TRAINER = "ReNORewardLoRATrainer"; // live training steps, then the held-out images per evaluation

/** Whether nodes of `type` show the live run of the `reno.iteration` events that name them. */
export function showsLiveRun(type) {
  return type === SAMPLER || type === CUSTOM_SAMPLER || type === TRAINER;
}

/** Whether nodes of `type` get the gallery and chart widgets. */
export function hasViews(type) {
  return showsLiveRun(type) || type === PREVIEW;
}

const num = (x) => (typeof x === "number" && Number.isFinite(x) ? x : null);

function count(x) {
  const n = Number(x);
  return Number.isInteger(n) && n >= 0 ? n : null;
}

/** Only inline raster images (what the server sends) may become an <img> src. */
export function safeImageDataURL(url) {
  return typeof url === "string" && /^data:image\/(jpeg|png|webp);base64,[A-Za-z0-9+/=]*$/.test(url) ? url : null;
}

/** [{label, name, weight}] with string labels and numeric weights; anything else dropped. */
export function cleanRewards(rewards) {
  if (!Array.isArray(rewards)) return [];
  return rewards
    .filter((r) => r && typeof r === "object" && (typeof r.label === "string" || typeof r.name === "string"))
    .map((r) => ({
      label: String(r.label ?? r.name),
      name: String(r.name ?? r.label),
      weight: num(r.weight) ?? 1,
    }));
}

/**
 * `live`: events may still come. `host`: the node that was executing when the events came (for ReNO
 * Sampler (custom), the SamplerCustomAdvanced running it); null when unknown.
 */
export function emptyRun() {
  return { promptId: null, iterations: 0, rewards: [], frames: [], best: null, live: true, host: null };
}

/** Whether the `reno.iteration` event `detail` starts a new run over `run`: iteration 0, or another prompt's. */
export function startsNewRun(run, detail) {
  if (!detail || typeof detail !== "object") return false;
  const it = count(detail.iteration);
  if (it === null) return false;
  const pid = typeof detail.prompt_id === "string" ? detail.prompt_id : null;
  return it === 0 || !run || Boolean(pid && run.promptId && pid !== run.promptId);
}

/**
 * Folds one `reno.iteration` event (`detail`) into `run` (batch element `batch`) and returns the new run.
 * Iteration 0 (or another prompt's event) starts over; a repeated iteration replaces the old frame.
 * `host` is the id of the node executing when the event came (kept from earlier events when omitted).
 */
export function reduceIteration(run, detail, batch = 0, host = undefined) {
  if (!detail || typeof detail !== "object") return run ?? emptyRun();
  const it = count(detail.iteration);
  if (it === null) return run ?? emptyRun();
  const prev = startsNewRun(run, detail) ? emptyRun() : run;
  const pid = typeof detail.prompt_id === "string" ? detail.prompt_id : null;
  const rewards = cleanRewards(detail.rewards);
  const scores = {};
  for (const r of rewards) scores[r.label] = num(detail.scores?.[r.label]?.[batch]);
  const frame = {
    iteration: it,
    scores,
    total: num(detail.total?.[batch]),
    loss: num(detail.loss?.[batch]),
    src: safeImageDataURL(detail.preview),
  };
  const frames = prev.frames.filter((f) => f.iteration !== it).concat([frame]);
  frames.sort((a, b) => a.iteration - b.iteration);
  const best = count(detail.best_iteration?.[batch]);
  return {
    promptId: pid ?? prev.promptId,
    iterations: Math.max(count(detail.iterations) ?? 0, it + 1),
    rewards: rewards.length ? rewards : prev.rewards,
    frames,
    best: best ?? prev.best,
    live: true,
    host: host === undefined || host === null ? prev.host : String(host),
  };
}

/**
 * Whether a ReNO Sampler (custom) run is over now that node `executing` runs (null: the prompt ended).
 * Its own node finished before the run (it only returns a SAMPLER, and has no UI output): the run
 * lasts while the node that was executing when its events came (`run.host`) runs.
 */
export function runEnded(run, executing) {
  if (!run?.live || !run.frames?.length) return false;
  return executing === null || executing === undefined || String(executing) !== String(run.host);
}

/** The run as it ended: no longer live, spanning the iterations it ran (as the `reno_chart` output does). */
export function finishRun(run) {
  if (!run) return emptyRun();
  const last = run.frames?.length ? run.frames[run.frames.length - 1].iteration + 1 : run.iterations;
  return { ...run, live: false, iterations: last };
}

/** The `reno_summary` digest (see summaryLines) of a run, from its events (batch element 0); null when empty. */
export function summaryOfRun(run) {
  if (!run?.frames?.length) return null;
  const first = run.frames[0];
  const best = run.frames.find((f) => f.iteration === run.best) ?? first;
  return {
    iterations: run.iterations,
    best_iteration: [best.iteration],
    initial_loss: [first.loss],
    best_loss: [best.loss],
    rewards: run.rewards,
    stop_reason: null,
  };
}

/** The chart model of a live run: x spans the planned iterations, lines grow as events arrive. */
export function chartFromRun(run) {
  if (!run || !run.frames?.length) return null;
  const n = Math.max(run.iterations, run.frames[run.frames.length - 1].iteration + 1);
  const at = (pick) => {
    const values = new Array(n).fill(null);
    for (const f of run.frames) if (f.iteration < n) values[f.iteration] = pick(f);
    return values;
  };
  return {
    iterations: n,
    best: run.best,
    rewards: run.rewards.map((r) => ({ label: r.label, weight: r.weight, values: at((f) => f.scores[r.label] ?? null) })),
    total: at((f) => f.total),
    stopReason: null,
  };
}

/** The chart model of a finished run, from the `reno_chart` UI output (`output.reno_chart[0]`). */
export function chartFromHistory(chart, batch = 0) {
  if (!chart || typeof chart !== "object" || !Array.isArray(chart.series)) return null;
  const s = chart.series[batch];
  if (!s || typeof s !== "object") return null;
  const rewards = cleanRewards(chart.rewards);
  const list = (xs) => (Array.isArray(xs) ? xs.map(num) : []);
  const total = list(s.weighted_total);
  const series = rewards.map((r) => ({ label: r.label, weight: r.weight, values: list(s.scores?.[r.label]) }));
  const n = Math.max(count(chart.iterations) ?? 0, total.length, ...series.map((x) => x.values.length));
  if (!n) return null;
  return {
    iterations: n,
    best: count(s.best_iteration),
    rewards: series,
    total,
    stopReason: typeof chart.stop_reason === "string" ? chart.stop_reason : null,
  };
}

/** How many batch elements a `reno_chart` payload has. */
export function batchCount(chart) {
  return Array.isArray(chart?.series) ? chart.series.length : 0;
}

/** [lo, hi] of the finite values, widened when flat; null when there are none. */
export function valueRange(values) {
  const finite = (values ?? []).filter((v) => num(v) !== null);
  if (!finite.length) return null;
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (hi - lo < 1e-12 * Math.max(1, Math.abs(hi))) {
    const pad = Math.abs(hi) * 0.05 || 1;
    lo -= pad;
    hi += pad;
  }
  return [lo, hi];
}

/** `v` scaled into [0, 1] over `range`; null for missing values. */
export function normalize(v, range) {
  if (num(v) === null || !range) return null;
  return (v - range[0]) / (range[1] - range[0]);
}

/** Round tick values covering [lo, hi] (about `target` of them, steps of 1, 2 or 5 × 10^k). */
export function niceTicks(lo, hi, target = 4) {
  if (num(lo) === null || num(hi) === null || hi < lo) return [];
  if (hi === lo) return [lo];
  const raw = (hi - lo) / Math.max(1, target);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const span = hi - lo;
  const step = [1, 2, 5, 10]
    .map((m) => m * mag)
    .reduce((a, b) => (Math.abs(span / b - target) < Math.abs(span / a - target) ? b : a));
  const ticks = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push(Number(t.toPrecision(12)));
  }
  return ticks;
}

/** x pixel of iteration `i` in a plot of `width` px starting at `left`, for `n` iterations. */
export function xOfIteration(i, left, width, n) {
  return n <= 1 ? left + width / 2 : left + (i * width) / (n - 1);
}

/** The iteration nearest to pixel `x` (clamped to 0..n-1); null when there is nothing to hover. */
export function iterationAtX(x, left, width, n) {
  if (!(n > 0) || num(x) === null) return null;
  if (n === 1) return 0;
  const i = Math.round(((x - left) / width) * (n - 1));
  return Math.min(n - 1, Math.max(0, i));
}

/** The lines a hover over iteration `i` shows: the iteration, the weighted total, each reward. */
export function hoverLines(model, i) {
  if (!model || i === null || i === undefined || i < 0 || i >= model.iterations) return [];
  const best = model.best === i ? " ★ best" : "";
  const lines = [`iteration ${i}${best}`, `weighted total ${fmt(model.total[i])}`];
  for (const r of model.rewards) lines.push(`${r.label} ×${fmt(r.weight)}: ${fmt(r.values[i])}`);
  return lines;
}

/** The `/view` route (query built with URLSearchParams) of one image of a UI output. */
export function viewRoute(image) {
  const q = new URLSearchParams();
  q.set("filename", String(image?.filename ?? ""));
  q.set("subfolder", String(image?.subfolder ?? ""));
  q.set("type", String(image?.type ?? "temp"));
  return `/view?${q.toString()}`;
}

/**
 * Gallery frames from ReNO Iteration Preview's `images` UI output (batch element `batch`), in
 * iteration order, with the weighted totals of the chart model. `toURL` turns a route into a URL
 * (the frontend's `api.apiURL`).
 */
export function framesFromImages(images, model, batch = 0, toURL = (route) => route) {
  if (!Array.isArray(images)) return [];
  const picked = images
    .map((img, k) => ({ img, k }))
    .filter(({ img }) => img && typeof img === "object" && typeof img.filename === "string")
    .filter(({ img }) => (count(img.batch_index) ?? 0) === batch)
    .map(({ img, k }) => ({ img, iteration: count(img.iteration) ?? k }));
  picked.sort((a, b) => a.iteration - b.iteration);
  return picked.map(({ img, iteration }) => ({
    iteration,
    total: num(model?.total?.[iteration]),
    src: toURL(viewRoute(img)),
    ref: { filename: img.filename, subfolder: String(img.subfolder ?? ""), type: String(img.type ?? "temp") },
  }));
}

/** Gallery frames of a live run (the events' previews). */
export function framesFromRun(run) {
  return (run?.frames ?? []).filter((f) => f.src).map((f) => ({ iteration: f.iteration, total: f.total, src: f.src }));
}

/** The caption under the gallery image (`frame.label` names what the frames are: "iteration" by default). */
export function caption(frame, iterations, best) {
  if (!frame) return "";
  const n = Math.max(iterations || 0, frame.iteration + 1);
  const mark = best === frame.iteration ? " · ★ best" : "";
  const label = typeof frame.label === "string" ? frame.label : "iteration";
  return `${label} ${frame.iteration} of ${n} · weighted total ${fmt(frame.total)}${mark}`;
}

/** Sampler frames with the /view references of the saved images (`reno_images`, batch element `batch`). */
export function withImageRefs(frames, images, batch = 0) {
  const refs = new Map();
  for (const img of Array.isArray(images) ? images : []) {
    if (!img || typeof img !== "object" || typeof img.filename !== "string") continue;
    if ((count(img.batch_index) ?? 0) !== batch || count(img.iteration) === null) continue;
    refs.set(count(img.iteration), {
      filename: img.filename, subfolder: String(img.subfolder ?? ""), type: String(img.type ?? "temp"),
    });
  }
  return frames.map((f) => (refs.has(f.iteration) ? { ...f, ref: refs.get(f.iteration) } : f));
}

/**
 * Gallery frames of a finished LoRA training: the held-out prompt's image at each evaluation (`images`, tagged
 * with their `step`) with the held-out reward of that evaluation (`training.evaluations`: [[step, reward], ...]).
 */
export function framesFromTraining(images, training, toURL = (route) => route) {
  const evaluations = Array.isArray(training?.evaluations) ? training.evaluations : [];
  const reward = new Map(evaluations.filter((e) => Array.isArray(e)).map(([step, r]) => [count(step), num(r)]));
  const stepOf = new Map((Array.isArray(images) ? images : [])
    .filter((img) => img && typeof img === "object" && typeof img.filename === "string")
    .map((img) => [img.filename, count(img.step)]));
  return framesFromImages(images, null, 0, toURL)
    .map((f) => {
      const step = stepOf.get(f.ref.filename) ?? f.iteration;
      return { ...f, iteration: step, label: "held-out image, step", total: reward.get(step) ?? null };
    })
    .sort((a, b) => a.iteration - b.iteration);
}
