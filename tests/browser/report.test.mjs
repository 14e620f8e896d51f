// `pathc report` opened in headless Chromium (Debian's chromium) and driven by playwright-core:
// no console errors; the numbers on the page equal `pathc paths/scores/stats --format json`;
// expanding a tree node and selecting a heatmap cell show what they should. A screenshot of each
// view goes to $PATHC_SCREENSHOTS (default: target/report-screenshots).
//
// Run by .ci/run: PATHC_BIN=target/debug/pathc node --test tests/browser
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.PATHC_BIN || join(repo, "target/debug/pathc");
const browserPath = process.env.PATHC_CHROMIUM || "/usr/bin/chromium";
const shots = process.env.PATHC_SCREENSHOTS || join(repo, "target/report-screenshots");
const fixture = join(repo, "tests/fixtures/induction");
const model = join(fixture, "model.tf");
const weights = join(fixture, "model.safetensors");
// Repeated random tokens: the induction head L1H1 attends from 9 (position 7) to what followed
// its first occurrence (3, position 3).
const tokens = "0,5,9,3,7,12,5,9,3,7";
const position = 7;

function pathc(...args) {
  return execFileSync(bin, args, { encoding: "utf8", maxBuffer: 1 << 28 });
}
function json(...args) {
  return JSON.parse(pathc(...args, "--format", "json"));
}

let dir, browser, page, errors, paths, scores, stats;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "pathc-report-"));
  mkdirSync(shots, { recursive: true });
  const out = join(dir, "report.html");
  pathc("report", model, "--weights", weights, "--tokens", tokens, "--pos", String(position), "--target", "next", "-o", out);
  paths = json("paths", model, "--weights", weights, "--tokens", tokens, "--pos", String(position), "--target", "next");
  scores = json("scores", model, "--weights", weights, "--tokens", tokens, "--pos", String(position), "--head", "L1H1");
  stats = json("stats", model, "--weights", weights);
  browser = await chromium.launch({
    executablePath: browserPath,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  errors = [];
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  // Offline: any request but the file itself is an error.
  page.on("request", (r) => { if (!r.url().startsWith("file:")) errors.push("network request: " + r.url()); });
  await page.goto("file://" + out);
  await page.waitForSelector("#circuits");
});

