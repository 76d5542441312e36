// The clarivis page: drop or pick images -> POST v1/predict (top-k bars; a multi-label model's
// label set above them), then v1/explain per image (Grad-CAM overlay), then the recent table (when the server exposes it). The monitor
// summary loads with the page and on "refresh" only: it aggregates the whole log.
// No libraries, no build. With an API key the server's login form has set an HttpOnly cookie,
// which fetch sends by itself (same origin): the key is never in this page's reach.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const MAX_EXPLAIN = 8; // overlays drawn per drop: each is a Grad-CAM pass on the server
let exposeRecent = false; // the server's --expose-recent, from v1/model

async function call(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    if (response.status === 401) detail += " (reload the page to sign in again)";
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

const pct = (p) => `${(100 * p).toFixed(1)}%`;

// A multi-label model's answer has `labels`, the classes whose probability reaches their own
// threshold (empty: none); a single-label one has none (null here).
function labelSetText(p) {
  if (!Array.isArray(p.labels)) return null;
  if (!p.labels.length) return "no label above its threshold";
  return "labels: " + p.labels.map((t) => `${t.label} ${pct(t.probability)}`).join(" · ");
}

function form(files) {
  const data = new FormData();
  for (const f of files) data.append("file", f, f.name);
  return data;
}

async function predict(files) {
  showError("");
  if (!files.length) return;
  let answer;
  try {
    answer = await (await call("v1/predict", { method: "POST", body: form(files) })).json();
  } catch (err) {
    showError(err.message);
    return;
  }
  const results = $("#results");
  results.replaceChildren();
  answer.predictions.forEach((p, i) => {
    const card = $("#result-template").content.firstElementChild.cloneNode(true);
    $(".thumb", card).src = URL.createObjectURL(files[i]);
    $(".name", card).textContent = `${p.filename} · ${p.width}×${p.height} · ${answer.latency_ms.toFixed(0)} ms`;
    const bars = $(".bars", card);
    const setText = labelSetText(p);
    const chosen = new Set((p.labels || []).map((t) => t.label));
    if (setText !== null) {
      const line = $(".labelset", card);
      line.textContent = setText;
      line.classList.toggle("empty", !p.labels.length);
      line.hidden = false;
      card.classList.add("multilabel");
    }
    for (const t of p.top_k) {
      const li = document.createElement("li");
      li.className = chosen.has(t.label) ? "bar chosen" : "bar";
      li.innerHTML = '<span class="label"></span><span class="track"><span class="fill"></span></span>' +
        '<span class="value"></span>';
      $(".label", li).textContent = t.label;
      $(".label", li).title = t.label;
      $(".fill", li).style.width = pct(t.probability);
      $(".value", li).textContent = pct(t.probability);
      bars.append(li);
    }
    if (setText === null && p.label !== p.top_k[0].label) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = `answered "${p.label}" (open-set score below the threshold)`;
      bars.append(li);
    }
    results.append(card);
  });
  loadRecent();
  // Overlays one at a time: the server explains one image per request, under a lock.
  const cards = results.querySelectorAll(".result");
  for (let i = 0; i < files.length && i < MAX_EXPLAIN; i++) await explain(files[i], cards[i]);
}

async function explain(file, card) {
  const status = $(".overlay-status", card);
  try {
    const blob = await (await call("v1/explain", { method: "POST", body: form([file]) })).blob();
    const img = $(".overlay", card);
    img.src = URL.createObjectURL(blob);
    img.hidden = false;
    status.textContent = "Grad-CAM: red = most evidence for the top label";
  } catch (err) {
    status.textContent = `no overlay (${err.message})`;
  }
}

