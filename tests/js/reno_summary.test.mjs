import { test } from "node:test";
import assert from "node:assert/strict";
import { chainLine, fmt, searchLine, summaryLines } from "../../web/js/reno_summary.js";

test("fmt keeps 4 significant digits and handles non-finite values", () => {
  assert.equal(fmt(81.44992065429688), "81.45");
  assert.equal(fmt(0), "0");
  assert.equal(fmt(123456), "1.23e+5");
  assert.equal(fmt(NaN), "–");
  assert.equal(fmt(undefined), "–");
});

test("summaryLines describes one image per line", () => {
  const lines = summaryLines({
    iterations: 50, best_iteration: [37], initial_loss: [81.45], best_loss: [77.77], rewards: [], stop_reason: null,
  });
  assert.deepEqual(lines, ["best iteration 37 of 50 · loss 81.45 → 77.77"]);
});

test("summaryLines numbers batch elements and reports an early stop", () => {
  const lines = summaryLines({
    iterations: 4, best_iteration: [3, 0], initial_loss: [2, 3], best_loss: [1, 3], stop_reason: "no finite loss",
  });
  assert.deepEqual(lines, [
    "#0: best iteration 3 of 4 · loss 2 → 1",
    "#1: best iteration 0 of 4 · loss 3 → 3",
    "stopped: no finite loss",
  ]);
});

test("summaryLines ignores anything that is not a summary", () => {
  for (const bad of [undefined, null, 3, "x", {}, { best_iteration: "no" }]) assert.deepEqual(summaryLines(bad), []);
});

test("text from the server stays text", () => {
  const evil = "<img src=x onerror=alert(1)>";
  const [, line] = summaryLines({ iterations: 1, best_iteration: [0], initial_loss: [1], best_loss: [1], stop_reason: evil });
  assert.equal(line, `stopped: ${evil}`);
});

test("chainLine names the steps, the sampler and the gradient of the run", () => {
  const chain = { steps: 4, sampler: "euler", scheduler: "sgm_uniform", gradient: "exact", gradient_steps: 1 };
  assert.equal(chainLine(chain), "4 steps · euler · exact");
  assert.equal(chainLine({ ...chain, steps: 1 }), "1 step · euler · exact");
  assert.equal(chainLine({ ...chain, steps: 8, sampler: "lcm", gradient: "last k", gradient_steps: 2 }),
    "8 steps · lcm · last k (k = 2)");
  assert.equal(chainLine({ ...chain, gradient: "drtune", gradient_steps: 1 }), "4 steps · euler · drtune (k = 1)");
  assert.equal(chainLine({ ...chain, scheduler: null }), "4 steps · euler · exact"); // ReNO Sampler (custom)
});

test("chainLine ignores anything that is not a chain", () => {
  for (const bad of [undefined, null, 3, "x", {}, { steps: 0, sampler: "euler", gradient: "exact" },
    { steps: 2.5, sampler: "euler", gradient: "exact" }, { steps: 4, sampler: 3, gradient: "exact" },
    { steps: 4, sampler: "euler" }]) assert.equal(chainLine(bad), null);
});

test("summaryLines shows the chain after the per-image lines and before an early stop", () => {
  const chain = { steps: 4, sampler: "euler", scheduler: "simple", gradient: "exact", gradient_steps: 1 };
  assert.deepEqual(summaryLines({
    iterations: 50, best_iteration: [37], initial_loss: [81.45], best_loss: [77.77], stop_reason: null, chain,
  }), ["best iteration 37 of 50 · loss 81.45 → 77.77", "4 steps · euler · exact"]);
  assert.deepEqual(summaryLines({
    iterations: 4, best_iteration: [3, 0], initial_loss: [2, 3], best_loss: [1, 3], stop_reason: "no finite loss",
    chain: { ...chain, steps: 1 },
  }), ["#0: best iteration 3 of 4 · loss 2 → 1", "#1: best iteration 0 of 4 · loss 3 → 3", "1 step · euler · exact",
    "stopped: no finite loss"]);
});

test("a sampler name from the server stays text", () => {
  const evil = "<img src=x onerror=alert(1)>";
  assert.equal(chainLine({ steps: 1, sampler: evil, gradient: "exact" }), `1 step · ${evil} · exact`);
});

test("summaryLines adds the search before the gradient after the chain, and nothing without one", () => {
  const search = { candidates: 8, keep: 2, kept_seeds: [12, 15], kept_totals: [0.41, 0.4], best: 0.41, worst: 0.12 };
  const lines = summaryLines({
    iterations: 4, best_iteration: [3, 1], initial_loss: [2, 3], best_loss: [1, 2], stop_reason: null,
    chain: { steps: 1, sampler: "euler", gradient: "exact", gradient_steps: 1 }, search,
  });
  assert.deepEqual(lines.slice(2), ["1 step · euler · exact", "search: 8 seeds, kept 12, 15 · weighted total 0.41 (worst 0.12)"]);
  assert.equal(searchLine(undefined), null);
  assert.equal(searchLine({ candidates: 1, kept_seeds: [3] }), null);
  assert.equal(searchLine({ candidates: "x", kept_seeds: [3] }), null);
  assert.equal(searchLine({ candidates: 3 }), null);
});
