// Which node types get the live views, and how the events of a ReNO Sampler (custom) node fold into its run:
// the events name the custom node, SamplerCustomAdvanced (another node) executes while they come, and the run
// ends when the next node executes or the prompt ends.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CUSTOM_SAMPLER, PREVIEW, SAMPLER, chartFromRun, emptyRun, finishRun, framesFromRun, hasViews, reduceIteration,
  runEnded, showsLiveRun, startsNewRun, summaryOfRun,
} from "../../web/js/reno_model.js";
import { summaryLines } from "../../web/js/reno_summary.js";

const CUSTOM_ID = "12"; // ReNOSamplerCustom
const HOST_ID = "13"; // the SamplerCustomAdvanced running it
const REWARDS = [{ label: "pickscore", name: "pickscore", weight: 1 }];
const JPEG = "data:image/jpeg;base64,/9j/4AAQ";

function event(iteration, extra = {}) {
  return {
    node: CUSTOM_ID, prompt_id: "p1", iteration, iterations: 4, rewards: REWARDS,
    scores: { pickscore: [10 + (iteration % 3)] }, total: [10 + (iteration % 3)], loss: [20 - (iteration % 3)],
    best_iteration: [Math.min(iteration, 2)], preview: JPEG, ...extra,
  };
}

/** What the front end does: fold each event, with the node executing when it came. */
function fold(run, events, host = HOST_ID) {
  return events.reduce((r, e) => reduceIteration(r, e, 0, host), run);
}

test("the samplers show live runs; the preview node has views but no live run; other nodes neither", () => {
  assert.equal(SAMPLER, "ReNOSampler");
  assert.equal(CUSTOM_SAMPLER, "ReNOSamplerCustom");
  for (const t of [SAMPLER, CUSTOM_SAMPLER]) {
    assert.equal(showsLiveRun(t), true, t);
    assert.equal(hasViews(t), true, t);
  }
  assert.equal(showsLiveRun(PREVIEW), false);
  assert.equal(hasViews(PREVIEW), true);
  for (const t of ["SamplerCustomAdvanced", "KSampler", "ReNORewardLoader", "ReNOScoreImages", undefined, null, ""]) {
    assert.equal(showsLiveRun(t), false, String(t));
    assert.equal(hasViews(t), false, String(t));
  }
});

test("a custom sampler's events fold into one run hosted by the executing SamplerCustomAdvanced", () => {
  const run = fold(emptyRun(), [0, 1, 2, 3].map((i) => event(i)));
  assert.equal(run.live, true);
  assert.equal(run.host, HOST_ID);
  assert.deepEqual(run.frames.map((f) => f.iteration), [0, 1, 2, 3]);
  assert.equal(run.best, 2);
  assert.equal(framesFromRun(run).length, 4);
  assert.deepEqual(chartFromRun(run).total, [10, 11, 12, 10]);
  // a numeric executing id (older frontends) names the same host
  assert.equal(reduceIteration(emptyRun(), event(0), 0, 13).host, HOST_ID);
  // an event without a known executing node keeps the host it had
  assert.equal(reduceIteration(run, event(3)).host, HOST_ID);
});

test("the run lasts while its host executes and ends when another node executes or the prompt ends", () => {
  const run = fold(emptyRun(), [event(0), event(1)]);
  assert.equal(runEnded(run, HOST_ID), false);
  assert.equal(runEnded(run, Number(HOST_ID)), false);
  assert.equal(runEnded(run, "14"), true); // VAEDecode after SamplerCustomAdvanced
  assert.equal(runEnded(run, null), true); // execution_success / executing null
  assert.equal(runEnded(run, CUSTOM_ID), true); // the custom node itself executing again: a new prompt
  assert.equal(runEnded(emptyRun(), null), false); // nothing to end
  assert.equal(runEnded(finishRun(run), null), false); // ended once
  assert.equal(runEnded(undefined, null), false);
});

test("a finished run keeps its frames and chart, spans the iterations it ran, and gives the summary", () => {
  const done = finishRun(fold(emptyRun(), [0, 1, 2, 3].map((i) => event(i))));
  assert.equal(done.live, false);
  assert.equal(done.iterations, 4);
  assert.equal(framesFromRun(done).length, 4);
  const m = chartFromRun(done);
  assert.equal(m.iterations, 4);
  assert.equal(m.best, 2);
  assert.deepEqual(summaryOfRun(done), {
    iterations: 4, best_iteration: [2], initial_loss: [20], best_loss: [18], rewards: REWARDS, stop_reason: null,
  });
  assert.deepEqual(summaryLines(summaryOfRun(done)), ["best iteration 2 of 4 · loss 20 → 18"]);
  // cancelled after 2 of 4 planned iterations: the view spans the 2 that ran
  const cut = finishRun(fold(emptyRun(), [event(0), event(1)]));
  assert.equal(cut.iterations, 2);
  assert.equal(chartFromRun(cut).iterations, 2);
  assert.deepEqual(summaryLines(summaryOfRun(cut)), ["best iteration 1 of 2 · loss 20 → 19"]);
  assert.equal(summaryOfRun(emptyRun()), null);
  assert.deepEqual(summaryLines(summaryOfRun(emptyRun())), []);
});

test("a new run resets the finished one: iteration 0, or another prompt's event", () => {
  const done = finishRun(fold(emptyRun(), [0, 1, 2, 3].map((i) => event(i))));
  assert.equal(startsNewRun(done, event(0)), true);
  assert.equal(startsNewRun(done, event(3, { prompt_id: "p2" })), true);
  assert.equal(startsNewRun(done, event(3)), false);
  assert.equal(startsNewRun(undefined, event(2)), true);
  for (const bad of [null, 3, {}, { iteration: -1 }, { iteration: "x" }]) assert.equal(startsNewRun(done, bad), false);

  const again = fold(done, [event(0, { prompt_id: "p2", iterations: 3 }), event(1, { prompt_id: "p2", iterations: 3 })], "21");
  assert.equal(again.live, true);
  assert.equal(again.host, "21");
  assert.equal(again.promptId, "p2");
  assert.equal(again.iterations, 3);
  assert.deepEqual(again.frames.map((f) => f.iteration), [0, 1]);
  assert.equal(again.best, 1);
  assert.deepEqual(chartFromRun(again).total, [10, 11, null]);
  assert.equal(runEnded(again, "21"), false);
  assert.equal(runEnded(again, HOST_ID), true);
  // another prompt's event starts a fresh run whatever its iteration
  const other = reduceIteration(done, event(2, { prompt_id: "p3" }), 0, "30");
  assert.deepEqual(other.frames.map((f) => f.iteration), [2]);
  assert.equal(other.host, "30");
});
