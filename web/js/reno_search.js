// Search aliases of the ReNO nodes: the node search finds "pickscore", "aesthetic score", "noise optimization"...
// ComfyUI servers that send `search_aliases` in /object_info (0.33 and later) take them from each node class's
// SEARCH_ALIASES; for older servers (0.3.75) the extension adds the same lists to the node definitions before the
// frontend registers them (`addCustomNodeDefs`), which frontends that search aliases (1.49 and later) then use.
// Keep in step with the classes' SEARCH_ALIASES (tests/engine/test_node_library.py compares them).

export const SEARCH_ALIASES = {
  ReNORewardLoader: [
    "reward model", "load reward", "pickscore", "imagereward", "hpsv2", "hps", "clipscore", "clip score",
    "aesthetic score", "aesthetic predictor", "itercomp", "human preference",
  ],
  ReNOSampler: [
    "noise optimization", "reward noise optimization", "reward guidance", "optimize noise",
    "test-time optimization", "inference-time scaling", "prompt adherence", "one-step sampler",
  ],
  ReNOSamplerCustom: ["noise optimization", "reward sampler", "custom sampler", "optimize noise", "SamplerCustomAdvanced"],
  ReNOIterationPreview: ["iteration gallery", "reward chart", "reward curve", "preview iterations"],
  ReNOScoreImages: [
    "score images", "rate images", "rank images", "reward score", "pickscore", "aesthetic score", "clip score",
    "imagereward", "best of n",
  ],
  ReNONoise: ["optimized noise", "reuse noise", "noise from history"],
  ReNORewardLoRATrainer: ["reward fine-tuning", "train lora", "lora training", "alignprop", "drtune", "refl"],
  ReNOTrainPreferenceReward: ["train reward model", "preference learning", "fine-tune reward", "my taste", "personal reward"],
  ReNOTrainNoiseModel: ["hypernoise", "noise hypernetwork", "noise model", "amortized reno"],
  ReNONoiseModel: ["hypernoise", "noise hypernetwork", "hyper noise"],
};

/** Give each ReNO node definition in `defs` (name -> definition, as /object_info sends them) its search aliases
 *  where the server sent none; the server's own lists are kept. Returns the names it filled in. */
export function addSearchAliases(defs) {
  const filled = [];
  if (!defs || typeof defs !== "object") return filled;
  for (const [name, aliases] of Object.entries(SEARCH_ALIASES)) {
    const def = defs[name];
    if (!def || typeof def !== "object") continue;
    if (Array.isArray(def.search_aliases) && def.search_aliases.length) continue;
    def.search_aliases = [...aliases];
    filled.push(name);
  }
  return filled;
}
