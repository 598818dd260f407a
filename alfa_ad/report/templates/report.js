(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("gallery-data").textContent);
  const items = data.items, prompts = data.prompts;
  const $ = (id) => document.getElementById(id);
  let page = 0;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function num(id) {
    const v = $(id).value.trim();
    return v === "" ? null : Number(v);
  }
  function fmt(v, d) { return v === null || v === undefined ? "—" : Number(v).toFixed(d); }

  function selected() {
    const cls = $("f-class").value, type = $("f-type").value, dec = $("f-decision").value;
    const outcome = $("f-outcome").value, lo = num("f-min"), hi = num("f-max");
    const text = $("f-text").value.trim().toLowerCase();
    const out = items.filter((it) =>
      (!cls || it.cls === cls) && (!type || (type === "-" ? it.type === "" : it.type === type)) &&
      (!dec || it.predicted === dec) &&
      (!outcome || (outcome === "wrong" ? (it.outcome === "FN" || it.outcome === "FP") :
        outcome === "right" ? (it.outcome === "TP" || it.outcome === "TN") : it.outcome === outcome)) &&
      (lo === null || (it.score !== null && it.score >= lo)) && (hi === null || (it.score !== null && it.score <= hi)) &&
      (!text || it.name.toLowerCase().includes(text) || it.key.toLowerCase().includes(text)));
    const sort = $("sort").value;
    const score = (it) => (it.score === null ? -Infinity : it.score);
    if (sort === "rank") out.sort((a, b) => a.rank - b.rank);
    else if (sort === "score-desc") out.sort((a, b) => score(b) - score(a) || a.rank - b.rank);
    else if (sort === "score-asc") out.sort((a, b) => score(a) - score(b) || a.rank - b.rank);
    else out.sort((a, b) => (a.cls + "/" + a.type + "/" + a.name).localeCompare(b.cls + "/" + b.type + "/" + b.name));
    return out;
  }

  function list(tag, summary, entries) {  // filled when first opened: thousands of cards stay light
    const details = el("details");
    details.appendChild(el("summary", {}, summary));
    details.addEventListener("toggle", () => {
      if (!details.open || details.childElementCount > 1) return;
      const ul = el(tag);
      for (const e of entries()) ul.appendChild(el("li", {}, e));
      details.appendChild(ul);
    });
    return details;
  }

  function card(it) {
    const c = el("div", { "class": "card " + it.outcome, "data-key": it.key, "data-score": it.score === null ? "" : String(it.score) });
    if (it.img) {
      const a = el("a", { href: it.img, target: "_blank" });
      a.appendChild(el("img", { src: it.thumb || it.img, loading: "lazy", alt: it.key }));
      c.appendChild(a);
    }
    c.appendChild(el("div", { "class": "title" }, it.name));
    const line = el("div", {}, it.cls + " / " + (it.type || "(unlabelled)") + " · score " + fmt(it.score, 4) + " ");
    if (it.outcome) line.appendChild(el("span", { "class": "badge " + it.outcome }, it.outcome));
    if (it.decision) line.appendChild(el("span", { "class": "badge" }, "decision: " + it.decision));
    c.appendChild(line);
    if (it.area !== null) c.appendChild(el("div", {}, "predicted defect area: " + fmt(100 * it.area, 2) + "%"));
    if (it.mask) { const m = el("div"); m.appendChild(el("a", { href: it.mask, target: "_blank" }, "predicted mask")); c.appendChild(m); }
    const k = it.kept;
    if (k && k[0] !== null && k[0] !== undefined)
      c.appendChild(el("div", {}, "prompts kept: " + k[0] + "/" + k[1] + " normal, " + k[2] + "/" + k[3] + " abnormal"));
    if (it.kp) {
      const table = prompts[it.cls] || [];
      c.appendChild(list("ul", "kept normal prompts (" + it.kp[0].length + ")", () => it.kp[0].map((i) => table[i])));
      c.appendChild(list("ul", "kept abnormal prompts (" + it.kp[1].length + ")", () => it.kp[1].map((i) => table[i])));
    }
    if (it.desc && it.desc.length)
      c.appendChild(list("ol", "top descriptors", () => it.desc.map((d) =>
        d[0] + (d[1] ? " [" + d[1] + "]" : "") + (d[2] === null ? "" : " (" + fmt(d[2], 3) + ")"))));
    if (it.vlm) c.appendChild(el("div", { "class": "vlm" }, it.vlm));
    c.appendChild(el("div", { "class": "note" }, it.path));
    return c;
  }

  function render() {
    const rows = selected(), size = Number($("page-size").value);
    const pages = Math.max(1, Math.ceil(rows.length / size));
    page = Math.min(page, pages - 1);
    const start = page * size, shown = rows.slice(start, start + size);
    const box = $("cards");
    box.replaceChildren(...shown.map(card));
    $("count").textContent = rows.length ? "showing " + (start + 1) + "–" + (start + shown.length) + " of " +
      rows.length + (rows.length < items.length ? " (filtered from " + items.length + ")" : "") : "no image matches";
    $("page").textContent = "page " + (page + 1) + " of " + pages;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
    $("pager").hidden = pages === 1;
  }

  for (const id of ["f-class", "f-type", "f-decision", "f-outcome", "f-min", "f-max", "f-text", "sort", "page-size"]) {
    $(id).addEventListener(id.startsWith("f-min") || id.startsWith("f-max") || id === "f-text" ? "input" : "change",
      () => { page = 0; render(); });
  }
  $("prev").addEventListener("click", () => { page -= 1; render(); window.scrollTo(0, $("gallery").offsetTop); });
  $("next").addEventListener("click", () => { page += 1; render(); window.scrollTo(0, $("gallery").offsetTop); });
  render();
})();
