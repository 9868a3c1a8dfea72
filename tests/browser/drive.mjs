// Drives Debian chromium (playwright-core) against a running ComfyUI with the ReNO pack; used by
// tests/browser/test_browser.py. Prints one JSON line (prefixed "RESULT ") with what it saw.
//
//   node tests/browser/drive.mjs --url http://127.0.0.1:PORT/ --workflows '["a.json", "b, c.json"]'
//        --demo tests/browser/reno_tiny_workflow.json --iterations 6 --screenshot out.png
//        [--custom tests/browser/reno_tiny_custom_workflow.json --custom-sampler 10 --custom-host 11
//         --rerun-iterations 3 --custom-screenshot custom.png]
//        [--workflow-shots DIR (a fitted picture of each workflow)] [--thumbnail-ext jpg (fetch the template thumbnails)]
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
const CUSTOM_ID = Number(args["custom-sampler"] ?? 10);
const HOST_ID = Number(args["custom-host"] ?? 11);
const RERUN_ITER = Number(args["rerun-iterations"] ?? 3);
// --workflows: a JSON list of paths (the shipped workflows' names have spaces and commas), or paths joined by commas
const WORKFLOWS = (args.workflows ?? "").startsWith("[") ? JSON.parse(args.workflows)
  : (args.workflows ?? "").split(",").filter(Boolean);

