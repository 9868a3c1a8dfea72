// Drives Debian chromium (playwright-core) against a running ComfyUI with the ReNO pack; used by
// tests/browser/test_browser.py. Prints one JSON line (prefixed "RESULT ") with what it saw.
//
//   node tests/browser/drive.mjs --url http://127.0.0.1:PORT/ --workflows a.json,b.json
//        --demo tests/browser/reno_tiny_workflow.json --iterations 6 --screenshot out.png
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
const ITER = Number(args.iterations ?? 6);
const SAMPLER_ID = Number(args.sampler ?? 7);
const PREVIEW_ID = Number(args.preview ?? 9);
const TIMEOUT_MS = Number(args.timeout ?? 120) * 1000;

const result = { console_errors: [], page_errors: [], workflows: {}, steps: [] };
const step = (s) => {
  result.steps.push(s);
  console.error(`[drive] ${s}`);
};

const userDir = fs.mkdtempSync(path.join(os.tmpdir(), "reno-chromium-"));
const context = await chromium.launchPersistentContext(userDir, {
  executablePath: args.chromium ?? "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
});
try {
  const page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error") result.console_errors.push(msg.text().slice(0, 500));
  });
  page.on("response", (r) => {
    if (r.status() >= 400) result.console_errors.push(`HTTP ${r.status()} ${r.url()}`);
  });
  page.on("pageerror", (err) => result.page_errors.push(String(err?.stack ?? err).slice(0, 1000)));

  step("load page");
  await page.goto(args.url, { waitUntil: "domcontentloaded", timeout: 60000 });
  await page.waitForFunction(
    () => window.app?.graph && window.LiteGraph?.registered_node_types?.ReNOSampler && window.app?.canvas,
    null, { timeout: 60000 },
  );
  result.frontend = await page.evaluate(() => (window.app.extensionManager ? "current" : "legacy"));
  // The current frontend's first-run dialogs (templates, ...) would cover the canvas.
  await page.evaluate(() => {
    const s = window.app.extensionManager?.setting;
    for (const [k, v] of [["Comfy.TutorialCompleted", true], ["Comfy.Workflow.ShowMissingModelsWarning", false],
      ["Comfy.Workflow.ShowMissingNodesWarning", false]]) {
      try { s?.set?.(k, v); } catch { /* not there */ }
    }
  });
  await page.keyboard.press("Escape");
  result.settings = await page.evaluate(() => {
    const ids = ["ReNO.AllowDownloads", "ReNO.PreviewSize", "ReNO.ShowChart"];
    const em = window.app.extensionManager?.setting;
    const legacy = window.app.ui?.settings?.settingsLookup;
    // the 2024 settings dialog keeps no defaults: an unset registered setting reads as "default"
    const value = (id) => (em ? em.get(id) ?? null
      : legacy?.[id] ? window.app.ui.settings.getSettingValue(id, "default") : "missing");
    return Object.fromEntries(ids.map((id) => [id, value(id)]));
  });

  // 1. Every workflow in workflows/ loads with every node type registered and no node errors.
  for (const file of (args.workflows ?? "").split(",").filter(Boolean)) {
    step(`load workflow ${path.basename(file)}`);
    const wf = JSON.parse(fs.readFileSync(file, "utf8"));
    result.workflows[path.basename(file)] = await page.evaluate(async (data) => {
      await window.app.loadGraphData(data);
      const nodes = window.app.graph._nodes ?? window.app.graph.nodes;
      const problems = [];
      for (const n of nodes) {
        if (!window.LiteGraph.registered_node_types[n.type]) problems.push(`${n.id} ${n.type}: type not registered`);
        if (n.has_errors) problems.push(`${n.id} ${n.type}: has_errors`);
      }
      return { nodes: nodes.length, types: nodes.map((n) => n.type), problems };
    }, wf);
  }

  // 2. The tiny demo: queue it, watch the live events, wait for the preview node's gallery.
  step("load demo");
  const demo = JSON.parse(fs.readFileSync(args.demo, "utf8"));
  await page.evaluate(async ({ data, sid }) => {
    await window.app.loadGraphData(data);
    const { api } = await import(new URL("scripts/api.js", document.baseURI).href);
    window.__renoSeen = { events: [], liveFrames: [], errors: [], done: false };
    api.addEventListener("reno.iteration", (e) => {
      window.__renoSeen.events.push(e.detail.iteration);
      // what the sampler's gallery shows right after this event (listeners run in order: ours after the pack's)
      setTimeout(() => {
        const n = window.app.graph.getNodeById(Number(e.detail.node));
        window.__renoSeen.liveFrames.push(Number(n?.renoViews?.gallery?.root?.dataset?.frames ?? -1));
      }, 0);
    });
    api.addEventListener("execution_error", (e) => window.__renoSeen.errors.push(e.detail));
    api.addEventListener("execution_success", () => { window.__renoSeen.done = true; });
    api.addEventListener("executing", (e) => {
      const node = e.detail && typeof e.detail === "object" ? e.detail.node : e.detail;
      if (node === null) window.__renoSeen.done = true;
    });
    // a new seed on every run, so a second run against the same server is not answered from its cache
    const seed = window.app.graph.getNodeById(sid)?.widgets?.find((w) => w.name === "seed");
    if (seed) seed.value = Math.floor(Math.random() * 1e6);
    const c = window.app.canvas;
    c.ds.scale = 0.85;
    c.ds.offset = [70, 60];
    c.setDirty(true, true);
  }, { data: demo, sid: SAMPLER_ID });

  step("queue");
  await page.evaluate(() => window.app.queuePrompt(0, 1));
  await page.waitForFunction(
    (pid) => window.__renoSeen.errors.length > 0 || (window.__renoSeen.done
      && window.app.graph.getNodeById(pid)?.renoViews?.gallery?.root?.dataset?.frames !== undefined),
    PREVIEW_ID, { timeout: TIMEOUT_MS, polling: 250 },
  );
  step("run finished");
  // images from /view must load
  await page.waitForFunction(
    (pid) => {
      const img = window.app.graph.getNodeById(pid)?.renoViews?.gallery?.img;
      return !img || (img.complete && img.naturalWidth > 0) || window.__renoSeen.errors.length > 0;
    },
    PREVIEW_ID, { timeout: 15000 },
  ).catch(() => step("gallery image did not load"));

  result.run = await page.evaluate(async ({ sid, pid }) => {
    const seen = window.__renoSeen;
    const view = (id) => {
      const n = window.app.graph.getNodeById(id);
      const v = n?.renoViews;
      if (!v) return { present: false };
      const g = v.gallery;
      const c = v.chart;
      return {
        present: true,
        gallery: { ...g.root.dataset, caption: g.captionEl.textContent, img: g.img.getAttribute("src"),
          imgLoaded: g.img.complete && g.img.naturalWidth > 0, inDocument: document.contains(g.root),
          width: g.root.getBoundingClientRect().width, height: g.root.getBoundingClientRect().height },
        chart: { ...c.root.dataset, readout: c.readout.textContent, inDocument: document.contains(c.root),
          width: c.canvas.clientWidth, height: c.canvas.clientHeight },
        summary: n.renoSummaryLines ?? null,
      };
    };
    return { events: seen.events, liveFrames: seen.liveFrames, errors: seen.errors, sampler: view(sid), preview: view(pid) };
  }, { sid: SAMPLER_ID, pid: PREVIEW_ID });

  // 3. Interaction: hover the chart, scrub and play the gallery.
  step("interact");
  result.interaction = await page.evaluate(async (pid) => {
    const v = window.app.graph.getNodeById(pid)?.renoViews;
    if (!v) return null;
    const out = {};
    const canvas = v.chart.canvas;
    const r = canvas.getBoundingClientRect();
    const { left, width } = v.chart.layout ?? { left: 0, width: r.width };
    const scale = canvas.clientWidth ? r.width / canvas.clientWidth : 1;
    const x = r.left + (left + width) * scale - 1; // the last iteration
    canvas.dispatchEvent(new PointerEvent("pointermove", { clientX: x, clientY: r.top + r.height / 3, bubbles: true }));
    out.hover = v.chart.root.dataset.hover;
    out.hoverReadout = v.chart.readout.textContent;
    canvas.dispatchEvent(new PointerEvent("pointerleave", { bubbles: true }));
    const s = v.gallery.slider;
    s.value = "0";
    s.dispatchEvent(new Event("input", { bubbles: true }));
    out.scrubbed = { iteration: v.gallery.root.dataset.iteration, caption: v.gallery.captionEl.textContent };
    v.gallery.playButton.click();
    await new Promise((res) => setTimeout(res, 700));
    out.playing = v.gallery.root.dataset.playing;
    out.afterPlay = v.gallery.root.dataset.iteration;
    v.gallery.playButton.click();
    out.paused = v.gallery.root.dataset.playing;
    v.gallery.bestButton.click();
    out.bestShown = v.gallery.root.dataset.iteration;
    return out;
  }, PREVIEW_ID);

  // 4. Safety: the prompt is text only; nothing of ours is serialized.
  step("checks");
  result.safety = await page.evaluate(() => ({
    xss: window.__renoXSS,
    onerrorElements: document.querySelectorAll("[onerror]").length,
    imgX: [...document.querySelectorAll("img")].filter((i) => i.getAttribute("src") === "x").length,
    promptAsText: [...document.querySelectorAll("textarea")].some((t) => t.value.includes("onerror=window.__renoXSS")),
  }));
  result.serialized = await page.evaluate(async ({ sid, pid }) => {
    const g = window.app.graph.serialize();
    const pick = (id) => g.nodes.find((n) => n.id === id);
    const prompt = await window.app.graphToPrompt();
    const inputs = (id) => Object.keys(prompt.output[String(id)]?.inputs ?? {});
    return {
      sampler: pick(sid)?.widgets_values ?? null,
      preview: pick(pid)?.widgets_values ?? null,
      samplerWidgets: window.app.graph.getNodeById(sid).widgets.map((w) => w.name),
      samplerInputs: inputs(sid),
      previewInputs: inputs(pid),
      json: JSON.stringify([pick(sid), pick(pid)]).length,
    };
  }, { sid: SAMPLER_ID, pid: PREVIEW_ID });

  // Hover the sampler's chart at its best iteration for the screenshot.
  await page.evaluate((sid) => {
    const v = window.app.graph.getNodeById(sid)?.renoViews;
    if (v?.chart.model) v.chart.setHover(v.chart.model.best);
    window.app.canvas.setDirty(true, true);
  }, SAMPLER_ID);
  await page.waitForTimeout(300);
  if (args.screenshot) {
    await page.screenshot({ path: args.screenshot });
    if (args.small) await page.screenshot({ path: args.small, clip: { x: 0, y: 0, width: 1400, height: 900 }, type: "png", scale: "css" });
  }
  step("done");
} catch (e) {
  result.fatal = String(e?.stack ?? e);
} finally {
  await context.close();
  fs.rmSync(userDir, { recursive: true, force: true });
}
console.log(`RESULT ${JSON.stringify(result)}`);
