// The search page: a client of /api (see web/app.py). No build step, no framework.
// The query lives in the URL (?text=..&like=..&kind=..&offset=..), so a search can be
// shared; uploaded files cannot travel in a URL and stay with this page only.
"use strict";

const PAGE_SIZE = 12;
const $ = (id) => document.getElementById(id);
const uploads = []; // {file, negative, keyword}

// The query keyword a file most likely is; the server detects it again from the bytes.
function guessKeyword(file) {
  const name = file.name.toLowerCase();
  for (const sensor of ["depth", "thermal", "imu"]) {
    if (name.includes(`.${sensor}.`)) return sensor;
  }
  const type = (file.type || "").split("/")[0];
  if (["image", "audio", "video", "text"].includes(type)) return type;
  if (/\.(csv|parquet|npy)$/.test(name)) return "imu";
  return "image";
}

function readState() {
  const p = new URLSearchParams(location.search);
  return {
    text: p.get("text") || "", weight: p.get("w") || "1", like: p.getAll("like"),
    negative: p.get("neg") || "", negativeWeight: p.get("nw") || "",
    kind: p.get("kind") || "", modality: p.get("modality") || "",
    archive: p.get("archive") || "", from: p.get("from") || "", to: p.get("to") || "",
    offset: parseInt(p.get("offset") || "0", 10) || 0,
  };
}

function formState(offset) {
  return {
    text: $("q").value.trim(), weight: $("q-weight").value || "1", like: likes.slice(),
    negative: $("negative").value.trim(), negativeWeight: $("negative-weight").value,
    kind: $("kind").value, modality: $("modality").value, archive: $("archive").value,
    from: $("from").value, to: $("to").value, offset: offset,
  };
}

function writeUrl(state) {
  const p = new URLSearchParams();
  if (state.text) p.set("text", state.text);
  if (state.weight && state.weight !== "1") p.set("w", state.weight);
  state.like.forEach((id) => p.append("like", id));
  const keys = { neg: "negative", nw: "negativeWeight", kind: "kind", modality: "modality",
                 archive: "archive", from: "from", to: "to" };
  for (const [key, field] of Object.entries(keys)) if (state[field]) p.set(key, state[field]);
  if (state.offset) p.set("offset", String(state.offset));
  const url = `${location.pathname}?${p}`;
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
}

let likes = [];

function fillForm(state) {
  $("q").value = state.text; $("q-weight").value = state.weight;
  $("negative").value = state.negative; $("negative-weight").value = state.negativeWeight;
  for (const id of ["kind", "modality", "archive", "from", "to"]) $(id).value = state[id];
  likes = state.like.slice();
  drawChips();
}

function drawChips() {
  const chips = $("chips");
  chips.replaceChildren();
  likes.forEach((id, i) => chips.append(chip(`like ${id.slice(0, 8)}`, "vector", () => {
    likes.splice(i, 1); drawChips();
  })));
  uploads.forEach((u, i) => {
    const c = chip(`${u.negative ? "not " : ""}${u.keyword}: ${u.file.name}`, u.keyword, () => {
      uploads.splice(i, 1); drawChips();
    }, u.negative);
    const flip = document.createElement("button");
    flip.type = "button"; flip.textContent = u.negative ? "+" : "−";
    flip.title = u.negative ? "use as a query input" : "use as a negative";
    flip.onclick = () => { u.negative = !u.negative; drawChips(); };
    c.prepend(flip);
    chips.append(c);
  });
}

const weights = {}; // keyword -> weight, shared by the inputs of one keyword

function chip(label, keyword, remove, negative) {
  const c = document.createElement("span");
  c.className = "chip" + (negative ? " negative" : "");
  c.append(label);
  if (!negative) {
    const w = document.createElement("input");
    w.type = "number"; w.step = "0.1"; w.min = "0"; w.value = weights[keyword] || "1";
    w.title = `weight of every ${keyword} input`;
    w.onchange = () => { weights[keyword] = w.value; };
    c.append(w);
  }
  const x = document.createElement("button");
  x.type = "button"; x.textContent = "✕"; x.onclick = remove;
  c.append(x);
  return c;
}

