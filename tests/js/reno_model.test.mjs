import { test } from "node:test";
import assert from "node:assert/strict";
import {
  batchCount, caption, chartFromHistory, chartFromRun, cleanRewards, emptyRun, framesFromImages, framesFromRun,
  hoverLines, iterationAtX, niceTicks, normalize, reduceIteration, safeImageDataURL, valueRange, viewRoute,
  xOfIteration,
} from "../../web/js/reno_model.js";

const REWARDS = [
  { label: "pickscore", name: "pickscore", weight: 1, offset: 0 },
  { label: "clipscore", name: "clipscore", weight: 0.5, offset: 0 },
];
const JPEG = "data:image/jpeg;base64,/9j/4AAQ";

function event(iteration, extra = {}) {
  return {
    node: "7", prompt_id: "p1", iteration, iterations: 4, rewards: REWARDS,
    scores: { pickscore: [10 + iteration], clipscore: [20 - iteration] },
    total: [10 + iteration + 0.5 * (20 - iteration)], loss: [-iteration], latent_norm: [1], grad_norm: [0.1],
    best_iteration: [iteration], preview: JPEG, ...extra,
  };
}

const CHART = {
  iterations: 3,
  rewards: REWARDS,
  series: [
    { scores: { pickscore: [1, 2, 3], clipscore: [4, 5, 4] }, weighted_total: [3, 4.5, 5], loss: [0, 0, 0],
      latent_norm: [1, 1, 1], grad_norm: [0.1, 0.1, null], best_iteration: 2 },
    { scores: { pickscore: [0, 0, 0], clipscore: [0, 0, 0] }, weighted_total: [0, 0, 0], loss: [0, 0, 0],
      latent_norm: [1, 1, 1], grad_norm: [0.1, 0.1, null], best_iteration: 0 },
  ],
  stop_reason: null,
};

test("reduceIteration grows a run and resets on iteration 0", () => {
  let run = emptyRun();
  for (const i of [0, 1, 2]) run = reduceIteration(run, event(i));
  assert.equal(run.frames.length, 3);
  assert.equal(run.iterations, 4);
  assert.equal(run.best, 2);
  assert.deepEqual(run.frames[1].scores, { pickscore: 11, clipscore: 19 });
  assert.equal(run.frames[2].total, 12 + 9);
  run = reduceIteration(run, event(0));
  assert.equal(run.frames.length, 1);
});

test("reduceIteration starts over for another prompt and replaces a repeated iteration", () => {
  let run = reduceIteration(reduceIteration(emptyRun(), event(0)), event(1));
  run = reduceIteration(run, event(1, { total: [99] }));
  assert.equal(run.frames.length, 2);
  assert.equal(run.frames[1].total, 99);
  run = reduceIteration(run, event(2, { prompt_id: "p2" }));
  assert.deepEqual(run.frames.map((f) => f.iteration), [2]);
  assert.equal(run.promptId, "p2");
});

test("reduceIteration ignores garbage and keeps a null preview for non-image URLs", () => {
  const run = reduceIteration(undefined, null);
  assert.deepEqual(run, emptyRun());
  assert.equal(reduceIteration(run, { iteration: -1 }), run);
  const r = reduceIteration(run, event(0, { preview: "javascript:alert(1)", total: ["x"] }));
  assert.equal(r.frames[0].src, null);
  assert.equal(r.frames[0].total, null);
  assert.deepEqual(framesFromRun(r), []);
});

test("safeImageDataURL accepts only base64 raster data URLs", () => {
  assert.equal(safeImageDataURL(JPEG), JPEG);
  for (const bad of ["javascript:alert(1)", "data:text/html;base64,PHA+", "data:image/svg+xml;base64,PHN2Zz4=",
    'data:image/png;base64,"><img', 3, null]) assert.equal(safeImageDataURL(bad), null);
});

test("chartFromRun spans the planned iterations with gaps for the ones still to come", () => {
  let run = emptyRun();
  for (const i of [0, 1]) run = reduceIteration(run, event(i));
  const m = chartFromRun(run);
  assert.equal(m.iterations, 4);
  assert.deepEqual(m.total, [20, 20.5, null, null]);
  assert.deepEqual(m.rewards.map((r) => r.label), ["pickscore", "clipscore"]);
  assert.deepEqual(m.rewards[0].values, [10, 11, null, null]);
  assert.equal(m.best, 1);
  assert.equal(chartFromRun(emptyRun()), null);
});