const result = { console_errors: [], page_errors: [], workflows: {}, steps: [] };
// A template card (see --cards): large type for the ~230 px wide card of the template browser.
const CARD_HTML = `<!doctype html><html><head><meta charset="utf-8"><style>
  html, body { margin: 0; width: 640px; height: 400px; overflow: hidden; background: #15171c; color: #eceff4;
    font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
  #graph { position: absolute; left: 0; top: 262px; width: 640px; height: 138px; object-fit: cover;
    object-position: 50% 35%; opacity: 0.55; }
  #fade { position: absolute; left: 0; top: 262px; width: 640px; height: 60px;
    background: linear-gradient(180deg, #15171c 0%, rgba(21,23,28,0) 100%); }
  #text { position: absolute; left: 32px; right: 28px; top: 22px; }
  #head { display: flex; align-items: center; gap: 14px; }
  #brand { font-weight: bold; font-size: 26px; padding: 2px 12px; border-radius: 8px; background: #2e7d32; color: #fff; }
  #number { font-weight: bold; font-size: 28px; color: #9fd3a0; }
  #tag { font-size: 22px; color: #ffd54f; }
  #model { margin-top: 14px; font-weight: bold; font-size: 50px; line-height: 1.05; white-space: nowrap; overflow: hidden;
    text-overflow: ellipsis; }
  #facts { margin-top: 12px; font-size: 26px; line-height: 1.2; color: #d8dee9; }
  #rewards { margin-top: 10px; font-size: 17.5px; color: #a3be8c; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
</style></head><body><img id="graph" alt=""><div id="fade"></div><div id="text"><div id="head"><span id="brand">ReNO</span>
<span id="number"></span><span id="tag"></span></div><div id="model"></div><div id="facts"></div><div id="rewards"></div></div>
</body></html>`;
const started = Date.now();
const step = (s) => {
  result.steps.push(`${((Date.now() - started) / 1000).toFixed(1)}s ${s}`);
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
  // A fresh user: the current frontend would open its template browser (and a banner) over the canvas.
  await fetch(new URL("settings", args.url), {
    method: "POST",
    body: JSON.stringify({ "Comfy.TutorialCompleted": true, "Comfy.VueNodes.Enabled": args["vue-nodes"] === "1" }),
  }).catch((e) => step(`could not preset the settings: ${e}`));
  await context.addInitScript(() => {
    localStorage.setItem("vueNodesBannerDismissed", "true");
    // Every node's box as the user sees it, in canvas units, title bar included: the DOM element's under Nodes 2.0
    // (its own layout: taller rows, a footer), else the node's pos/size.
    window.__renoBoxes = () => {
      const nodes = window.app.graph._nodes ?? window.app.graph.nodes;
      const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
      const c = window.app.canvas;
      const r = c.canvas.getBoundingClientRect();
      const s = c.ds.scale;
      const [ox, oy] = c.ds.offset;
      return nodes.map((n) => {
        const el = document.querySelector(`[data-node-id="${n.id}"]`);
        if (el) {
          const b = el.getBoundingClientRect();
          return { id: Number(n.id), type: n.type, x: (b.left - r.left) / s - ox, y: (b.top - r.top) / s - oy,
                   w: b.width / s, h: b.height / s, dom: true };
        }
        return { id: Number(n.id), type: n.type, x: n.pos[0], y: n.pos[1] - title, w: n.size[0], h: n.size[1] + title };
      });
    };
    // Wait (at most 3 s) until Nodes 2.0 has one element per node (none stale from the graph before) and every box
    // is the same over two frames: the boxes as they settled.
    window.__renoSettled = async () => {
      const deadline = Date.now() + 3000;
      let last = "";
      while (Date.now() < deadline) {
        await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
        const nodes = window.app.graph._nodes ?? window.app.graph.nodes;
        const els = document.querySelectorAll("[data-node-id]").length;
        const now = JSON.stringify(window.__renoBoxes().map((b) => [b.id, Math.round(b.x), Math.round(b.y), Math.round(b.w),
                                                                     Math.round(b.h)]));
        if ((els === 0 || els === nodes.length) && now === last) return true;
        last = now;
      }
      return false;
    };
    // Fit the view to the boxes of the nodes `ids` (all, and the groups, when null) and return their rectangle on the
    // page (for a clipped screenshot), `pad` px around.
    window.__renoFit = (ids = null, pad = 12) => {
      const c = window.app.canvas;
      c.show_info = false;
      let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
      for (const b of window.__renoBoxes().filter((x) => !ids || ids.includes(x.id))) {
        x0 = Math.min(x0, b.x);
        y0 = Math.min(y0, b.y);
        x1 = Math.max(x1, b.x + b.w);
        y1 = Math.max(y1, b.y + b.h);
      }
      for (const g of ids ? [] : window.app.graph._groups ?? window.app.graph.groups ?? []) {
        const [gx, gy, gw, gh] = g._bounding ?? g.bounding ?? [0, 0, 0, 0];
        if (gw > 0 && gh > 0) {
          x0 = Math.min(x0, gx);
          y0 = Math.min(y0, gy);
          x1 = Math.max(x1, gx + gw);
          y1 = Math.max(y1, gy + gh);
        }
      }
      const r = c.canvas.getBoundingClientRect();
      const s = Math.min((r.width - 2 * pad) / (x1 - x0), (r.height - 2 * pad) / (y1 - y0));
      c.ds.scale = s;
      c.ds.offset = [(r.width / s - (x1 - x0)) / 2 - x0, (r.height / s - (y1 - y0)) / 2 - y0];
      c.setDirty(true, true);
      const left = r.left + (x0 + c.ds.offset[0]) * s;
      const top = r.top + (y0 + c.ds.offset[1]) * s;
      return { x: Math.max(0, left - pad), y: Math.max(0, top - pad), width: (x1 - x0) * s + 2 * pad,
               height: (y1 - y0) * s + 2 * pad };
    };
  });
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

  // 1. Every workflow in workflows/ loads with every node type registered and no node errors; its API
  // prompt (what Queue sends), its loaders' weights as loaded, and (--workflow-shots DIR) a picture of the
  // whole graph, fitted to the window, with the menus hidden (focus mode) and no minimap.
  const shots = args["workflow-shots"];
  if (shots) {
    fs.mkdirSync(shots, { recursive: true });
    await page.evaluate(async () => {
      const em = window.app.extensionManager;
      try { await em?.setting?.set?.("Comfy.Minimap.Visible", false); } catch { /* older frontend */ }
      try { await em?.setting?.set?.("Comfy.Graph.CanvasMenu", false); } catch { /* older frontend */ }
      try { await em?.setting?.set?.("LiteGraph.Canvas.MinFontSizeForLOD", 0); } catch { /* older frontend */ }
      try { await em?.command?.execute?.("Workspace.ToggleFocusMode"); } catch { /* older frontend */ }
    });
    await page.setViewportSize({ width: 2000, height: 1500 }); // the graphs near their own size: text drawn
  }
  for (const file of WORKFLOWS) {
    step(`load workflow ${path.basename(file)}`);
    const wf = JSON.parse(fs.readFileSync(file, "utf8"));
    result.workflows[path.basename(file)] = await page.evaluate(async (data) => {
      await window.app.loadGraphData(data);
      const nodes = window.app.graph._nodes ?? window.app.graph.nodes;
      // ...and those inside its subgraph nodes (a node whose type is a subgraph's id; none on older frontends)
      const inner = (list) => list.flatMap((n) => {
        const sub = n.isSubgraphNode?.() ? n.subgraph._nodes ?? n.subgraph.nodes : [];
        return [...sub, ...inner(sub)];
      });
      const all = nodes.concat(inner(nodes));
      const problems = [];
      const options = (w) => (typeof w.options?.values === "function" ? w.options.values() : w.options?.values) ?? [];
      const missingModel = (n) => (n.widgets ?? []).some((w) => typeof w.value === "string"
        && /\.(safetensors|sft|ckpt|pt|pth|bin|gguf)$/i.test(w.value) && !options(w).includes(w.value));
      for (const n of all) {
        if (!window.LiteGraph.registered_node_types[n.type] && !n.isSubgraphNode?.()) {
          problems.push(`${n.id} ${n.type}: type not registered`);
        }
        // (the current frontend flags a loader whose model file is not installed: the shipped workflows' files are not)
        if (n.has_errors && !missingModel(n)) problems.push(`${n.id} ${n.type}: has_errors`);
      }
      const value = (n, name) => n.widgets?.find((w) => w.name === name)?.value ?? null;
      const loaders = all.filter((n) => n.type === "ReNORewardLoader")
        .map((n) => ({ id: Number(n.id), reward: value(n, "reward"), weight: value(n, "weight") }));
      let api = null;
      try {
        const p = await window.app.graphToPrompt();
        api = Object.fromEntries(Object.entries(p.output).map(([id, n]) => [id, { class_type: n.class_type, inputs: n.inputs }]));
      } catch (e) {
        problems.push(`graphToPrompt failed: ${e}`);
      }
      // every node's box as drawn (title bar included), once the DOM widgets have fitted their nodes
      await new Promise((resolve) => setTimeout(resolve, 300));
      await window.__renoSettled();
      const boxes = window.__renoBoxes();
      // each ReNO node's `prompt` widget: linked or not, the height of its row and whether its text box shows
      const prompts = nodes.filter((n) => n.type.startsWith("ReNO") && n.widgets?.some((w) => w.name === "prompt"))
        .map((n) => {
          const w = n.widgets.find((x) => x.name === "prompt");
          const input = n.inputs?.find((i) => i.widget?.name === "prompt");
          const el = w.element ?? w.inputEl ?? null;
          const rect = el && document.contains(el) ? el.getBoundingClientRect() : null;
          return { id: Number(n.id), type: n.type, linked: input?.link !== null && input?.link !== undefined,
                   row: w.computedHeight ?? null, rowHeight: (window.LiteGraph.NODE_WIDGET_HEIGHT ?? 20) + 4,
                   shown: Boolean(rect && rect.height > 4 && getComputedStyle(el).visibility !== "hidden"),
                   vue: Boolean(document.querySelector(`[data-node-id="${n.id}"]`)) };
        });
      return { nodes: nodes.length, types: all.map((n) => n.type), problems, loaders, api, boxes, prompts };
    }, wf);
    if (shots) {
      // the graph alone: fitted to the window, then cut to the nodes' boxes (and groups), no menus, toolbar or map
      const clip = await page.evaluate(() => window.__renoFit(null, 12));
      await page.waitForTimeout(600);
      await page.screenshot({ path: path.join(shots, `${path.basename(file, ".json")}.graph.png`), clip });
    }
  }
  if (shots) {
    await page.evaluate(async () => {
      try { await window.app.extensionManager?.command?.execute?.("Workspace.ToggleFocusMode"); } catch { /* */ }
      try { await window.app.extensionManager?.setting?.set?.("Comfy.Graph.CanvasMenu", true); } catch { /* */ }
      try { await window.app.extensionManager?.setting?.set?.("LiteGraph.Canvas.MinFontSizeForLOD", 8); } catch { /* */ }
      window.app.canvas.show_info = true;
    });
    await page.setViewportSize({ width: 1400, height: 900 });
  }

  // --cards FILE: the template cards (tests/browser/template_cards.py): each a 640x400 JPEG, the workflow's title,
  // facts and reward mix over its graph picture, rendered by chromium from plain HTML (text only, no scripts).
  if (args.cards) {
    step("template cards");
    const cardPage = await context.newPage();
    await cardPage.setViewportSize({ width: 640, height: 400 });
    for (const c of JSON.parse(fs.readFileSync(args.cards, "utf8"))) {
      const graph = fs.existsSync(c.graph) ? `data:image/png;base64,${fs.readFileSync(c.graph).toString("base64")}` : "";
      await cardPage.setContent(CARD_HTML);
      await cardPage.evaluate(({ c, graph }) => {
        const set = (id, text) => { document.getElementById(id).textContent = text; };
        set("number", c.number);
        set("model", c.model);
        set("facts", c.facts);
        set("rewards", c.rewards);
        set("tag", c.tag);
        if (graph) document.getElementById("graph").src = graph;
      }, { c, graph });
      await cardPage.waitForFunction(() => document.getElementById("graph").complete, null, { timeout: 5000 }).catch(() => {});
      await cardPage.screenshot({ path: c.out, type: "jpeg", quality: 90 });
    }
    await cardPage.close();
  }

  // --missing-models FILE (frontend 1.58+): open FILE (its loaders' models are not installed) and read the Missing
  // Models panel: each file with its folder and a Download button; pressing it opens the file's download URL (in a
  // new tab here; the requests to the model hosts are recorded and answered with an error, nothing is fetched).
  if (args["missing-models"]) {
    step("missing models panel");
    const opened = [];
    await context.route(/^https:\/\/(huggingface\.co|civitai\.com)\//, (route) => {
      opened.push(route.request().url());
      return route.abort();
    });
    const wf = JSON.parse(fs.readFileSync(args["missing-models"], "utf8"));
    await page.evaluate((data) => window.app.loadGraphData(data), wf);
    const details = page.getByText("View details").last();
    await details.waitFor({ timeout: 15000 }).then(() => details.click()).catch(() => step("no 'View details' toast"));
    const buttons = page.locator('[data-testid="missing-model-download"]');
    await buttons.first().waitFor({ timeout: 15000 }).catch(() => step("no Download button in the Missing Models panel"));
    const rows = await page.evaluate(() => [...document.querySelectorAll('[data-testid="missing-model-download"]')].map((b) => {
      const row = b.closest('[class*="min-h-8"]') ?? b.parentElement;
      const name = row?.querySelector("button[title]")?.getAttribute("title") ?? null;
      const folder = row?.querySelector("span.block")?.textContent?.trim() ?? null;
      return { name, directory: folder, label: b.getAttribute("aria-label") };
    }));
    for (let i = 0; i < rows.length; i++) {
      const popup = context.waitForEvent("page", { timeout: 5000 }).catch(() => null);
      await buttons.nth(i).click();
      const tab = await popup;
      await page.waitForTimeout(300);
      await tab?.close().catch(() => {});
    }
    await page.waitForTimeout(500);
    result.missingModels = { rows, opened };
    await context.unroute(/^https:\/\/(huggingface\.co|civitai\.com)\//);
    await page.keyboard.press("Escape");
    await page.evaluate(() => window.app.extensionManager?.setting?.set?.("Comfy.RightSidePanel.IsOpen", false))
      .catch(() => {}); // the panel would cover the canvas in the pictures below
  }

  // The thumbnails the template browser asks for: GET /api/workflow_templates lists each pack's workflows;
  // the card image of a custom-node template is <module>/<name>.<ext> under /api/workflow_templates/.
  if (args["thumbnail-ext"]) {
    step("workflow template thumbnails");
    result.templates = await page.evaluate(async (ext) => {
      const { api } = await import(new URL("scripts/api.js", document.baseURI).href);
      const index = await (await api.fetchApi("/workflow_templates")).json();
      const out = {};
      for (const [module, names] of Object.entries(index)) {
        out[module] = {};
        for (const name of names) {
          const r = await fetch(api.apiURL(`/workflow_templates/${module}/${name}`) + `.${ext}`);
          const body = r.ok ? new Uint8Array(await r.arrayBuffer()) : new Uint8Array();
          out[module][name] = { status: r.status, type: r.headers.get("content-type"), bytes: body.length,
            jpeg: body[0] === 0xff && body[1] === 0xd8 };
        }
      }
      return out;
    }, args["thumbnail-ext"]);
  }

  // --template-browser NAME: the pack's templates as the template browser lists them (Comfy.BrowseTemplates, then
  // the pack's entry NAME under Extensions / Custom Nodes): the titles in the order shown, and the order that
  // api.getWorkflowTemplates (the call the browser makes, wrapped by the pack) answers.
  if (args["template-browser"]) {
    step("template browser");
    const pack = args["template-browser"];
    const stems = WORKFLOWS.map((f) => path.basename(f, ".json"));
    result.templateBrowser = { api: await page.evaluate(async (name) => {
      const { api } = await import(new URL("scripts/api.js", document.baseURI).href);
      return (await api.getWorkflowTemplates())[name] ?? null;
    }, pack) };
    try {
      await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
      const entry = page.getByText(pack, { exact: true }).first();
      await entry.waitFor({ timeout: 20000 });
      await entry.click();
      await page.waitForFunction((names) => [...document.querySelectorAll("*")].some(
        (e) => e.children.length === 0 && names.includes(e.textContent.trim())), stems, { timeout: 20000 });
      await page.waitForTimeout(1000);
      // the browser pages its cards (24 a page in 1.32.9 and 1.58; the next page loads when the end of the list
      // scrolls into view): scroll the list to its end until every workflow's card is shown, then back to the top
      const scrollCards = ({ names, toEnd }) => {
        const shown = [...document.querySelectorAll("*")]
          .filter((e) => e.children.length === 0 && names.includes(e.textContent.trim()));
        for (let e = shown[shown.length - 1]; e; e = e.parentElement) {
          if (e.scrollHeight > e.clientHeight + 1) e.scrollTop = toEnd ? e.scrollHeight : 0;
        }
        return new Set(shown.map((e) => e.textContent.trim())).size;
      };
      for (let i = 0; i < 10 && (await page.evaluate(scrollCards, { names: stems, toEnd: true })) < stems.length; i++) {
        await page.waitForTimeout(700);
      }
      await page.evaluate(scrollCards, { names: stems, toEnd: false });
      await page.waitForTimeout(500);
      // a card shows its title and, under it, a description made from the name ("-" as spaces): for a name without
      // "-" the two read the same, so a title repeated right after itself is one card
      result.templateBrowser.titles = await page.evaluate((names) => [...document.querySelectorAll("*")]
        .filter((e) => e.children.length === 0 && names.includes(e.textContent.trim()))
        .map((e) => e.textContent.trim())
        .filter((t, i, all) => i === 0 || t !== all[i - 1]), stems);
      if (args["template-browser-shot"]) await page.screenshot({ path: args["template-browser-shot"] });
    } catch (e) {
      result.templateBrowser.error = String(e).slice(0, 500);
    }
    await page.keyboard.press("Escape"); // 1.58 closes on Escape; 1.32.9 by its ✕ button
    await page.waitForTimeout(500);
    const close = page.locator('[role="dialog"] button[aria-label="Close dialog"], [role="dialog"] button:has(i.pi-times)');
    if (await close.count()) await close.first().click().catch((e) => step(`could not close the template browser: ${e}`));
    await page.waitForFunction(() => !document.querySelector('[role="dialog"]'), null, { timeout: 5000 })
      .catch(() => step("a dialog is still open"));
  }

  // ReNO Load Reward: a weight follows the reward on user changes (widget.setValue, what a pick in the
  // combo calls) while untouched, and never while a saved graph loads.
  step("reward weights");
  result.weights = await page.evaluate(async () => {
    const { app } = window;
    const widget = (n, name) => n.widgets.find((w) => w.name === name);
    const pick = (n, name, v) => {
      const w = widget(n, name);
      if (typeof w.setValue === "function") return w.setValue(v, { e: undefined, node: n, canvas: app.canvas });
      w.value = v; // the 2024 frontend: a combo pick sets the value, then calls the callback
      return w.callback?.(v, app.canvas, n);
    };
    const state = (n) => [widget(n, "reward").value, widget(n, "weight").value];
    const out = {};
    app.graph.clear();
    const fresh = window.LiteGraph.createNode("ReNORewardLoader");
    app.graph.add(fresh);
    out.created = state(fresh);
    pick(fresh, "reward", "hpsv2.1");
    out.toHps = state(fresh);
    pick(fresh, "reward", "pickscore");
    out.toPick = state(fresh);
    pick(fresh, "reward", "aesthetic");
    out.toAesthetic = state(fresh);
    pick(fresh, "weight", 0.3);
    pick(fresh, "reward", "clipscore");
    out.editedKept = state(fresh);
    // A saved graph whose weights equal other rewards' suggestions: loading must keep every one.
    const saved = [["hpsv2.1", 1], ["pickscore", 1], ["imagereward", 5], ["pickscore", 0.05]];
    app.graph.clear();
    for (const [reward, weight] of saved) {
      const n = window.LiteGraph.createNode("ReNORewardLoader");
      app.graph.add(n);
      widget(n, "reward").value = reward;
      widget(n, "weight").value = weight;
    }
    const data = app.graph.serialize();
    app.graph.clear();
    await app.loadGraphData(data);
    const loaded = (app.graph._nodes ?? app.graph.nodes).slice().sort((a, b) => a.id - b.id);
    out.saved = saved;
    out.loaded = loaded.map(state);
    // after loading, user changes follow again (from the loaded reward), and a loaded 1.0 on hpsv2.1 is "edited"
    pick(loaded[0], "reward", "pickscore");
    pick(loaded[3], "reward", "clipscore");
    out.afterLoad = [state(loaded[0]), state(loaded[3])];
    app.graph.clear();
    return out;
  });

  // What each reno.iteration event did to the gallery of the node it names, and which node was executing.
  await page.evaluate(async () => {
    const { api } = await import(new URL("scripts/api.js", document.baseURI).href);
    window.__renoSeen = { events: [], live: [], errors: [], done: false };
    window.__renoCapture = { iterations: {}, executed: {} }; // what the runs sent, per node (replayed below)
    let executing = null;
    api.addEventListener("executed", (e) => {
      window.__renoCapture.executed[String(e.detail?.node)] = e.detail?.output;
    });
    api.addEventListener("reno.iteration", (e) => {
      (window.__renoCapture.iterations[String(e.detail?.node)] ??= []).push(e.detail);
      const seen = window.__renoSeen;
      seen.events.push({ iteration: e.detail.iteration, node: e.detail.node, host: executing });
      // what the node's gallery shows right after this event: listeners run in order, ours after the pack's
      // (read now: a timer could run after the next messages, e.g. the `executing` that ends the run)
      const n = window.app.graph.getNodeById(Number(e.detail.node));
      const d = n?.renoViews?.gallery?.root?.dataset;
      seen.live.push({ frames: Number(d?.frames ?? -1), shown: d?.iteration ?? null,
        summary: n?.renoSummaryLines?.length ?? 0 });
      // a preference mark made while the run is live (iteration 1 rejected): queued, sent when the run ends
      const lm = window.__renoLiveMark;
      if (lm && !lm.done && e.detail.iteration === 1 && n?.renoViews?.gallery?.marking) {
        const g = n.renoViews.gallery;
        g.markCurrent("rejected", false);
        window.__renoLiveMark = { done: true, iteration: g.root.dataset.iteration, badge: g.badge.textContent,
          mark: g.root.dataset.mark ?? "" };
      }
    });
    api.addEventListener("execution_error", (e) => window.__renoSeen.errors.push(e.detail));
    api.addEventListener("execution_success", () => { window.__renoSeen.done = true; });
    api.addEventListener("executing", (e) => {
      const node = e.detail && typeof e.detail === "object" ? e.detail.node : e.detail;
      executing = node === null || node === undefined ? null : String(node);
      if (node === null) window.__renoSeen.done = true;
    });
  });

  const view = (ids) => page.evaluate((list) => Object.fromEntries(list.map((id) => {
    const n = window.app.graph.getNodeById(id);
    const v = n?.renoViews;
    if (!v) return [id, { present: false }];
    const g = v.gallery;
    const c = v.chart;
    return [id, {
      present: true,
      gallery: { ...g.root.dataset, caption: g.captionEl.textContent, img: g.img.getAttribute("src"),
        imgLoaded: g.img.complete && g.img.naturalWidth > 0, inDocument: document.contains(g.root),
        width: g.root.getBoundingClientRect().width, height: g.root.getBoundingClientRect().height },
      chart: { ...c.root.dataset, readout: c.readout.textContent, inDocument: document.contains(c.root),
        width: c.canvas.clientWidth, height: c.canvas.clientHeight },
      summary: n.renoSummaryLines ?? null,
      summaryShown: [...g.summaryEl.children].map((x) => x.textContent),
      summaryVisible: g.summaryEl.getBoundingClientRect().height > 0,
      box: window.__renoBoxes().find((b) => b.id === Number(id)) ?? null,
    }];
  })), ids);

  // Queue the graph now loaded (a new seed on the `seedNode`'s `seedWidget` first, so a second run is not
  // answered from the server's cache), wait for the end and for `waitNode`'s gallery, and report.
  async function queueAndWatch(label, { seedNode, seedWidget, waitNode }) {
    await page.evaluate(({ sid, widget }) => {
      window.__renoSeen = { ...window.__renoSeen, events: [], live: [], errors: [], done: false };
      const seed = window.app.graph.getNodeById(sid)?.widgets?.find((w) => w.name === widget);
      if (seed) seed.value = Math.floor(Math.random() * 1e6);
    }, { sid: seedNode, widget: seedWidget });
    step(`queue ${label}`);
    await page.evaluate(() => window.app.queuePrompt(0, 1));
    await page.waitForFunction(() => window.__renoSeen.errors.length > 0 || window.__renoSeen.done, null,
      { timeout: TIMEOUT_MS, polling: 250 });
    step(`${label} finished`);
    await page.waitForFunction(
      (id) => window.__renoSeen.errors.length > 0
        || window.app.graph.getNodeById(id)?.renoViews?.gallery?.root?.dataset?.frames !== undefined,
      waitNode, { timeout: 15000, polling: 250 },
    ).catch(() => step(`${label}: node ${waitNode} has no gallery`));
    // the gallery image (from /view, or a data URL) must load
    await page.waitForFunction(
      (id) => {
        const img = window.app.graph.getNodeById(id)?.renoViews?.gallery?.img;
        return !img || (img.complete && img.naturalWidth > 0) || window.__renoSeen.errors.length > 0;
      },
      waitNode, { timeout: 15000 },
    ).catch(() => step(`${label}: gallery image did not load`));
    return page.evaluate(() => {
      const seen = window.__renoSeen;
      return { events: seen.events, live: seen.live, errors: seen.errors };
    });
  }

  const place = (scale, offset) => page.evaluate(({ scale, offset }) => {
    const c = window.app.canvas;
    c.ds.scale = scale;
    c.ds.offset = offset;
    c.setDirty(true, true);
  }, { scale, offset });

  // 2. The tiny demo: queue it, watch the live events, wait for the preview node's gallery. (Steps 2-6 need --demo.)
  demo: {
  if (!args.demo) break demo;
  step("load demo");
  const demo = JSON.parse(fs.readFileSync(args.demo, "utf8"));
  await page.evaluate((data) => window.app.loadGraphData(data), demo);
  await place(0.85, [70, 60]);
  await page.evaluate(async (name) => {  // the live mark below goes to its own dataset
    await window.app.extensionManager?.setting?.set?.("ReNO.Preferences.Dataset", name);
    window.__renoLiveMark = { done: false };
  }, `browser_live${args["dataset-suffix"] ?? ""}`);
  // the boxes once Nodes 2.0 has redrawn at the new scale (measured earlier, its elements still have the old size)
  await page.evaluate(() => window.__renoSettled());
  const boxesBefore = await page.evaluate(() => window.__renoBoxes());
  const seen = await queueAndWatch("demo", { seedNode: SAMPLER_ID, seedWidget: "seed", waitNode: PREVIEW_ID });
  await page.waitForFunction((sid) => {
    const d = window.app.graph.getNodeById(sid)?.renoViews?.gallery?.root?.dataset;
    return !window.__renoLiveMark?.done || (d && d.markPending !== "true");
  }, SAMPLER_ID, { timeout: 15000 }).catch(() => step("the live mark did not settle"));
  result.liveMark = await page.evaluate(() => window.__renoLiveMark);
  // what the demo sent, kept for the replay on the shipped workflows (the custom-sampler demo reuses node ids)
  await page.evaluate(() => { window.__renoDemo = JSON.parse(JSON.stringify(window.__renoCapture)); });
  const views = await view([SAMPLER_ID, PREVIEW_ID]);
  result.run = {
    events: seen.events.map((e) => e.iteration), liveFrames: seen.live.map((x) => x.frames), errors: seen.errors,
    sampler: views[SAMPLER_ID], preview: views[PREVIEW_ID], boxesBefore,
    boxesAfter: await page.evaluate(async () => { await window.__renoSettled(); return window.__renoBoxes(); }),
  };

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

  // 3b. Preference picks (dataset setting "browser_picks"), with the real mouse and keyboard: on the preview node
  // iteration 0 preferred by the P key over the gallery, iteration 1 rejected by its ✕ button; on the sampler
  // iteration 0 (the same picture as the preview's iteration 0: its record is replaced, and the preview shows
  // the new one) preferred by its ✓ button; iteration 2 rejected by the X key, then cleared by Backspace over the
  // gallery while the node is selected (the node must stay: the key is ours there).
  step("preference picks");
  const galleryState = (id) => page.evaluate((nid) => {
    const g = window.app.graph.getNodeById(nid)?.renoViews?.gallery;
    if (!g) return null;
    const d = g.root.dataset;
    const frame = g.current();
    return { id: (frame && g.marking?.entry(frame)?.id) ?? null, iteration: d.iteration, mark: d.mark ?? "", pending: d.markPending ?? "", error: d.markError ?? "",
      badge: g.badge.textContent, title: g.preferButton.title, frameTitle: g.frame.title,
      preferActive: g.preferButton.classList.contains("active"), rejectActive: g.rejectButton.classList.contains("active"),
      buttons: g.markButtons.style.display !== "none" && !g.preferButton.disabled };
  }, id);
  const showFrame = (id, index) => page.evaluate(({ nid, k }) => {
    const g = window.app.graph.getNodeById(nid).renoViews.gallery;
    g.pause();
    g.show(k);
  }, { nid: id, k: index });
  const settled = (id, mark) => page.waitForFunction(({ nid, m }) => {
    const d = window.app.graph.getNodeById(nid)?.renoViews?.gallery?.root?.dataset;
    return d && d.markPending !== "true" && (d.mark === m || d.markError === "true");
  }, { nid: id, m: mark }, { timeout: 15000 }).catch(() => step(`node ${id}: the mark did not settle on '${mark}'`));
  // Pan the canvas (the node is taller than the window at this zoom) so the node's gallery is in view.
  const inView = (id) => page.evaluate(async (nid) => {
    const r = window.app.graph.getNodeById(nid).renoViews.gallery.root.getBoundingClientRect();
    const c = window.app.canvas;
    const v = c.canvas.getBoundingClientRect();
    if (r.top >= v.top && r.bottom <= v.bottom && r.left >= v.left && r.right <= v.right) return;
    const s = c.ds.scale;
    c.ds.offset = [c.ds.offset[0] + (v.left + v.width / 2 - (r.left + r.width / 2)) / s,
                   c.ds.offset[1] + (v.top + v.height / 2 - (r.top + r.height / 2)) / s];
    c.setDirty(true, true);
    await new Promise((resolve) => setTimeout(resolve, 300));
  }, id);
  const hover = async (id) => {
    await inView(id);
    const box = await page.evaluate((nid) => {
      const r = window.app.graph.getNodeById(nid).renoViews.gallery.frame.getBoundingClientRect();
      return { x: r.left + r.width / 2, y: r.top + r.height / 2 };
    }, id);
    await page.mouse.move(box.x, box.y);
  };
  const clickButton = async (id, which) => {
    await inView(id);
    const handle = await page.evaluateHandle(({ nid, w }) => window.app.graph.getNodeById(nid).renoViews.gallery[w],
      { nid: id, w: which });
    await handle.asElement().click();
  };
  result.preferences = {};
  await page.evaluate(async (name) => {
    await window.app.extensionManager?.setting?.set?.("ReNO.Preferences.Dataset", name);
  }, `browser_picks${args["dataset-suffix"] ?? ""}`);
  await showFrame(PREVIEW_ID, 0);
  result.preferences.before = await galleryState(PREVIEW_ID);
  await hover(PREVIEW_ID);
  await page.keyboard.press("p");
  await settled(PREVIEW_ID, "preferred");
  result.preferences.previewKey = await galleryState(PREVIEW_ID);
  await showFrame(PREVIEW_ID, 1);
  await clickButton(PREVIEW_ID, "rejectButton");
  await settled(PREVIEW_ID, "rejected");
  result.preferences.previewButton = await galleryState(PREVIEW_ID);
  await showFrame(PREVIEW_ID, 0);
  result.preferences.previewBack = await galleryState(PREVIEW_ID);
  await showFrame(SAMPLER_ID, 0);
  await clickButton(SAMPLER_ID, "preferButton");
  await settled(SAMPLER_ID, "preferred");
  result.preferences.samplerMarked = await galleryState(SAMPLER_ID);
  result.preferences.previewRelinked = await galleryState(PREVIEW_ID);
  await showFrame(SAMPLER_ID, 2);
  await hover(SAMPLER_ID);
  await page.keyboard.press("x");
  await settled(SAMPLER_ID, "rejected");
  result.preferences.samplerKey = await galleryState(SAMPLER_ID);
  await page.evaluate((sid) => {
    const n = window.app.graph.getNodeById(sid);
    window.app.canvas.selectNode?.(n);
  }, SAMPLER_ID);
  await hover(SAMPLER_ID);
  await page.keyboard.press("Backspace");
  await settled(SAMPLER_ID, "");
  result.preferences.samplerCleared = await galleryState(SAMPLER_ID);
  result.preferences.samplerStillThere = await page.evaluate((sid) => Boolean(window.app.graph.getNodeById(sid)), SAMPLER_ID);
  await page.evaluate(() => window.app.canvas.deselectAllNodes?.());
  await showFrame(PREVIEW_ID, 1);

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
  if (args["readme-shot"]) {  // the sampler, the preview and Save Image after the run, nothing else on the page
    const chrome = (on) => page.evaluate(async (show) => {
      const em = window.app.extensionManager;
      for (const [key, value] of [["Comfy.Graph.CanvasMenu", show], ["LiteGraph.Canvas.MinFontSizeForLOD", show ? 8 : 0]]) {
        try { await em?.setting?.set?.(key, value); } catch { /* older frontend */ }
      }
      try { await em?.command?.execute?.("Workspace.ToggleFocusMode"); } catch { /* older frontend */ }
    }, on);
    await chrome(false);
    await page.setViewportSize({ width: 1500, height: 1300 });
    await page.evaluate((ids) => {  // both galleries at the best iteration
      for (const id of ids) window.app.graph.getNodeById(id)?.renoViews?.gallery?.bestButton?.click();
    }, [SAMPLER_ID, PREVIEW_ID]);
    await page.waitForTimeout(400);
    const clip = await page.evaluate((ids) => window.__renoFit(ids, 28), [SAMPLER_ID, PREVIEW_ID, 8]);
    await page.waitForTimeout(700);
    await page.screenshot({ path: args["readme-shot"], clip });
    await page.setViewportSize({ width: 1400, height: 900 });
    await chrome(true);
    await page.evaluate(() => { window.app.canvas.show_info = true; });
  }
  if (args.screenshot) {
    await page.screenshot({ path: args.screenshot });
    if (args.small) await page.screenshot({ path: args.small, clip: { x: 0, y: 0, width: 1400, height: 900 }, type: "png", scale: "css" });
  }

  // 5. ReNO Sampler (custom) run by SamplerCustomAdvanced: its own live gallery and chart, kept after the
  // run; then a second run with fewer iterations after a scrub: the views start over and follow it.
  if (args.custom) {
    step("load custom-sampler demo");
    const custom = JSON.parse(fs.readFileSync(args.custom, "utf8"));
    await page.evaluate((data) => window.app.loadGraphData(data), custom);
    await place(1, [-340, 100]);
    const watch = { seedNode: Number(args["custom-seed-node"] ?? 7), seedWidget: "noise_seed", waitNode: CUSTOM_ID };
    const first = await queueAndWatch("custom sampler", watch);
    const firstViews = await view([CUSTOM_ID, HOST_ID]);
    // hover the chart at the best iteration, and picture the node
    const box = await page.evaluate((cid) => {
      const n = window.app.graph.getNodeById(cid);
      const v = n?.renoViews;
      if (v?.chart.model) v.chart.setHover(v.chart.model.best);
      const c = window.app.canvas;
      c.show_info = false; // litegraph's corner statistics would overlap the picture
      c.setDirty(true, true);
      const r = c.canvas.getBoundingClientRect();
      const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
      const s = c.ds.scale;
      const lines = n?.renoSummaryLines?.length ?? 0;
      return {
        x: r.left + (n.pos[0] + c.ds.offset[0]) * s - 8,
        y: r.top + (n.pos[1] - title + c.ds.offset[1]) * s - 8,
        width: n.size[0] * s + 16,
        height: (n.size[1] + title + 16 * lines + 4) * s + 16,
      };
    }, CUSTOM_ID);
    await page.waitForTimeout(300);
    if (args["custom-screenshot"]) {
      const clip = { x: Math.max(0, box.x), y: Math.max(0, box.y), width: box.width, height: box.height };
      await page.screenshot({ path: args["custom-screenshot"], clip });
    }
    // scrub back to iteration 0, then run again with fewer iterations
    await page.evaluate(({ cid, n }) => {
      const node = window.app.graph.getNodeById(cid);
      const v = node?.renoViews;
      v?.chart.setHover(null);
      if (v) {
        v.gallery.slider.value = "0";
        v.gallery.slider.dispatchEvent(new Event("input", { bubbles: true }));
      }
      const w = node?.widgets?.find((x) => x.name === "iterations");
      if (w) w.value = n;
    }, { cid: CUSTOM_ID, n: RERUN_ITER });
    const scrubbed = await view([CUSTOM_ID]);
    const second = await queueAndWatch("custom sampler rerun", watch);
    const secondViews = await view([CUSTOM_ID, HOST_ID]);
    const serialized = await page.evaluate(async (cid) => {
      const g = window.app.graph.serialize();
      const prompt = await window.app.graphToPrompt();
      return {
        widgets: g.nodes.find((n) => n.id === cid)?.widgets_values ?? null,
        names: window.app.graph.getNodeById(cid).widgets.map((w) => w.name),
        inputs: Object.keys(prompt.output[String(cid)]?.inputs ?? {}),
      };
    }, CUSTOM_ID);
    const safety = await page.evaluate(() => ({
      xss: window.__renoXSS,
      onerrorElements: document.querySelectorAll("[onerror]").length,
      imgX: [...document.querySelectorAll("img")].filter((i) => i.getAttribute("src") === "x").length,
    }));
    result.custom = {
      first: { ...first, view: firstViews[CUSTOM_ID], host: firstViews[HOST_ID] },
      scrubbed: scrubbed[CUSTOM_ID]?.gallery?.iteration ?? null,
      second: { ...second, view: secondViews[CUSTOM_ID], host: secondViews[HOST_ID] },
      serialized,
      safety,
    };
  }
  // 6. After a run: each shipped workflow's ReNO nodes get what the tiny runs above sent (their reno.iteration events
  // and UI outputs, the trainer a held-out summary, every ReNO Load Reward a finished download's status line), then
  // every node's box is measured again: no node taller than at load (the core's own image preview aside), none
  // overlapping another. (The shipped workflows' models are not installed, so they cannot run here.)
  if (WORKFLOWS.length && args.replay !== "0") {
    for (const file of WORKFLOWS) {
      step(`after a run: ${path.basename(file)}`);
      const wf = JSON.parse(fs.readFileSync(file, "utf8"));
      result.workflows[path.basename(file)].afterRun = await page.evaluate(async ({ data, ids }) => {
        const { api } = await import(new URL("scripts/api.js", document.baseURI).href);
        await window.app.loadGraphData(data);
        await new Promise((resolve) => setTimeout(resolve, 300));
        await window.__renoSettled();
        const before = window.__renoBoxes();
        const cap = window.__renoDemo;
        const custom = window.__renoCapture.iterations[String(ids.custom)] ?? [];
        const nodes = window.app.graph._nodes ?? window.app.graph.nodes;
        const send = (type, detail) => api.dispatchCustomEvent(type, detail);
        const pid = `replay-${Math.random()}`;
        const iterations = (from, to) => (cap.iterations[String(from)] ?? []).map((d) => ({ ...d, node: String(to), prompt_id: pid }));
        const executed = (node, output) => send("executed", { node: String(node), display_node: String(node), output, prompt_id: pid });
        const demoChart = cap.executed[String(ids.sampler)]?.reno_chart;
        const previewImages = cap.executed[String(ids.preview)]?.images ?? [];
        send("execution_start", { prompt_id: pid });
        for (const n of nodes) {
          const id = n.id;
          if (n.type === "ReNOSampler") {
            send("executing", { node: String(id), prompt_id: pid });
            for (const d of iterations(ids.sampler, id)) send("reno.iteration", d);
            executed(id, cap.executed[String(ids.sampler)]);
          } else if (n.type === "ReNOSamplerCustom") {
            send("executing", { node: String(id), prompt_id: pid });
            for (const d of custom) send("reno.iteration", { ...d, node: String(id), prompt_id: pid });
            send("executing", { node: null, prompt_id: pid });
          } else if (n.type === "ReNOIterationPreview") {
            executed(id, cap.executed[String(ids.preview)]);
          } else if (n.type === "ReNORewardLoRATrainer") {
            send("executing", { node: String(id), prompt_id: pid });
            for (const d of iterations(ids.sampler, id)) send("reno.iteration", d);
            executed(id, { images: previewImages.slice(0, 2), reno_chart: demoChart, reno_training: [{ method: "alignprop",
              steps: 1, held_out_before: 0.1, held_out_after: 0.3, best_step: 1 }] });
          } else if (n.type === "ReNOScoreImages") {
            executed(id, { images: previewImages.slice(0, 2), reno_scores: [1, 2], reno_prompt: ["replay"] });
          } else if (n.type === "ReNORewardLoader" || n.type === "ReNOTrainPreferenceReward") {
            send("reno.download", { node: String(id), reward: "imagereward", file: "ImageReward.pt", index: 1, count: 1,
                                    phase: "done", done: 1, total: 1 });
          }
        }
        send("executing", { node: null, prompt_id: pid });
        send("execution_success", { prompt_id: pid });
        await new Promise((resolve) => setTimeout(resolve, 800)); // images load, the layout settles
        await window.__renoSettled();
        const views = Object.fromEntries(nodes.filter((n) => n.renoViews).map((n) => {
          const g = n.renoViews.gallery;
          return [n.id, { frames: Number(g.root.dataset.frames ?? 0), summary: Number(g.root.dataset.summary ?? 0),
            imgLoaded: g.img.complete && g.img.naturalWidth > 0 }];
        }));
        return { before, after: window.__renoBoxes(), views };
      }, { data: wf, ids: { sampler: SAMPLER_ID, preview: PREVIEW_ID, custom: CUSTOM_ID } });
    }
  }
  } // demo
  step("done");
} catch (e) {
  result.fatal = String(e?.stack ?? e);
} finally {
  await context.close();
  fs.rmSync(userDir, { recursive: true, force: true });
}
console.log(`RESULT ${JSON.stringify(result)}`);
