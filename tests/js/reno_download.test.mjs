import { test } from "node:test";
import assert from "node:assert/strict";
import { DownloadStatus, downloadLine, formatBytes } from "../../web/js/reno_download.js";

const event = (over = {}) => ({
  reward: "imagereward", file: "ImageReward.pt", index: 1, count: 4, phase: "download", done: 0, total: 1_787_000_000,
  ...over,
});

test("formatBytes uses decimal units with one decimal below 100", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(999), "999 B");
  assert.equal(formatBytes(1500), "1.5 KB");
  assert.equal(formatBytes(1_787_000_000), "1.8 GB");
  assert.equal(formatBytes(3_940_000_000), "3.9 GB");
  assert.equal(formatBytes(250_000_000), "250 MB");
  for (const bad of [undefined, null, NaN, -1, "x"]) assert.equal(formatBytes(bad), "?");
});

test("a download shows the file, which of how many, bytes of the total and the percentage", () => {
  assert.equal(downloadLine(event()), "Downloading imagereward: ImageReward.pt (file 1 of 4) 0 B / 1.8 GB (0 %)");
  assert.equal(downloadLine(event({ done: 893_500_000 })),
    "Downloading imagereward: ImageReward.pt (file 1 of 4) 894 MB / 1.8 GB (50 %)");
  assert.equal(downloadLine(event({ done: 1_787_000_000 })),
    "Downloading imagereward: ImageReward.pt (file 1 of 4) 1.8 GB / 1.8 GB (100 %)");
  // one file: no "file 1 of 1"; an unknown size: the bytes so far
  assert.equal(downloadLine(event({ count: 1, total: null, done: 2048 })), "Downloading imagereward: ImageReward.pt 2.0 KB");
});

test("the check, each file's end, the last file's end, a cancel and a failure each have their line", () => {
  assert.equal(downloadLine(event({ phase: "verify", done: 1_787_000_000 })),
    "Checking imagereward: ImageReward.pt (file 1 of 4) 1.8 GB");
  assert.equal(downloadLine(event({ phase: "done" })), "Downloaded imagereward: ImageReward.pt (file 1 of 4)");
  assert.equal(downloadLine(event({ phase: "done", index: 4, file: "vocab.txt" })), "Downloaded imagereward: 4 files, ready");
  assert.equal(downloadLine(event({ phase: "done", count: 1 })), "Downloaded imagereward: 1 file, ready");
  assert.match(downloadLine(event({ phase: "stopped", done: 10 })), /^Download of imagereward cancelled at ImageReward\.pt .*not kept/);
  assert.match(downloadLine(event({ phase: "failed" })), /failed at ImageReward\.pt .*see the error/);
});

test("anything that is not a download event gives no line", () => {
  for (const bad of [undefined, null, 3, "x", {}, event({ phase: "nonsense" })]) assert.equal(downloadLine(bad), "");
});

/** A document stand-in whose elements refuse innerHTML: the view must build text only. */
function fakeDocument() {
  return {
    createElement(tag) {
      return {
        tag, style: {}, textContent: "", title: "",
        set innerHTML(_) {
          throw new Error("innerHTML used");
        },
      };
    },
  };
}

test("the status view shows the line as text and keeps the last line for events that are not downloads", () => {
  const view = new DownloadStatus(fakeDocument());
  assert.equal(view.root.tag, "div");
  const evil = "<img src=x onerror=alert(1)>";
  const line = view.show(event({ file: evil, done: 5 }));
  assert.equal(view.root.textContent, line);
  assert.ok(line.includes(evil)); // verbatim, as text
  assert.equal(view.root.title, line);
  assert.equal(view.phase, "download");
  assert.equal(view.show({}), "");
  assert.equal(view.root.textContent, line);
  view.show(event({ phase: "stopped" }));
  assert.equal(view.phase, "stopped");
  assert.match(view.root.textContent, /cancelled/);
});
