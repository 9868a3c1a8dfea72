// Collapses the ReNO part of a workflow into one subgraph node with the frontend's own convertToSubgraph, and
// writes what the frontend serializes; used by tests/browser/make_subgraph_workflow.py.
//
//   node tests/browser/make_subgraph_workflow.mjs --url http://127.0.0.1:PORT/ --in WORKFLOW.json --spec SPEC.json
//        --out OUT.json [--chromium /usr/bin/chromium] [--shot PICTURE.png]
//
// SPEC: {"nodes": [ids to collapse], "title": "...", "inputs": {"inner name": "label"}, "outputs": {...},
//        "positions": {"id": [x, y]} (top-level nodes after the conversion; "subgraph" for the new node),
//        "sizes": {"id": [w, h]}}
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
const wf = JSON.parse(fs.readFileSync(args.in, "utf8"));
const spec = JSON.parse(fs.readFileSync(args.spec, "utf8"));

const userDir = fs.mkdtempSync(path.join(os.tmpdir(), "reno-chromium-"));
const context = await chromium.launchPersistentContext(userDir, {
  executablePath: args.chromium ?? "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
});
let code = 0;
try {
  await fetch(new URL("settings", args.url), {
    method: "POST", body: JSON.stringify({ "Comfy.TutorialCompleted": true, "Comfy.VueNodes.Enabled": false }),
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.on("pageerror", (err) => console.error(`[page error] ${String(err?.stack ?? err).slice(0, 500)}`));
  await page.goto(args.url, { waitUntil: "domcontentloaded", timeout: 60000 });
  await page.waitForFunction(
    () => window.app?.graph && window.LiteGraph?.registered_node_types?.ReNOSampler && window.app?.canvas,
    null, { timeout: 60000 },
  );
  const out = await page.evaluate(async ({ data, spec }) => {
    const app = window.app;
    await app.loadGraphData(data);
    const graph = app.graph;
    const items = new Set(spec.nodes.map((id) => graph.getNodeById(id)));
    if ([...items].some((n) => !n)) throw new Error(`a node of ${spec.nodes} is not in the workflow`);
    const { node } = graph.convertToSubgraph(items); // the frontend's own "Convert to Subgraph"
    node.title = spec.title;
    node.subgraph.name = spec.title;
    // the frontend's own "Rename Slot" (a label; the instance's slots follow its events)
    for (const slot of [...node.subgraph.inputs]) if (spec.inputs[slot.name]) node.subgraph.renameInput(slot, spec.inputs[slot.name]);
    for (const slot of [...node.subgraph.outputs]) {
      if (spec.outputs[slot.name]) node.subgraph.renameOutput(slot, spec.outputs[slot.name]);
    }
    const byId = (id) => (id === "subgraph" ? node : graph.getNodeById(Number(id)));
    for (const [id, pos] of Object.entries(spec.positions ?? {})) byId(id).pos = [pos[0], pos[1]];
    for (const [id, size] of Object.entries(spec.sizes ?? {})) byId(id).size = [size[0], size[1]];
    graph.setDirtyCanvas(true, true);
    const saved = graph.serialize();
    const prompt = await app.graphToPrompt();
    return { saved, subgraph: Number(node.id), prompt: prompt.output };
  }, { data: wf, spec });
  if (args.shot) {  // a picture of the graph after the conversion
    await page.evaluate(() => { window.app.canvas.ds.scale = 0.6; window.app.canvas.ds.offset = [20, 420];
      window.app.graph.setDirtyCanvas(true, true); });
    await page.waitForTimeout(500);
    await page.screenshot({ path: args.shot });
  }
  fs.writeFileSync(args.out, JSON.stringify(out, null, 2));
  console.log(`wrote ${args.out} (subgraph node ${out.subgraph})`);
} catch (e) {
  console.error(String(e?.stack ?? e));
  code = 1;
} finally {
  await context.close();
  fs.rmSync(userDir, { recursive: true, force: true });
}
process.exit(code);
