// The gallery's preference picks: keys, mark transitions, what is sent, how answers settle, what is shown.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CLEAR, DEFAULT_DATASET, PREFERRED, REJECTED, actionForKey, datasetName, deleteBody, imageKey, imageRef, markBody,
  markCounts, markView, marksImages, nextMark, planChange, relink, settle,
  queuedMarks,
} from "../../web/js/reno_preferences.js";
import { caption, framesFromImages, withImageRefs } from "../../web/js/reno_model.js";

const ID = "0123456789abcdef0123456789abcdef";

test("the three gallery nodes take marks; others do not", () => {
  for (const t of ["ReNOSampler", "ReNOIterationPreview", "ReNOScoreImages"]) assert.equal(marksImages(t), true, t);
  for (const t of ["ReNOSamplerCustom", "SaveImage", undefined, ""]) assert.equal(marksImages(t), false, String(t));
});

test("keys: P/+ preferred, X/- rejected, 0/Backspace/Delete clear; modified keys and others are not ours", () => {
  for (const k of ["p", "P", "+"]) assert.equal(actionForKey(k), PREFERRED, k);
  for (const k of ["x", "X", "-", "−"]) assert.equal(actionForKey(k), REJECTED, k);
  for (const k of ["0", "Backspace", "Delete"]) assert.equal(actionForKey(k), CLEAR, k);
  for (const k of ["a", "1", "Enter", " ", undefined]) assert.equal(actionForKey(k), null, String(k));
  assert.equal(actionForKey("p", { ctrl: true }), null);
  assert.equal(actionForKey("x", { meta: true }), null);
  assert.equal(actionForKey("0", { alt: true }), null);
});

test("nextMark: keys set a mark, a button on the active mark toggles it off, clear clears", () => {
  assert.equal(nextMark(null, PREFERRED), PREFERRED);
  assert.equal(nextMark(PREFERRED, PREFERRED), PREFERRED); // the key again: stays
  assert.equal(nextMark(PREFERRED, PREFERRED, { toggle: true }), null); // the button again: off
  assert.equal(nextMark(PREFERRED, REJECTED, { toggle: true }), REJECTED);
  assert.equal(nextMark(REJECTED, CLEAR), null);
  assert.equal(nextMark(undefined, CLEAR), null);
  assert.equal(nextMark(REJECTED, "nonsense"), REJECTED);
  assert.equal(nextMark("junk", "nonsense"), null);
});

test("planChange: a new or changed mark posts a mark, clearing a saved one deletes its record", () => {
  assert.equal(planChange(undefined, null), null);
  assert.deepEqual(planChange(undefined, PREFERRED), { kind: "mark", mark: PREFERRED });
  assert.equal(planChange({ mark: PREFERRED, id: ID }, PREFERRED), null);
  assert.deepEqual(planChange({ mark: PREFERRED, id: ID }, REJECTED), { kind: "mark", mark: REJECTED });
  assert.deepEqual(planChange({ mark: PREFERRED, id: ID }, null), { kind: "delete", ids: [ID] });
  assert.equal(planChange({ mark: null, id: null, error: "x" }, null), null);
});

test("request bodies carry the image reference, prompt, mark, dataset and node", () => {
  const ref = imageRef({ filename: "a.png", subfolder: "s", type: "temp", iteration: 3 });
  assert.deepEqual(ref, { filename: "a.png", subfolder: "s", type: "temp" });
  assert.deepEqual(markBody({ ref, prompt: "a cat", mark: REJECTED, dataset: "d", node: "ReNOSampler" }),
    { image: ref, prompt: "a cat", mark: REJECTED, dataset: "d", node: "ReNOSampler" });
  assert.deepEqual(deleteBody({ ids: [ID], dataset: "d" }), { ids: [ID], dataset: "d" });
  assert.equal(imageRef({ subfolder: "s" }), null);
  assert.equal(imageRef(null), null);
  assert.deepEqual(imageRef({ filename: "b.png" }), { filename: "b.png", subfolder: "", type: "output" });
  assert.notEqual(imageKey(ref), imageKey({ ...ref, type: "output" }));
  assert.equal(imageKey(null), "");
});

test("dataset names: the server's rule; empty means the default; unsafe names are refused", () => {
  assert.equal(datasetName(""), DEFAULT_DATASET);
  assert.equal(datasetName(undefined), DEFAULT_DATASET);
  assert.equal(datasetName("  portraits-2025 "), "portraits-2025");
  assert.equal(datasetName("a.b_c"), "a.b_c");
  for (const bad of ["../x", ".hidden", "a/b", "a b", "x".repeat(65), "é"]) assert.equal(datasetName(bad), null, bad);
});

test("settle: the server's answer becomes the entry (its record id), or the old mark with an error", () => {
  const mark = { kind: "mark", mark: PREFERRED };
  const saved = settle(undefined, mark, { ok: true, status: 200, json: { record: { id: ID, mark: PREFERRED } } });
  assert.deepEqual(saved, { mark: PREFERRED, id: ID, pending: false, error: null });
  const failed = settle(saved, { kind: "mark", mark: REJECTED }, { ok: false, status: 404, json: { error: "no image" } });
  assert.deepEqual(failed, { mark: PREFERRED, id: ID, pending: false, error: "no image" });
  const del = { kind: "delete", ids: [ID] };
  assert.deepEqual(settle(saved, del, { ok: true, status: 200, json: { deleted: [ID] } }),
    { mark: null, id: null, pending: false, error: null });
  // already gone on the server: as good as deleted
  assert.deepEqual(settle(saved, del, { ok: false, status: 404, json: { error: "no live record" } }),
    { mark: null, id: null, pending: false, error: null });
  assert.equal(settle(saved, del, { ok: false, status: 0, json: null }).error, "HTTP 0");
});

