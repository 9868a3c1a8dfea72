import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { PANEL, renoSettings } from "../../web/js/reno_settings.js";

const settings = renoSettings();

test("every setting sits in the ReNO panel under a readable section, never under its raw id", () => {
  for (const s of settings) {
    assert.ok(Array.isArray(s.category) && s.category.length === 3, s.id);
    const [panel, section, key] = s.category;
    assert.equal(panel, PANEL);
    assert.equal(key, s.id.split(".").pop(), s.id); // the leaf key: the id's last part
    // words, not an id part such as "AllowDownloads" (what the dialog shows as the heading without a category)
    assert.match(section, /^[A-Z][a-z]+( [a-z]+)*$/, `${s.id}: section '${section}' reads as words`);
    assert.match(s.name, /^[A-Z]/, s.id);
    assert.ok(!s.name.startsWith("ReNO"), `${s.id}: the panel already says ReNO`);
    assert.ok(s.tooltip && s.type && "defaultValue" in s, s.id);
  }
  assert.equal(new Set(settings.map((s) => s.id)).size, settings.length);
  assert.deepEqual([...new Set(settings.map((s) => s.category[1]))], ["Reward models", "Gallery and chart", "Preferences"]);
});

test("the ids are the ones users' saved settings and the server use", () => {
  assert.deepEqual(settings.map((s) => s.id),
    ["ReNO.AllowDownloads", "ReNO.TorchCompile", "ReNO.PreviewSize", "ReNO.ShowChart", "ReNO.Preferences.Dataset"]);
  const server = readFileSync(new URL("../../nodes/settings.py", import.meta.url), "utf8");
  for (const id of ["ReNO.AllowDownloads", "ReNO.TorchCompile"]) assert.ok(server.includes(`"${id}"`), id);
});

test("the gallery and chart settings redraw the views when changed", () => {
  let calls = 0;
  const withHook = renoSettings(() => calls++);
  for (const s of withHook) s.onChange?.(1, 0);
  assert.equal(calls, 2);
});
