// ReNO Load Reward: the weight that follows the chosen reward (pure logic, no DOM, no ComfyUI imports).
//
// Each reward has a suggested weight: the paper's mix (ImageReward 1, HPSv2/HPSv2.1 5, PickScore 0.05,
// CLIPScore 0.01), and 1 for the IterComp rewards (ImageReward-format models, same score scale). The aesthetic predictor is off in the paper's mix (weight 0); chosen in a loader it is
// meant to count, so its suggested weight is 1.0 (its rating, about 1-10, spreads over images about as much
// as ImageReward's normalized score, whose weight is 1). When the user picks another reward and the weight
// still is the previous reward's suggested weight (never edited), the weight becomes the new reward's;
// a weight the user typed is kept, and so is any weight when either reward has no suggestion (a custom/<name>
// reward: its scale is the user's to know). Loading a saved workflow never changes a weight (reno.js only reacts
// to changes after a node is configured). tests/test_package.py holds this table equal to the Python
// registry's paper weights, one entry per registry reward.

export const LOADER = "ReNORewardLoader";

export const SUGGESTED_WEIGHTS = Object.freeze({
  imagereward: 1.0,
  "hpsv2.1": 5.0,
  hpsv2: 5.0,
  pickscore: 0.05,
  clipscore: 0.01,
  aesthetic: 1.0,
  itercomp_attribute: 1.0,
  itercomp_spatial: 1.0,
  itercomp_nonspatial: 1.0,
  hpsv3: 1.0,
});

/** The suggested weight of `reward`, or null for a reward this table does not know. */
export function suggestedWeight(reward) {
  return Object.prototype.hasOwnProperty.call(SUGGESTED_WEIGHTS, reward) ? SUGGESTED_WEIGHTS[reward] : null;
}

// The weight widget rounds to its step (0.01): compare with a tolerance far below it.
const same = (a, b) => typeof a === "number" && Number.isFinite(a) && Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b));

/**
 * The weight to set after the reward changed from `previous` to `next` with the weight at `weight`,
 * or null to leave the weight as it is (same reward, unknown reward, or a weight the user edited).
 */
export function followingWeight(previous, next, weight) {
  if (previous === next) return null;
  const before = suggestedWeight(previous);
  const after = suggestedWeight(next);
  if (before === null || after === null || !same(Number(weight), before)) return null;
  return same(Number(weight), after) ? null : after;
}
