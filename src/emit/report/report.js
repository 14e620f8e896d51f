// pathc report: draws the page from the JSON in #pathc-data (see src/emit/report.rs for its
// fields). No library and no network. Every number shown keeps its exact value in a
// data-value attribute (JavaScript's shortest round-trip form, as pathc's JSON writes it), so a
// test can compare the page with `pathc paths/scores/stats --format json`.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("pathc-data").textContent);
  const root = document.getElementById("report");
  const SVG = "http://www.w3.org/2000/svg";

  // --- small helpers ---------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  function fmt(v) {
    const a = Math.abs(v);
    if (v === 0) return "0";
    if (a >= 1e4 || a < 1e-3) return v.toExponential(3);
    return v.toFixed(4);
  }
  // A number as shown: rounded text, the exact value in data-value and the tooltip.
  function num(v, cls) {
    return el("span", { class: "num" + (cls ? " " + cls : ""), "data-value": String(v), title: String(v) }, fmt(v));
  }
  function tokenText(i) {
    const s = data.str_tokens && data.str_tokens[i];
    return s === null || s === undefined ? String(data.tokens[i]) : JSON.stringify(s);
  }
  function targetText() {
    return data.target_str === undefined ? String(data.target) : data.target + " " + JSON.stringify(data.target_str);
  }
  // A bar of width |v| / scale, blue for positive, red for negative.
  function bar(v, scale) {
    const w = scale > 0 ? Math.min(100, (100 * Math.abs(v)) / scale) : 0;
    const inner = el("span", { class: "bar-fill " + (v < 0 ? "neg" : "pos") });
    inner.style.width = w.toFixed(2) + "%";
    return el("span", { class: "bar" }, inner);
  }
  function section(id, title, ...children) {
    return el("section", { id }, el("h2", {}, title), ...children);
  }
  function mix(a, b, t) {
    return "rgb(" + a.map((x, i) => Math.round(x + (b[i] - x) * t)).join(",") + ")";
  }
  const WHITE = [255, 255, 255], BLUE = [33, 102, 172], RED = [178, 24, 43];
  // Colour scales: sequential (0 → max) and diverging (−limit → limit).
  function sequential(v, max) {
    return mix(WHITE, BLUE, max > 0 ? Math.max(0, Math.min(1, v / max)) : 0);
  }
  function diverging(v, limit) {
    const t = limit > 0 ? Math.max(-1, Math.min(1, v / limit)) : 0;
    return t >= 0 ? mix(WHITE, BLUE, t) : mix(WHITE, RED, -t);
  }

  // A heatmap: rows × cols cells; value(r, c) null for a cell not drawn. `onSelect(r, c)` on a
  // click (or Enter) on a cell; the selected cell is outlined.
  function heatmap(opts) {
    const { rows, cols, value, colour, rowLabels, colLabels, cell: size, onSelect, label } = opts;
    const left = rowLabels ? 8 + 7 * Math.max(...rowLabels.map((s) => s.length)) : 0;
    const top = colLabels ? 8 + 7 * Math.max(...colLabels.map((s) => s.length)) : 0;
    const w = left + cols * size, h = top + rows * size;
    const chart = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: "heatmap", role: "grid", "aria-label": label });
    if (rowLabels) rowLabels.forEach((s, r) => {
      const t = svg("text", { x: left - 4, y: top + r * size + size / 2, class: "axis", "text-anchor": "end", "dominant-baseline": "middle" });
      t.textContent = s;
      chart.append(t);
    });
    if (colLabels) colLabels.forEach((s, c) => {
      const x = left + c * size + size / 2;
      const t = svg("text", { x, y: top - 4, class: "axis", transform: `rotate(-90 ${x} ${top - 4})`, "dominant-baseline": "middle" });
      t.textContent = s;
      chart.append(t);
    });
    let selected = null;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = value(r, c);
        if (v === null) {
          chart.append(svg("rect", { x: left + c * size, y: top + r * size, width: size, height: size, class: "blank" }));
          continue;
        }
        const rect = svg("rect", {
          x: left + c * size, y: top + r * size, width: size, height: size, fill: colour(v),
          class: "cell", "data-row": r, "data-col": c, "data-value": String(v), tabindex: onSelect ? 0 : -1,
        });
        const tip = svg("title", {});
        tip.textContent = (opts.describe ? opts.describe(r, c) + ": " : "") + String(v);
        rect.append(tip);
        if (onSelect) {
          const pick = () => {
            if (selected) selected.classList.remove("selected");
            selected = rect;
            rect.classList.add("selected");
            onSelect(r, c);
          };
          rect.addEventListener("click", pick);
          rect.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
        }
        chart.append(rect);
      }
    }
    chart.select = (r, c) => {
      const rect = chart.querySelector(`rect.cell[data-row="${r}"][data-col="${c}"]`);
      if (rect) rect.dispatchEvent(new MouseEvent("click"));
    };
    return chart;
  }

  // --- header and tokens ---------------------------------------------------------------------
  function header() {
    const order = data.max_order === null ? "every order" : "order ≤ " + data.max_order;
    return el("header", {},
      el("h1", {}, "pathc report: ", el("span", { id: "model-name" }, data.model)),
      el("p", { class: "meta" }, `pathc ${data.pathc} · ${data.layers.length} layers (heads ${data.layers.join(", ")}) · ${data.paths.count} paths of ${order}`));
  }
  function tokens() {
    const list = el("ol", { class: "tokens", start: 0 });
    data.tokens.forEach((id, i) => {
      const s = data.str_tokens && data.str_tokens[i];
      const chip = el("li", { class: "token" + (i === data.position ? " current" : ""), "data-pos": i, title: `position ${i}, token ${id}` },
        el("span", { class: "pos" }, String(i)), el("span", { class: "tok" }, s === null || s === undefined ? String(id) : s));
      list.append(chip);
    });
    return section("tokens", "Tokens", list,
      el("p", { id: "question" }, `The paths of the logit of token ${targetText()} (${data.target_why}) at position ${data.position}, token ${tokenText(data.position)}.`));
  }

  // --- check -------------------------------------------------------------------------------
  function check() {
    const c = data.check, p = data.paths, l = c.logits;
    const body = el("dl", { class: "check" },
      el("dt", {}, "forward pass logit"), el("dd", { id: "forward-logit" }, num(p.forward_logit)),
      el("dt", {}, "Σ paths"), el("dd", { id: "paths-sum" }, num(p.sum)),
      el("dt", {}, "Σ paths − logit"), el("dd", { id: "target-error" }, num(c.target_error)),
      el("dt", {}, "every logit: max |Σ paths − logits|"), el("dd", { id: "max-abs-error" }, num(l.max_abs_error), ` (relative ${fmt(l.max_rel_error)}, max |logit| ${fmt(l.max_abs_logit)}, ${l.paths} paths)`));
    if (l.max_order !== null) body.append(el("dt", {}, "omitted orders, at most"), el("dd", {}, num(l.omitted_max_abs), " (added back in the check)"));
    return section("check", "Check", el("p", {}, "With the attention patterns and norm scales frozen, the paths sum to the model's logits."), body);
  }

  // --- paths: ranked list and tree -----------------------------------------------------------
  function ranked() {
    const scale = Math.max(0, ...data.paths.shown.map((p) => Math.abs(p.value)));
    const table = el("table", { class: "ranked", id: "ranked" },
      el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "path"), el("th", {}, "order"), el("th", {}, "contribution"), el("th", {}, ""), el("th", {}, "formula"))));
    const body = el("tbody");
    data.paths.shown.forEach((p, i) => body.append(el("tr", { "data-path": p.name },
      el("td", {}, String(i + 1)), el("td", { class: "name" }, p.name), el("td", {}, String(p.order)),
      el("td", {}, num(p.value)), el("td", {}, bar(p.value, scale)), el("td", { class: "formula" }, p.formula))));
    table.append(body);
    const rest = data.paths.rest;
    const note = el("p", { class: "rest", id: "paths-rest" }, `${rest.paths} other paths: `, num(rest.value, "rest-value"));
    return [table, rest.paths > 0 ? note : null];
  }
  function tree() {
    const scale = Math.max(...data.tree.children.map((c) => Math.abs(c.value)), Math.abs(data.tree.value));
    function node(n, depth) {
      const hasChildren = n.children.length > 0 || n.rest.paths > 0;
      const open = depth < 2;
      const toggle = el("button", { class: "toggle", "aria-expanded": String(open), "aria-label": "expand " + (n.name || "logit") }, open ? "▾" : "▸");
      if (!hasChildren) toggle.disabled = true;
      const row = el("div", { class: "row" }, toggle, el("span", { class: "label" }, n.label),
        num(n.value, "node-value"), bar(n.value, scale), el("span", { class: "count" }, n.paths === 1 ? "1 path" : n.paths + " paths"));
      const box = el("div", { class: "node", "data-name": n.name, role: "treeitem", "aria-expanded": String(open) }, row);
      if (n.path !== undefined) {
        const p = data.paths.shown[n.path];
        box.append(el("div", { class: "own" }, el("span", { class: "formula" }, p.formula), " = ", num(p.value, "path-value"), ` (path ${p.name}, rank ${n.path + 1})`));
      }
      const kids = el("div", { class: "children", role: "group" });
      n.children.forEach((c) => kids.append(node(c, depth + 1)));
      if (n.rest.paths > 0) kids.append(el("div", { class: "rest" }, `${n.rest.paths} more ${n.rest.paths === 1 ? "path" : "paths"}: `, num(n.rest.value, "rest-value")));
      kids.hidden = !open;
      box.append(kids);
      toggle.addEventListener("click", () => {
        const now = kids.hidden;
        kids.hidden = !now;
        toggle.textContent = now ? "▾" : "▸";
        toggle.setAttribute("aria-expanded", String(now));
        box.setAttribute("aria-expanded", String(now));
      });
      return box;
    }
    return el("div", { class: "tree", id: "tree", role: "tree" }, node(data.tree, 0));
  }
  function paths() {
    const p = data.paths;
    return section("paths", "Paths",
      el("p", {}, `Each path's contribution to the logit of ${targetText()} at position ${data.position}: the ${p.shown.length} largest of ${p.count}, as a tree of prefixes (source → first head → …; a node sums every path through it, the largest first) and ranked.`),
      tree(), el("h3", {}, "Ranked"), ...ranked());
  }

  // --- attention: heads, patterns, score terms -------------------------------------------------
  function attention() {
    const n = data.tokens.length;
    const labels = data.tokens.map((_, i) => i + " " + tokenText(i).slice(0, 12));
    const picker = el("div", { class: "heads", id: "head-picker" });
    const view = el("div", { class: "head-view", id: "head-view" });
    const detail = el("div", { class: "cell-detail", id: "cell-detail" });
    const buttons = [];
    function show(index, query) {
      const h = data.heads[index];
      buttons.forEach((b, i) => b.classList.toggle("current", i === index));
      const cells = new Map(h.cells.map((c) => [c.q + "," + c.k, c]));
      const chart = heatmap({
        rows: n, cols: n, cell: Math.max(12, Math.min(32, Math.floor(480 / n))), label: "attention pattern of " + h.name,
        value: (q, k) => (cells.has(q + "," + k) ? h.pattern[q][k] : null),
        colour: (v) => sequential(v, 1), rowLabels: labels, colLabels: labels,
        describe: (q, k) => `query ${q}, key ${k}`,
        onSelect: (q, k) => showCell(h, cells.get(q + "," + k)),
      });
      chart.id = "pattern";
      view.replaceChildren(el("h3", {}, `${h.name}: attention pattern (query rows, key columns)`),
        el("p", { class: "meta" }, `${h.terms.length} score terms; max |Σ terms − scores| = `, num(h.max_abs_error, "head-error")), chart);
      detail.replaceChildren(el("p", { class: "meta" }, "Select a cell to see the (query path, key path) terms of its score."));
      if (query !== undefined) {
        // The key the query attends to most.
        let best = null;
        for (const c of h.cells) if (c.q === query && (best === null || h.pattern[c.q][c.k] > h.pattern[best.q][best.k])) best = c;
        if (best) chart.select(best.q, best.k);
      }
    }
    function showCell(h, c) {
      const scale = Math.max(0, ...c.top.map(([, v]) => Math.abs(v)), Math.abs(c.rest.value));
      const table = el("table", { class: "terms", id: "terms" },
        el("thead", {}, el("tr", {}, el("th", {}, "term (query path, key path)"), el("th", {}, "contribution"), el("th", {}, ""))));
      const body = el("tbody");
      for (const [i, v] of c.top) body.append(el("tr", { "data-term": h.terms[i] }, el("td", { class: "name" }, h.terms[i]), el("td", {}, num(v)), el("td", {}, bar(v, scale))));
      if (c.rest.paths > 0) body.append(el("tr", { class: "rest" }, el("td", {}, `${c.rest.paths} other terms`), el("td", {}, num(c.rest.value, "rest-value")), el("td", {}, bar(c.rest.value, scale))));
      table.append(body);
      detail.replaceChildren(
        el("h3", {}, `${h.name}: query ${c.q} ${tokenText(c.q)} → key ${c.k} ${tokenText(c.k)}`),
        el("dl", { class: "check" },
          el("dt", {}, "attention"), el("dd", { id: "cell-pattern" }, num(h.pattern[c.q][c.k])),
          el("dt", {}, "score (before the masks and softmax)"), el("dd", { id: "cell-score" }, num(h.scores[c.q][c.k]))),
        table);
      detail.dataset.q = c.q;
      detail.dataset.k = c.k;
      detail.dataset.head = h.name;
    }
    data.heads.forEach((h, index) => {
      const b = el("button", { class: "head", "data-head": h.name, title: "show " + h.name }, h.name);
      b.addEventListener("click", () => show(index, data.position));
      buttons.push(b);
    });
    data.layers.forEach((count, layer) => {
      picker.append(el("div", { class: "layer" }, el("span", { class: "meta" }, `layer ${layer}`), ...buttons.filter((_, i) => data.heads[i].layer === layer)));
    });
    // The head the largest path ends in, else the first.
    let first = 0;
    const top = data.paths.shown.find((p) => p.order > 0);
    if (top) {
      const last = top.name.split("/").pop();
      const at = data.heads.findIndex((h) => h.name === last);
      if (at >= 0) first = at;
    }
    const body = section("attention", "Attention",
      el("p", {}, "Each head's attention pattern on these tokens. Selecting a cell shows the largest (query path, key path) terms of its score."),
      picker, el("div", { class: "side-by-side" }, view, detail));
    if (data.heads.length > 0) show(first, data.position);
    return body;
  }

  // --- circuits: composition and copying -------------------------------------------------------
  function circuits() {
    const s = data.stats;
    if (!s) return section("circuits", "Circuits", el("p", {}, "No statistics: " + (data.stats_missing || "not computed") + "."));
    const heads = data.heads.map((h) => h.name);
    const index = data.heads.map((h) => [h.layer, h.head]);
    const readout = el("p", { class: "readout", id: "circuit-readout" }, "Select a cell to read its value.");
    function read(text, v) {
      readout.replaceChildren(text + ": ", num(v));
    }
    const comp = el("div", { id: "comp" });
    const tabs = el("div", { class: "tabs" });
    function showComp(kind) {
      const m = s["comp_" + kind];
      let max = 0;
      index.forEach(([l1, h1]) => index.forEach(([l2, h2]) => { if (l1 < l2) max = Math.max(max, m[l1][h1][l2][h2]); }));
      const chart = heatmap({
        rows: heads.length, cols: heads.length, cell: Math.max(8, Math.min(24, Math.floor(480 / heads.length))),
        label: kind.toUpperCase() + "-composition",
        value: (r, c) => (index[r][0] < index[c][0] ? m[index[r][0]][index[r][1]][index[c][0]][index[c][1]] : null),
        colour: (v) => sequential(v, max), rowLabels: heads, colLabels: heads,
        describe: (r, c) => `${heads[r]} → ${heads[c]}`,
        onSelect: (r, c) => read(`${kind.toUpperCase()}-composition ${heads[r]} → ${heads[c]}`, m[index[r][0]][index[r][1]][index[c][0]][index[c][1]]),
      });
      chart.id = "comp-" + kind;
      tabs.querySelectorAll("button").forEach((b) => b.classList.toggle("current", b.dataset.kind === kind));
      comp.replaceChildren(chart, el("p", { class: "meta" }, `Rows: the earlier head (left), columns: the later one (right). Random baseline ${fmt(s.comp_baseline[kind])}.`));
    }
    for (const kind of ["q", "k", "v"]) {
      const b = el("button", { "data-kind": kind }, kind.toUpperCase() + "-composition");
      b.addEventListener("click", () => showComp(kind));
      tabs.append(b);
    }
    const copying = el("div", { class: "side-by-side" });
    for (const [field, title] of [["ov_copying", "OV copying"], ["qk_copying", "QK copying"]]) {
      const m = s[field];
      if (!m) {
        copying.append(el("div", {}, el("h3", {}, title), el("p", {}, "not defined: " + ((s.not_defined || {})[field] || ""))));
        continue;
      }
      const width = Math.max(...m.map((row) => row.length));
      const chart = heatmap({
        rows: m.length, cols: width, cell: 24, label: title,
        value: (l, h) => (h < m[l].length ? m[l][h] : null), colour: (v) => diverging(v, 1),
        rowLabels: m.map((_, l) => "L" + l), colLabels: Array.from({ length: width }, (_, h) => "H" + h),
        describe: (l, h) => `L${l}H${h}`, onSelect: (l, h) => read(`${title} of L${l}H${h}`, m[l][h]),
      });
      chart.id = field.replace("_", "-");
      copying.append(el("div", {}, el("h3", {}, title), chart));
    }
    const body = section("circuits", "Circuits",
      el("p", {}, `From the weights alone (${s.weight_processing}): composition scores between heads, and each head's copying score (Σ Re λ / Σ |λ| of its full OV and QK circuits).`),
      tabs, comp, el("h3", {}, "Copying"), copying, readout);
    showComp("k");
    return body;
  }

  root.append(header(), tokens(), check(), paths(), attention(), circuits());
})();
