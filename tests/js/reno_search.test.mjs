import { test } from "node:test";
import assert from "node:assert/strict";
import { SEARCH_ALIASES, addSearchAliases } from "../../web/js/reno_search.js";

test("the artist's searches are among the aliases", () => {
  const all = (name) => SEARCH_ALIASES[name].map((a) => a.toLowerCase());
  assert.ok(all("ReNORewardLoader").includes("pickscore"));
  assert.ok(all("ReNORewardLoader").includes("aesthetic score"));
  assert.ok(all("ReNOScoreImages").includes("pickscore"));
  assert.ok(all("ReNOSampler").includes("noise optimization"));
  assert.ok(all("ReNOSamplerCustom").includes("noise optimization"));
});

test("a server without aliases gets ours; a server's own aliases and other nodes are left alone", () => {
  const defs = {
    ReNOSampler: { name: "ReNOSampler", display_name: "ReNO Sampler" }, // 0.3.75: no search_aliases key
    ReNOScoreImages: { name: "ReNOScoreImages", search_aliases: [] }, // an empty list: filled
    ReNORewardLoader: { name: "ReNORewardLoader", search_aliases: ["from the server"] },
    KSampler: { name: "KSampler" },
  };
  const filled = addSearchAliases(defs);
  assert.deepEqual(filled.sort(), ["ReNOSampler", "ReNOScoreImages"]);
  assert.deepEqual(defs.ReNOSampler.search_aliases, SEARCH_ALIASES.ReNOSampler);
  assert.notEqual(defs.ReNOSampler.search_aliases, SEARCH_ALIASES.ReNOSampler); // a copy: the table stays ours
  assert.deepEqual(defs.ReNORewardLoader.search_aliases, ["from the server"]);
  assert.equal(defs.KSampler.search_aliases, undefined);
  for (const bad of [undefined, null, 3, "x"]) assert.deepEqual(addSearchAliases(bad), []);
});
