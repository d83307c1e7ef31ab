// Shared by the upload and batch pages: render a batch's progress, its studies grouped (DICOM by
// patient and study; PNG/JPEG by file name), as DOM nodes (text only, never HTML from the server).
"use strict";
window.BatchView = (function () {
  function text(tag, value, className) {
    const node = document.createElement(tag);
    node.textContent = value;
    if (className) node.className = className;
    return node;
  }

  function statusBadge(s) {
    const label = s.reviewed_at ? "reviewed" : s.status;
    return text("span", label, `status status-${label}`);
  }

  function groupKey(s) {
    if (s.format === "dicom" && (s.patient_id || s.study_instance_uid || s.accession_number)) {
      return `Patient ${s.patient_id || "unknown"}${s.patient_name ? ` (${s.patient_name})` : ""}` +
        ` · Study ${s.study_instance_uid || "unknown"}${s.accession_number ? ` · Accession ${s.accession_number}` : ""}`;
    }
    return "Images by file name";
  }

  function studyRow(s) {
    const tr = document.createElement("tr");
    tr.dataset.studyId = s.id;
    const idCell = document.createElement("td");
    const link = text("a", String(s.id));
    link.href = s.page_url;
    idCell.appendChild(link);
    const statusTd = document.createElement("td");
    statusTd.appendChild(statusBadge(s));
    if (s.error) statusTd.appendChild(text("div", s.error, "message error small"));
    tr.append(idCell, text("td", s.filename), statusTd);
    return tr;
  }

  function render(batch, nodes) {
    const c = batch.counts;
    nodes.progress.max = Math.max(c.total, 1);
    nodes.progress.value = c.done + c.failed;
    nodes.progressText.textContent = `${c.done + c.failed} of ${c.total}`;
    nodes.counts.textContent = "";
    for (const name of ["queued", "processing", "done", "failed"]) nodes.counts.appendChild(text("span", `${name}: ${c[name]}`));
    const groups = new Map();
    for (const s of batch.studies) {
      const key = groupKey(s);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(s);
    }
    const keys = Array.from(groups.keys()).sort((a, b) =>
      (a === "Images by file name") - (b === "Images by file name") || a.localeCompare(b));
    nodes.groups.textContent = "";
    for (const key of keys) {
      const studies = groups.get(key);
      if (key === "Images by file name") studies.sort((a, b) => a.filename.localeCompare(b.filename));
      nodes.groups.appendChild(text("h3", key, "group-title"));
      const table = document.createElement("table");
      table.className = "table";
      const head = document.createElement("tr");
      head.append(text("th", "Study"), text("th", "File"), text("th", "Status"));
      const thead = document.createElement("thead");
      thead.appendChild(head);
      const body = document.createElement("tbody");
      for (const s of studies) body.appendChild(studyRow(s));
      table.append(thead, body);
      nodes.groups.appendChild(table);
    }
    return batch.complete;
  }

  return { render, text };
})();
