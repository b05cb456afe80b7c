// The runs page: the saved run reports (GET /api/runs, /api/runs/{id}); the summary is
// the very text `mediabind ingest` prints at the end of a run.
"use strict";

const $ = (id) => document.getElementById(id);

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  return td;
}

async function getJson(url) {
  const response = await fetch(url);
  const data = await response.json();
  if (!response.ok) throw new Error(data.detail || `error ${response.status}`);
  return data;
}

async function showRun(runId) {
  const r = await getJson(`/api/runs/${encodeURIComponent(runId)}`);
  $("run").hidden = false;
  $("run-title").textContent = `Run ${r.run_id}`;
  $("run-summary").textContent = r.summary;
  $("run-stages").tBodies[0].replaceChildren(...Object.entries(r.stage_seconds).map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.append(cell(k), cell(v.toFixed(2)));
    return tr;
  }));
  $("run-rejected").tBodies[0].replaceChildren(...r.rejected.map((x) => {
    const tr = document.createElement("tr");
    tr.append(cell(x.stage), cell(x.uri), cell(x.reason));
    return tr;
  }));
  history.replaceState(null, "", `/runs?run=${encodeURIComponent(runId)}`);
}

// Runs handed to this page's process (`mediabind ingest` while the page holds the store).
function progressLine(p) {
  if (!p) return "starting…";
  const rate = p.elapsed_s > 0 ? (p.items_done / p.elapsed_s).toFixed(1) : "0";
  return `${p.items_done}/${p.items_total ?? "?"} items, ${p.segments_done} segments, ${rate} items/s`;
}

async function pollActive() {
  try {
    const active = await getJson("/api/runs/active");
    $("active").hidden = active.length === 0;
    $("active-runs").replaceChildren(...active.map((r) => {
      const li = document.createElement("li");
      li.textContent = `${r.run_id} ${r.source}: ${progressLine(r.progress)}`;
      return li;
    }));
  } catch (err) { /* the list below says what is wrong */ }
  setTimeout(pollActive, 2000);
}

(async () => {
  pollActive();
  try {
    const runs = await getJson("/api/runs");
    $("status").textContent = runs.length ? `${runs.length} runs, newest first` : "No runs yet.";
    $("runs").tBodies[0].replaceChildren(...runs.map((r) => {
      const tr = document.createElement("tr");
      const link = document.createElement("a");
      link.href = `/runs?run=${encodeURIComponent(r.run_id)}`;
      link.textContent = r.run_id;
      link.onclick = (e) => { e.preventDefault(); showRun(r.run_id); };
      const first = document.createElement("td");
      first.append(link);
      tr.append(first, cell(r.source), cell((r.started || "").slice(0, 19)), cell(r.items_seen),
                cell(r.items_completed), cell(r.items_rejected), cell(r.items_unchanged),
                cell(r.points_written), cell((r.wall_seconds ?? 0).toFixed(1)),
                cell(r.error ? `failed: ${r.error}` : "ok"));
      return tr;
    }));
    const wanted = new URLSearchParams(location.search).get("run");
    if (wanted) await showRun(wanted);
  } catch (err) {
    $("status").textContent = err.message;
    $("status").classList.add("error");
  }
})();