test("chartFromHistory reads the reno_chart payload per batch element", () => {
  const m = chartFromHistory(CHART);
  assert.equal(m.iterations, 3);
  assert.equal(m.best, 2);
  assert.deepEqual(m.total, [3, 4.5, 5]);
  assert.deepEqual(m.rewards[1], { label: "clipscore", weight: 0.5, values: [4, 5, 4] });
  assert.equal(chartFromHistory(CHART, 1).best, 0);
  assert.equal(chartFromHistory(CHART, 2), null);
  assert.equal(batchCount(CHART), 2);
  for (const bad of [null, 1, {}, { series: "x" }, { series: [] }]) assert.equal(chartFromHistory(bad), null);
});

test("cleanRewards keeps labels as text", () => {
  const evil = "<img src=x onerror=alert(1)>";
  assert.deepEqual(cleanRewards([{ label: evil, weight: "2" }, null, 5]), [{ label: evil, name: evil, weight: 1 }]);
});

test("valueRange, normalize and niceTicks", () => {
  assert.deepEqual(valueRange([3, null, 1, NaN, 2]), [1, 3]);
  assert.equal(valueRange([null]), null);
  const flat = valueRange([2, 2]);
  assert.ok(flat[0] < 2 && flat[1] > 2);
  assert.equal(normalize(2, [1, 3]), 0.5);
  assert.equal(normalize(null, [1, 3]), null);
  assert.deepEqual(niceTicks(0, 1, 4), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0.13, 0.47, 3), [0.2, 0.3, 0.4]);
  assert.deepEqual(niceTicks(0, 5, 5), [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(niceTicks(2, 2), [2]);
  assert.deepEqual(niceTicks(3, 1), []);
});

test("hover lookup maps pixels to the nearest iteration and back", () => {
  assert.equal(xOfIteration(0, 10, 100, 6), 10);
  assert.equal(xOfIteration(5, 10, 100, 6), 110);
  assert.equal(iterationAtX(10, 10, 100, 6), 0);
  assert.equal(iterationAtX(69, 10, 100, 6), 3);
  assert.equal(iterationAtX(-50, 10, 100, 6), 0);
  assert.equal(iterationAtX(500, 10, 100, 6), 5);
  assert.equal(iterationAtX(50, 10, 100, 1), 0);
  assert.equal(iterationAtX(50, 10, 100, 0), null);
});

test("hoverLines lists the iteration, the weighted total and every reward", () => {
  const m = chartFromHistory(CHART);
  assert.deepEqual(hoverLines(m, 2), ["iteration 2 ★ best", "weighted total 5", "pickscore ×1: 3", "clipscore ×0.5: 4"]);
  assert.deepEqual(hoverLines(m, 1)[0], "iteration 1");
  assert.deepEqual(hoverLines(m, 3), []);
  assert.deepEqual(hoverLines(null, 0), []);
});

test("viewRoute builds the query with URLSearchParams", () => {
  const route = viewRoute({ filename: "a b&c=d.png", subfolder: "x/y", type: "temp" });
  assert.equal(route, "/view?filename=a+b%26c%3Dd.png&subfolder=x%2Fy&type=temp");
  const q = new URLSearchParams(route.split("?")[1]);
  assert.equal(q.get("filename"), "a b&c=d.png");
});

test("framesFromImages picks one batch element in iteration order with the totals", () => {
  const images = [];
  for (const it of [2, 0, 1]) {
    for (const b of [0, 1]) images.push({ filename: `i${it}_b${b}.png`, subfolder: "", type: "temp", iteration: it, batch_index: b });
  }
  const m = chartFromHistory(CHART);
  const frames = framesFromImages(images, m, 0, (r) => `/api${r}`);
  assert.deepEqual(frames.map((f) => f.iteration), [0, 1, 2]);
  assert.deepEqual(frames.map((f) => f.total), [3, 4.5, 5]);
  assert.equal(frames[0].src, "/api/view?filename=i0_b0.png&subfolder=&type=temp");
  assert.equal(framesFromImages(images, m, 1)[2].src, "/view?filename=i2_b1.png&subfolder=&type=temp");
  assert.deepEqual(framesFromImages("nope", m), []);
});

test("caption names the iteration, the total and the best one", () => {
  assert.equal(caption({ iteration: 2, total: 5 }, 3, 2), "iteration 2 of 3 · weighted total 5 · ★ best");
  assert.equal(caption({ iteration: 0, total: null }, 3, 2), "iteration 0 of 3 · weighted total –");
  assert.equal(caption(null, 3, 2), "");
});