function searchRequest(state) {
  const request = { text: state.text ? [state.text] : [], like: state.like,
                    negative_text: state.negative ? [state.negative] : [],
                    weights: {}, limit: PAGE_SIZE, offset: state.offset, moments: 3 };
  const all = { ...weights, text: state.weight };
  const used = new Set([...(state.text ? ["text"] : []), ...(state.like.length ? ["vector"] : []),
                        ...uploads.filter((u) => !u.negative).map((u) => u.keyword)]);
  for (const k of used) if (all[k] !== undefined && all[k] !== "") request.weights[k] = parseFloat(all[k]);
  if (state.negativeWeight) request.negative_weight = parseFloat(state.negativeWeight);
  if (state.kind) request.kinds = [state.kind];
  if (state.modality) request.modalities = [state.modality];
  if (state.archive) request.archive = state.archive;
  if (state.from) request.from_s = parseFloat(state.from);
  if (state.to) request.to_s = parseFloat(state.to);
  return request;
}

async function runSearch(state) {
  const request = searchRequest(state);
  const empty = !request.text.length && !request.like.length && !uploads.some((u) => !u.negative);
  if (empty) { $("status").textContent = "Type a query, drop a file, or pick “more like this”."; return; }
  const body = new FormData();
  body.append("request", JSON.stringify(request));
  uploads.forEach((u) => body.append(u.negative ? "negative_file" : "file", u.file, u.file.name));
  $("status").textContent = "Searching…";
  $("status").classList.remove("error");
  const started = performance.now();
  let response, data;
  try {
    response = await fetch("/api/search", { method: "POST", body });
    data = await response.json();
  } catch (err) {
    $("status").textContent = `The server did not answer with results (${err.message}).`;
    $("status").classList.add("error");
    return;
  }
  if (!response.ok) {
    $("status").textContent = data.detail || `error ${response.status}`;
    $("status").classList.add("error");
    $("results").replaceChildren();
    return;
  }
  const ms = Math.round(performance.now() - started);
  $("status").textContent = data.hits.length
    ? `Results ${state.offset + 1}–${state.offset + data.hits.length} (${ms} ms)` : "No results.";
  $("results").replaceChildren(...data.hits.map(card));
  $("prev").disabled = state.offset === 0;
  $("next").disabled = !data.more;
  $("page").textContent = `page ${Math.floor(state.offset / PAGE_SIZE) + 1}`;
}

const PLAYABLE = new Set(["video", "audio"]);

function card(hit) {
  const el = document.createElement("article");
  el.className = "hit";
  el.dataset.itemId = hit.item_id;
  el.dataset.startS = hit.start_s ?? "";
  if (hit.kind !== "text") {
    const img = document.createElement("img");
    img.className = "thumb"; img.loading = "lazy"; img.alt = `${hit.kind} at ${hit.label}`;
    img.src = hit.thumb_url;
    img.onerror = () => img.remove();
    el.append(img);
  }
  const body = document.createElement("div");
  body.className = "body";
  const name = document.createElement("div");
  name.className = "name"; name.textContent = hit.member || hit.source_uri;
  name.title = hit.source_uris.join("\n");
  const meta = document.createElement("div");
  meta.className = "muted";
  meta.textContent = `#${hit.rank} · ${hit.kind} · ${hit.modality} · ${hit.label} · ${hit.score.toFixed(3)}`;
  body.append(name, meta);
  if (hit.text) {
    const s = document.createElement("div");
    s.className = "snippet"; s.textContent = hit.text.slice(0, 240);
    body.append(s);
  }
  if (hit.moments.length > 1) body.append(momentsRow(hit));
  const actions = document.createElement("div");
  actions.className = "actions";
  if (PLAYABLE.has(hit.kind)) actions.append(button("Play", "play", () => play(hit, hit)));
  actions.append(button("More like this", "like", () => moreLike(hit.point_id)));
  const open = document.createElement("a");
  open.href = `${hit.media_url}?original=1`; open.target = "_blank"; open.textContent = "Open";
  actions.append(open);
  body.append(actions);
  el.append(body);
  return el;
}

