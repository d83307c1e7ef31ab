// Worklist: completed studies, most urgent first; refreshed by polling, without reloading the page.
"use strict";
(function () {
  const POLL_MS = 5000;
  const root = document.getElementById("worklist");
  const rows = document.getElementById("worklist-rows");
  const prev = document.getElementById("prev");
  const next = document.getElementById("next");
  const info = document.getElementById("page-info");
  const errorBox = document.getElementById("worklist-error");
  const limit = Number(root.dataset.limit) || 50;
  let offset = 0;

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function formatTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  }

  function render(data) {
    rows.textContent = "";
    if (data.studies.length === 0) {
      const tr = document.createElement("tr");
      const td = cell("No completed studies yet.", "muted");
      td.colSpan = 6;
      tr.appendChild(td);
      rows.appendChild(tr);
    }
    data.studies.forEach((s, i) => {
      const tr = document.createElement("tr");
      tr.className = "clickable";
      tr.addEventListener("click", () => { window.location.href = s.page_url; });
      const who = document.createElement("td");
      const link = document.createElement("a");
      link.href = s.page_url;
      link.textContent = s.patient_name || s.patient_id || s.filename;
      who.appendChild(link);
      if (s.patient_name || s.patient_id) {
        const small = document.createElement("div");
        small.className = "muted small";
        small.textContent = s.filename;
        who.appendChild(small);
      }
      const findings = document.createElement("td");
      if (s.positives.length === 0) {
        findings.textContent = "none above threshold";
        findings.className = "muted";
      }
      for (const p of s.positives) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = `${p.display_name} ${p.probability.toFixed(2)}`;
        findings.appendChild(tag);
      }
      const model = cell(s.model_version || "—", "small");
      if (s.model_trained === false) {
        model.textContent += " (untrained)";
        model.classList.add("message", "error");
      }
      tr.append(
        cell(String(data.offset + i + 1)),
        who,
        findings,
        cell(s.urgency === null ? "—" : s.urgency.toFixed(2)),
        cell(formatTime(s.due_at)),
        model,
      );
      rows.appendChild(tr);
    });
    const last = Math.min(data.offset + data.studies.length, data.total);
    info.textContent = data.total ? `${data.offset + 1}–${last} of ${data.total}` : "";
    prev.disabled = data.offset === 0;
    next.disabled = data.offset + data.limit >= data.total;
  }

  async function load() {
    try {
      const response = await fetch(`${root.dataset.url}?limit=${limit}&offset=${offset}`,
        { headers: { Accept: "application/json" } });
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      errorBox.textContent = "";
      render(data);
    } catch (err) {
      errorBox.textContent = `Could not refresh the worklist (${err.message}); retrying.`;
    }
  }

  prev.addEventListener("click", () => { offset = Math.max(0, offset - limit); load(); });
  next.addEventListener("click", () => { offset += limit; load(); });
  load();
  setInterval(() => { if (!document.hidden) load(); }, POLL_MS);
})();
