// Worklist: completed studies, most urgent first, with filters; pages by keyset cursor (the server's
// `next_cursor`; a stack of cursors for "Previous"); refreshed by polling, without reloading the page.
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
  const filters = document.getElementById("filters");
  const csvLink = document.getElementById("csv-link");
  let cursors = [null];  // cursors[i]: the `after` of page i (null: first page)
  let nextCursor = null;

  function query() {
    const params = new URLSearchParams();
    for (const [key, value] of new FormData(filters).entries()) {
      if (String(value).trim()) params.set(key, String(value).trim());
    }
    return params;
  }

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
      const td = cell("No studies match.", "muted");
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
      if (s.not_frontal) {
        const flag = document.createElement("div");
        flag.className = "flag not-frontal";
        flag.textContent = "not a frontal chest X-ray: findings unreliable";
        flag.title = s.not_frontal_reason || "";
        findings.appendChild(flag);
      }
      if (s.positives.length === 0) {
        findings.append("none above threshold");
        findings.classList.add("muted");
      }
      for (const p of s.positives) {
        const tag = document.createElement("span");
        tag.className = s.not_frontal ? "tag unreliable" : "tag";
        tag.textContent = `${p.display_name} ${p.probability.toFixed(2)}`;
        findings.appendChild(tag);
      }
      const model = cell(s.model_version || "—", "small");
      if (s.model_trained === false) {
        model.textContent += " (untrained)";
        model.classList.add("message", "error");
      }
      tr.append(
        cell(String((cursors.length - 1) * limit + i + 1)),
        who,
        findings,
        cell(s.urgency === null ? "—" : s.urgency.toFixed(2)),
        cell(formatTime(s.due_at)),
        model,
      );
      rows.appendChild(tr);
    });
    const first = (cursors.length - 1) * limit;
    info.textContent = data.total ? `${first + 1}–${first + data.studies.length} of ${data.total}` : "";
    nextCursor = data.next_cursor;
    prev.disabled = cursors.length === 1;
    next.disabled = !nextCursor;
  }

  async function load() {
    try {
      const params = query();
      csvLink.href = `${root.dataset.csvUrl}?${params}`;
      params.set("limit", String(limit));
      const after = cursors[cursors.length - 1];
      if (after) params.set("after", after);
      const response = await fetch(`${root.dataset.url}?${params}`, { headers: { Accept: "application/json" } });
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      errorBox.textContent = "";
      render(data);
    } catch (err) {
      errorBox.textContent = `Could not refresh the worklist (${err.message}); retrying.`;
    }
  }

  prev.addEventListener("click", () => { if (cursors.length > 1) cursors.pop(); load(); });
  next.addEventListener("click", () => { if (nextCursor) { cursors.push(nextCursor); load(); } });
  let typing = null;
  const restart = () => { cursors = [null]; load(); };
  filters.addEventListener("change", restart);
  filters.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(restart, 300); });
  filters.addEventListener("submit", (event) => { event.preventDefault(); restart(); });
  load();
  setInterval(() => { if (!document.hidden) load(); }, POLL_MS);
})();