async function loadModel() {
  try {
    const m = await (await call("v1/model")).json();
    const classes = m.task === "multilabel" ? `${m.num_classes} labels (multi-label)` : `${m.num_classes} classes`;
    $("#model-info").textContent = `${m.name} · ${m.architecture} · ${classes} · ` +
      `version ${m.model_version} · ${m.backend}`;
    $("#limits").textContent = `up to ${m.limits.max_files} images, ${m.limits.max_upload_mb} MB a request`;
    exposeRecent = Boolean(m.expose_recent);
    if (m.search) {
      $("#search-section").hidden = false;
      $("#search-size").textContent = `(${m.search.images} images)`;
      $("#search-text").hidden = $("#search-go").hidden = !m.search.text;
    }
    $("#recent-section").hidden = !exposeRecent;
  } catch (err) {
    $("#model-info").textContent = `model info unavailable (${err.message})`;
  }
}

async function loadRecent() {
  if (!exposeRecent) return;
  const body = $("#recent tbody");
  try {
    const { predictions } = await (await call("v1/recent?limit=20")).json();
    body.replaceChildren(...predictions.map((p) => {
      const tr = document.createElement("tr");
      const cells = [p.time.slice(0, 19).replace("T", " "), p.label || "(no label)", pct(p.confidence),
        `${p.latency_ms.toFixed(0)} ms`, `${p.width}×${p.height}`, p.sha256];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.append(td);
      }
      return tr;
    }));
  } catch (_) { /* the model info line already says why */ }
}

// A multi-label model's drift: each label's share of images, live and on validation.
function labelRatesText(drift) {
  if (!drift || drift.task !== "multilabel") return null;
  return drift.label_tests.map((t) => `${t.label} ${pct(t.live_rate)} / ${pct(t.baseline_rate)}`).join(", ");
}

async function loadMonitor() {
  const box = $("#monitor");
  try {
    const r = await (await call("v1/monitor?since=24h&review_limit=0")).json();
    const lat = r.latency_ms;
    const rows = [
      ["predictions (24 h)", `${r.total_predictions}`],
      ["latency p50 / p99", lat ? `${lat.p50.toFixed(1)} / ${lat.p99.toFixed(1)} ms` : "–"],
      ["unknown rate", r.unknown_rate == null ? "–" : pct(r.unknown_rate)],
      ["flags", r.flags.length ? r.flags.map((f) => f.message || f.check).join("; ") : "none"],
    ];
    const rates = labelRatesText(r.drift);
    if (rates) rows.splice(3, 0, ["label rates (live / validation)", rates]);
    const dl = document.createElement("dl");
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = v;
      if (k === "flags" && r.flags.length) dd.className = "flag";
      dl.append(dt, dd);
    }
    box.replaceChildren(dl);
    box.classList.remove("muted");
  } catch (err) {
    box.textContent = `monitor unavailable (${err.message})`;
  }
}

// Search (a server started with --index): the nearest indexed images to words (a CLIP index) or
// to one picked image, as a grid of thumbnails (v1/search/image/ID) with their cosine scores.
async function search(request) {
  showError("");
  const box = $("#search-results");
  try {
    const answer = await (await request()).json();
    const hits = answer.queries.length ? answer.queries[0].results : [];
    box.replaceChildren(...hits.map((h) => {
      const fig = document.createElement("figure");
      fig.className = "hit";
      const img = document.createElement("img");
      img.src = `v1/search/image/${h.id}`;
      img.alt = h.path;
      const cap = document.createElement("figcaption");
      cap.textContent = `${h.score.toFixed(3)} · ${h.path}`;
      fig.append(img, cap);
      return fig;
    }));
    if (!hits.length) box.textContent = "no match";
  } catch (err) {
    showError(err.message);
  }
}

$("#search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("#search-text").value.trim();
  if (text) search(() => call(`v1/search?k=12&text=${encodeURIComponent(text)}`));
});
$("#search-file").addEventListener("change", (e) => {
  const files = [...e.target.files];
  if (files.length) search(() => call("v1/search?k=12", { method: "POST", body: form(files) }));
});

const drop = $("#drop");
$("#file-input").addEventListener("change", (e) => predict([...e.target.files]));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  predict([...e.dataTransfer.files].filter((f) => f.type.startsWith("image/") || !f.type));
});

$("#monitor-refresh").addEventListener("click", loadMonitor);

loadModel().then(loadRecent);
loadMonitor();
