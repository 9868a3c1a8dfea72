import { test } from "node:test";
import assert from "node:assert/strict";
import { SUGGESTED_WEIGHTS, followingWeight, suggestedWeight } from "../../web/js/reno_weights.js";

test("suggested weights are the paper's mix, aesthetic 1.0 when chosen, IterComp 1.0", () => {
  assert.deepEqual({ ...SUGGESTED_WEIGHTS }, {
    imagereward: 1, "hpsv2.1": 5, hpsv2: 5, pickscore: 0.05, clipscore: 0.01, aesthetic: 1,
    itercomp_attribute: 1, itercomp_spatial: 1, itercomp_nonspatial: 1, hpsv3: 1,
  });
  assert.equal(suggestedWeight("itercomp_spatial"), 1);
  assert.equal(suggestedWeight("pickscore"), 0.05);
  assert.equal(suggestedWeight("custom/mine"), null);
  assert.equal(suggestedWeight("constructor"), null); // not an Object.prototype member
});

test("an untouched weight follows the reward", () => {
  assert.equal(followingWeight("imagereward", "hpsv2.1", 1.0), 5);
  assert.equal(followingWeight("hpsv2.1", "pickscore", 5), 0.05);
  assert.equal(followingWeight("pickscore", "clipscore", 0.05), 0.01);
  assert.equal(followingWeight("clipscore", "aesthetic", 0.01), 1);
  assert.equal(followingWeight("aesthetic", "pickscore", 1), 0.05);
  // the widget rounds to its step: 0.05 may come back as 0.05000000000000001
  assert.equal(followingWeight("pickscore", "hpsv2", 0.05 + 1e-17), 5);
  assert.equal(followingWeight("imagereward", "clipscore", "1"), 0.01); // a string from an old widget
});

test("a weight the user set is kept", () => {
  assert.equal(followingWeight("imagereward", "hpsv2.1", 2.0), null);
  assert.equal(followingWeight("pickscore", "clipscore", 0.06), null);
  assert.equal(followingWeight("imagereward", "pickscore", -1), null);
  assert.equal(followingWeight("imagereward", "pickscore", NaN), null);
  assert.equal(followingWeight("imagereward", "pickscore", undefined), null);
});

test("nothing changes for the same reward, an unknown one, or an equal suggestion", () => {
  assert.equal(followingWeight("pickscore", "pickscore", 0.05), null);
  assert.equal(followingWeight("pickscore", "custom/mine", 0.05), null);
  assert.equal(followingWeight("custom/mine", "pickscore", 1), null);
  assert.equal(followingWeight(undefined, "pickscore", 1), null);
  assert.equal(followingWeight("hpsv2.1", "hpsv2", 5), null); // same weight already
  assert.equal(followingWeight("imagereward", "aesthetic", 1), null);
});

test("the IterComp rewards take part: an untouched weight follows them, a custom reward keeps any weight", () => {
  assert.equal(followingWeight("hpsv2.1", "itercomp_attribute", 5), 1);
  assert.equal(followingWeight("itercomp_spatial", "pickscore", 1), 0.05);
  assert.equal(followingWeight("clipscore", "itercomp_nonspatial", 0.01), 1);
  assert.equal(followingWeight("itercomp_attribute", "itercomp_spatial", 1), null); // same weight already
  assert.equal(followingWeight("imagereward", "itercomp_nonspatial", 1), null);
  assert.equal(followingWeight("itercomp_spatial", "hpsv2", 2.5), null); // edited: kept
  // custom/<name> rewards have no suggestion: picking one, or leaving one, never changes the weight
  assert.equal(suggestedWeight("custom/itercomp_spatial"), null);
  assert.equal(followingWeight("itercomp_spatial", "custom/mine", 1), null);
  assert.equal(followingWeight("custom/mine", "itercomp_spatial", 1), null);
  assert.equal(followingWeight("custom/mine", "hpsv2.1", 0.3), null);
});