function momentsRow(hit) {
  const row = document.createElement("div");
  row.className = "moments";
  for (const m of hit.moments) {
    const b = document.createElement("button");
    b.type = "button"; b.className = "moment"; b.title = `${m.modality} ${m.label} (${m.score.toFixed(3)})`;
    if (hit.kind !== "text") {
      const img = document.createElement("img");
      img.src = m.thumb_url; img.alt = m.label; img.loading = "lazy";
      img.onerror = () => img.remove();
      b.append(img);
    }
    b.append(`${m.modality} ${m.label}`);
    b.onclick = () => (PLAYABLE.has(hit.kind) ? play(hit, m) : moreLike(m.point_id));
    row.append(b);
  }
  return row;
}

function button(label, cls, onclick) {
  const b = document.createElement("button");
  b.type = "button"; b.className = cls; b.textContent = label; b.onclick = onclick;
  return b;
}

function play(hit, moment) {
  const video = hit.kind === "video";
  const player = video ? $("player-video") : $("player-audio");
  const other = video ? $("player-audio") : $("player-video");
  other.pause(); other.hidden = true; other.removeAttribute("src");
  player.hidden = false;
  $("player-title").textContent = `${hit.member || hit.source_uri} from ${moment.label}`;
  const start = moment.start_s || 0;
  player.onloadedmetadata = () => { player.currentTime = start; player.play().catch(() => {}); };
  player.src = moment.media_url;
  $("player").showModal();
}

function moreLike(pointId) {
  uploads.length = 0;
  fillForm({ ...formState(0), text: "", like: [pointId] });
  const state = formState(0);
  writeUrl(state);
  runSearch(state);
}

function addFiles(files, negative) {
  for (const file of files) uploads.push({ file, negative, keyword: guessKeyword(file) });
  drawChips();
}

// What the vector index covers: exact search until the store builds it (search/store.py).
function indexLine(index) {
  if (!index) return "indexed by the server";
  if (!index.built_at) return "exact search (no index built yet)";
  const when = index.built_at.slice(0, 16).replace("T", " ");
  return `index built ${when} UTC over ${index.indexed} of ${index.points} points`;
}

async function loadInfo() {
  const response = await fetch("/api/info");
  const info = await response.json();
  if (!response.ok) {
    $("status").textContent = info.detail || `error ${response.status}`;
    $("status").classList.add("error");
    return;
  }
  $("collection").textContent = `${info.alias} → ${info.physical} · ${info.model_id} · ` +
    `${info.points} points · ${indexLine(info.index)}`;
  const fill = (id, values) => {
    for (const v of Object.keys(values)) {
      const o = document.createElement("option");
      o.value = v; o.textContent = `${v} (${values[v]})`;
      $(id).append(o);
    }
  };
  fill("kind", info.kinds); fill("modality", info.modalities); fill("archive", info.archives);
}

function wire() {
  $("search-form").onsubmit = (e) => {
    e.preventDefault();
    const state = formState(0);
    writeUrl(state);
    runSearch(state);
  };
  $("files").onchange = (e) => { addFiles(e.target.files, false); e.target.value = ""; };
  const drop = $("drop");
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("dragging"); };
  drop.ondragleave = () => drop.classList.remove("dragging");
  drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("dragging"); addFiles(e.dataTransfer.files, false); };
  const page = (delta) => {
    const state = formState(Math.max(0, readState().offset + delta));
    writeUrl(state);
    runSearch(state);
  };
  $("prev").onclick = () => page(-PAGE_SIZE);
  $("next").onclick = () => page(PAGE_SIZE);
  $("player-close").onclick = () => {
    for (const id of ["player-video", "player-audio"]) $(id).pause();
    $("player").close();
  };
  window.onpopstate = () => { const s = readState(); fillForm(s); runSearch(s); };
}

(async () => {
  wire();
  await loadInfo();
  const state = readState();
  fillForm(state);
  if (state.text || state.like.length) runSearch(state);
})();
