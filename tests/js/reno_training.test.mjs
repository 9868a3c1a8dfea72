import { test } from "node:test";
import assert from "node:assert/strict";
import { TRAINER, caption, framesFromTraining, hasViews, showsLiveRun } from "../../web/js/reno_model.js";
import { trainingLines } from "../../web/js/reno_summary.js";

test("the LoRA trainer shows its training steps live and has the gallery and chart", () => {
  assert.equal(TRAINER, "ReNORewardLoRATrainer");
  assert.ok(showsLiveRun(TRAINER));
  assert.ok(hasViews(TRAINER));
});

test("held-out frames are ordered by step and carry that evaluation's reward", () => {
  const images = [
    { filename: "h_00001_i002_b0.png", subfolder: "", type: "temp", iteration: 2, batch_index: 0, step: 10 },
    { filename: "h_00001_i000_b0.png", subfolder: "", type: "temp", iteration: 0, batch_index: 0, step: 0 },
    { filename: "h_00001_i001_b0.png", subfolder: "", type: "temp", iteration: 1, batch_index: 0, step: 5 },
  ];
  const training = { evaluations: [[0, -10.4], [5, -9.9], [10, -8.4]], steps: 10 };
  const frames = framesFromTraining(images, training);
  assert.deepEqual(frames.map((f) => f.iteration), [0, 5, 10]);
  assert.deepEqual(frames.map((f) => f.total), [-10.4, -9.9, -8.4]);
  assert.ok(frames[2].src.includes("h_00001_i002_b0.png"));
  assert.equal(caption(frames[1], 11, 10), "held-out image, step 5 of 11 · weighted total -9.9");
  assert.deepEqual(framesFromTraining(undefined, training), []);
  assert.deepEqual(framesFromTraining(images, null).map((f) => f.total), [null, null, null]);
});

test("the training summary line", () => {
  assert.deepEqual(trainingLines({ method: "drtune", steps: 200, held_out_before: 0.1234, held_out_after: 0.3456 }),
    ["drtune · 200 steps · held-out reward 0.1234 → 0.3456"]);
  assert.deepEqual(trainingLines({ method: "refl", steps: 1, held_out_before: null, held_out_after: null }),
    ["refl · 1 step"]);
  assert.deepEqual(trainingLines({ method: "alignprop", steps: 30, best_step: 20, stop_reason: "early stop at step 30" }),
    ["alignprop · 30 steps", "kept the LoRA of step 20 (best held-out reward)", "stopped: early stop at step 30"]);
  assert.deepEqual(trainingLines(null), []);
  assert.deepEqual(trainingLines({ steps: 3 }), []);
});