after(async () => {
  if (browser) await browser.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const value = (locator) => locator.getAttribute("data-value").then(Number);
const byName = () => new Map(paths.paths.map((p) => [p.name, p.target_logits[0]]));
// Σ of the CLI's paths whose names start with `prefix` (as a tree node sums them).
const under = (prefix) => paths.paths.filter((p) => p.name === prefix || p.name.startsWith(prefix + "/"))
  .reduce((s, p) => s + p.target_logits[0], 0);

test("the page loads with no console error and no network request", async () => {
  await page.screenshot({ path: join(shots, "report-top.png") });
  assert.deepEqual(errors, []);
  assert.equal(await page.textContent("#model-name"), "induction");
});

test("the check equals the CLI's forward logit and the sum of its paths", async () => {
  assert.equal(await value(page.locator("#forward-logit .num")), paths.forward_target_logits[0]);
  const sum = paths.paths.reduce((s, p) => s + p.target_logits[0], 0);
  assert.ok(Math.abs((await value(page.locator("#paths-sum .num"))) - sum) < 1e-12);
});

test("the ranked paths are the CLI's largest, with its values bit for bit", async () => {
  const rows = page.locator("#ranked tbody tr");
  const n = await rows.count();
  assert.equal(n, 40);
  const cli = byName();
  const expected = [...paths.paths].sort((a, b) => Math.abs(b.target_logits[0]) - Math.abs(a.target_logits[0])).slice(0, n);
  for (let i = 0; i < n; i++) {
    const row = rows.nth(i);
    const name = await row.getAttribute("data-path");
    assert.equal(name, expected[i].name);
    assert.equal(await value(row.locator(".num")), cli.get(name));
  }
  const rest = expected.length === paths.paths.length ? 0 : paths.paths.length - n;
  assert.match(await page.textContent("#paths-rest"), new RegExp(`^${rest} other paths`));
});

test("expanding a tree node shows its children, each the sum of the paths under it", async () => {
  const node = page.locator('.node[data-name="E/L0H3"]');
  assert.equal(await node.locator(":scope > .children").isVisible(), false);
  await node.locator(":scope > .row button.toggle").click();
  assert.equal(await node.getAttribute("aria-expanded"), "true");
  const children = node.locator(":scope > .children > .node");
  assert.ok((await children.count()) > 0);
  await page.locator("#tree").screenshot({ path: join(shots, "report-tree.png") });
  const cli = byName();
  for (let i = 0; i < (await children.count()); i++) {
    const child = children.nth(i);
    await child.waitFor({ state: "visible" });
    const name = await child.getAttribute("data-name");
    assert.ok(name.startsWith("E/L0H3/"), name);
    assert.ok(Math.abs((await value(child.locator(":scope > .row .node-value"))) - under(name)) < 1e-12, name);
  }
  // The node's own path: its formula and the CLI's value.
  assert.equal(await value(node.locator(":scope > .own .path-value")), cli.get("E/L0H3"));
  assert.ok(Math.abs((await value(node.locator(":scope > .row .node-value"))) - under("E/L0H3")) < 1e-12);
  for (const source of ["E", "P"]) {
    const total = await value(page.locator(`.node[data-name="${source}"] > .row .node-value`));
    assert.ok(Math.abs(total - under(source)) < 1e-12, source);
  }
});

test("selecting a cell of L1H1's pattern shows the CLI's largest score terms", async () => {
  await page.click('button.head[data-head="L1H1"]');
  const cell = page.locator(`#pattern rect.cell[data-row="${position}"][data-col="3"]`);
  await cell.click();
  assert.equal(await page.getAttribute("#cell-detail", "data-k"), "3");
  await page.locator("#attention").screenshot({ path: join(shots, "report-attention.png") });
  const rows = page.locator("#terms tbody tr[data-term]");
  const n = await rows.count();
  assert.equal(n, 8);
  const cli = new Map(scores.terms.map((t) => [t.name, t.scores[3]]));
  const largest = scores.terms.map((t) => Math.abs(t.scores[3])).sort((a, b) => b - a).slice(0, n);
  for (let i = 0; i < n; i++) {
    const name = await rows.nth(i).getAttribute("data-term");
    const v = await value(rows.nth(i).locator(".num"));
    assert.equal(v, cli.get(name), name);
    assert.equal(Math.abs(v), largest[i]);
  }
  // The score is the sum of every term; the rest row sums those not shown.
  const all = scores.terms.reduce((s, t) => s + t.scores[3], 0);
  assert.ok(Math.abs((await value(page.locator("#cell-score .num"))) - all) < 1e-9 + scores.max_abs_error);
  assert.ok(Number(await cell.getAttribute("data-value")) > 0.5, "the induction head attends to the token after 9's first occurrence");
});

test("the composition and copying heatmaps hold the CLI's statistics", async () => {
  await page.click('button[data-kind="k"]');
  const comp = page.locator('#comp-k rect.cell[data-row="1"][data-col="5"]');
  assert.equal(await value(comp), stats.comp_k[0][1][1][1]);
  await comp.click();
  assert.equal(await value(page.locator("#circuit-readout .num")), stats.comp_k[0][1][1][1]);
  for (let l = 0; l < 2; l++) {
    for (let h = 0; h < 4; h++) {
      assert.equal(await value(page.locator(`#ov-copying rect.cell[data-row="${l}"][data-col="${h}"]`)), stats.ov_copying[l][h]);
      assert.equal(await value(page.locator(`#qk-copying rect.cell[data-row="${l}"][data-col="${h}"]`)), stats.qk_copying[l][h]);
    }
  }
  await page.locator("#circuits").screenshot({ path: join(shots, "report-circuits.png") });
  assert.deepEqual(errors, []);
});