test("markView: badge, state and tooltip (the keys named); disabled frames say why", () => {
  assert.deepEqual(markView(undefined), { badge: "", state: "", error: "",
    title: "Mark this image for your preference dataset (P or + preferred · X or − rejected · 0 or Backspace clears, " +
      "with the pointer over the gallery)" });
  assert.equal(markView({ mark: PREFERRED }).badge, "✓ preferred");
  assert.equal(markView({ mark: PREFERRED }).state, PREFERRED);
  assert.equal(markView({ mark: REJECTED }).badge, "✕ rejected");
  assert.equal(markView({ mark: REJECTED, pending: true }).badge, "saving…");
  const err = markView({ mark: REJECTED, error: "disk full" });
  assert.equal(err.badge, "✕ rejected (not saved)");
  assert.equal(err.error, "true");
  assert.match(err.title, /not saved: disk full/);
  const off = markView({ mark: PREFERRED }, { enabled: false, reason: "run first" });
  assert.deepEqual(off, { badge: "", state: "", title: "run first" });
  assert.deepEqual(markCounts(new Map([["a", { mark: PREFERRED }], ["b", { mark: REJECTED }], ["c", { mark: null }]])),
    { preferred: 1, rejected: 1 });
});

test("gallery frames carry the /view reference of their image", () => {
  const images = [
    { filename: "i1.png", subfolder: "", type: "temp", iteration: 1, batch_index: 0 },
    { filename: "i0.png", subfolder: "", type: "temp", iteration: 0, batch_index: 0 },
    { filename: "i0b1.png", subfolder: "", type: "temp", iteration: 0, batch_index: 1 },
  ];
  const frames = framesFromImages(images, { total: [1, 2] });
  assert.deepEqual(frames.map((f) => f.ref.filename), ["i0.png", "i1.png"]);
  // ReNO Sampler: the live frames (data URLs) get the saved images' references when the run ends
  const live = [{ iteration: 0, total: 1, src: "data:x" }, { iteration: 1, total: 2, src: "data:y" }];
  const withRefs = withImageRefs(live, images);
  assert.deepEqual(withRefs.map((f) => f.ref?.filename), ["i0.png", "i1.png"]);
  assert.deepEqual(withRefs.map((f) => f.src), ["data:x", "data:y"]);
  assert.deepEqual(withImageRefs(live, images, 1).map((f) => f.ref?.filename), ["i0b1.png", undefined]);
  assert.deepEqual(withImageRefs(live, "nope"), live);
  // ReNO Score Images' frames are images, not iterations
  assert.equal(caption({ iteration: 1, total: 2, label: "image" }, 3, 1), "image 1 of 3 · weighted total 2 · ★ best");
});

test("relink: entries of records the server replaced take the new record; deleted ones clear", () => {
  const other = "fedcba9876543210fedcba9876543210";
  const marks = new Map([["a", { mark: PREFERRED, id: ID, dataset: "d" }], ["b", { mark: REJECTED, id: other }],
    ["c", { mark: PREFERRED, id: ID, pending: true }]]);
  const replacement = { mark: REJECTED, id: "11111111111111111111111111111111", dataset: "d" };
  assert.equal(relink(marks, [ID], replacement), 1); // a pending entry waits for its own answer
  assert.deepEqual(marks.get("a"), { ...replacement, pending: false, error: null });
  assert.deepEqual(marks.get("b"), { mark: REJECTED, id: other });
  assert.equal(relink(marks, [other], null), 1);
  assert.deepEqual(marks.get("b"), { mark: null, id: null, pending: false, error: null, dataset: null });
  assert.equal(relink(marks, [], null), 0);
  assert.equal(relink(marks, undefined, null), 0);
  assert.equal(relink(null, [ID], null), 0);
});

test("marks made during a live run are queued per iteration and sent for the frames saved when it ends", () => {
  const queued = new Map([[3, "rejected"], [0, "preferred"], [7, "preferred"], [5, null]]);
  const frames = [
    { iteration: 0, ref: { filename: "a_i000.png", subfolder: "", type: "temp" } },
    { iteration: 3, ref: { filename: "a_i003.png", subfolder: "", type: "temp" } },
    { iteration: 5, ref: { filename: "a_i005.png", subfolder: "", type: "temp" } },
    { iteration: 7 }, // no saved image: dropped
  ];
  const out = queuedMarks(queued, frames);
  assert.deepEqual(out.map(({ frame, mark }) => [frame.iteration, mark]), [[0, "preferred"], [3, "rejected"]]);
  assert.deepEqual(queuedMarks(null, frames), []);
  assert.deepEqual(queuedMarks(queued, undefined), []);
  const view = markView({ mark: "preferred", queued: true });
  assert.equal(view.state, "preferred");
  assert.match(view.badge, /saved when the run ends/);
  assert.match(view.title, /saved when the run ends/);
});
