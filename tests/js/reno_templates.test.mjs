import assert from "node:assert/strict";
import test from "node:test";

import { installTemplateOrder, packFolder, sortPackTemplates } from "../../web/js/reno_templates.js";

const OURS = ["ReNO 14 SDXL with the Hyper-SD 8-step LoRA", "ReNO 06 SDXL-Turbo", "ReNO 05 SD-Turbo",
  "ReNO 16 Train a reward LoRA on SD-Turbo", "ReNO 13 Hyper-SDXL, 1 step"];

test("the pack's own templates come sorted by their number, other packs' lists untouched", () => {
  const other = ["b", "a"];
  const out = sortPackTemplates({ "ComfyUI-ReNO": OURS, other }, "ComfyUI-ReNO");
  assert.deepEqual(out["ComfyUI-ReNO"], ["ReNO 05 SD-Turbo", "ReNO 06 SDXL-Turbo",
    "ReNO 13 Hyper-SDXL, 1 step", "ReNO 14 SDXL with the Hyper-SD 8-step LoRA", "ReNO 16 Train a reward LoRA on SD-Turbo"]);
  assert.equal(out.other, other);
  assert.deepEqual(OURS[0], "ReNO 14 SDXL with the Hyper-SD 8-step LoRA"); // the input is not changed
});

test("anything that is not a template index passes through", () => {
  for (const bad of [null, undefined, [], "x", 3]) assert.equal(sortPackTemplates(bad, "ComfyUI-ReNO"), bad);
  const noList = { "ComfyUI-ReNO": "nope" };
  assert.equal(sortPackTemplates(noList, "ComfyUI-ReNO"), noList);
});

test("the pack folder is read from the extension's URL", () => {
  assert.equal(packFolder("http://127.0.0.1:8188/extensions/ComfyUI-ReNO/js/reno.js"), "ComfyUI-ReNO");
  assert.equal(packFolder("http://h/extensions/comfyui%20reno/js/reno.js"), "comfyui reno");
  assert.equal(packFolder("http://h/scripts/app.js"), null);
  assert.equal(packFolder("not a url"), null);
});

test("the wrapped getWorkflowTemplates answers the server's index with the pack's list sorted, once", async () => {
  const api = { calls: 0, async getWorkflowTemplates() { this.calls++; return { "ComfyUI-ReNO": [...OURS] }; } };
  assert.equal(installTemplateOrder(api, "ComfyUI-ReNO"), true);
  assert.equal(installTemplateOrder(api, "ComfyUI-ReNO"), false); // not wrapped twice
  const index = await api.getWorkflowTemplates();
  assert.equal(api.calls, 1); // `this` is the api
  assert.equal(index["ComfyUI-ReNO"][0], "ReNO 05 SD-Turbo");
  assert.equal(installTemplateOrder({}, "ComfyUI-ReNO"), false);
  assert.equal(installTemplateOrder(api, null), false);
});
