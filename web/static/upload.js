// Upload page: pick many files or folders (or drop them), send them in chunks, then poll the batch.
"use strict";
(function () {
  const CHUNK_FILES = 40;
  const CHUNK_BYTES = 200 * 1024 * 1024;
  const POLL_MS = 2000;

  const form = document.getElementById("upload-form");
  const dropzone = document.getElementById("dropzone");
  const fileInput = document.getElementById("file-input");
  const folderInput = document.getElementById("folder-input");
  const uploadButton = document.getElementById("upload-button");
  const clearButton = document.getElementById("clear-button");
  const selection = document.getElementById("selection");
  const labelInput = document.getElementById("batch-label");
  const progress = document.getElementById("progress");
  const el = (id) => document.getElementById(id);

  let files = [];
  let batchId = null;
  let polling = null;
  let sending = false;

  function isHidden(file) {
    const path = file.webkitRelativePath || file.fullPath || file.name;
    return path.split("/").some((part) => part.startsWith(".") || part === "__MACOSX");
  }

  function addFiles(list) {
    for (const file of list) {
      if (!isHidden(file)) files.push(file);
    }
    renderSelection();
  }

  function renderSelection() {
    const bytes = files.reduce((sum, f) => sum + f.size, 0);
    selection.textContent = files.length
      ? `${files.length} file${files.length === 1 ? "" : "s"} selected (${(bytes / 1048576).toFixed(1)} MiB).`
      : "No files selected.";
    uploadButton.disabled = sending || files.length === 0;
    clearButton.disabled = sending || files.length === 0;
  }

  // Dropped folders: walk them with the File System entry API (webkitGetAsEntry).
  function readAllEntries(reader) {
    return new Promise((resolve, reject) => {
      const all = [];
      const next = () => reader.readEntries((batch) => {
        if (batch.length === 0) { resolve(all); return; }
        all.push(...batch);
        next();  // readEntries returns at most ~100 entries per call
      }, reject);
      next();
    });
  }

  async function walk(entry, out) {
    if (entry.name.startsWith(".") || entry.name === "__MACOSX") return;
    if (entry.isFile) {
      out.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
    } else if (entry.isDirectory) {
      for (const child of await readAllEntries(entry.createReader())) await walk(child, out);
    }
  }

  async function filesFromDrop(dataTransfer) {
    const entries = [];
    for (const item of dataTransfer.items || []) {
      const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      if (entry) entries.push(entry);
    }
    if (entries.length === 0) return Array.from(dataTransfer.files || []);
    const out = [];
    for (const entry of entries) await walk(entry, out);
    return out;
  }

  ["dragenter", "dragover"].forEach((type) => dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => dropzone.addEventListener(type, () => dropzone.classList.remove("over")));
  dropzone.addEventListener("drop", async (event) => {
    event.preventDefault();
    if (sending) return;
    try {
      addFiles(await filesFromDrop(event.dataTransfer));
    } catch (err) {
      selection.textContent = `Could not read the dropped folder: ${err}`;
    }
  });
  fileInput.addEventListener("change", () => { addFiles(fileInput.files); fileInput.value = ""; });
  folderInput.addEventListener("change", () => { addFiles(folderInput.files); folderInput.value = ""; });
  clearButton.addEventListener("click", () => { files = []; renderSelection(); });

  function chunks(list) {
    const out = [];
    let current = [];
    let bytes = 0;
    for (const file of list) {
      if (current.length && (current.length >= CHUNK_FILES || bytes + file.size > CHUNK_BYTES)) {
        out.push(current);
        current = [];
        bytes = 0;
      }
      current.push(file);
      bytes += file.size;
    }
    if (current.length) out.push(current);
    return out;
  }

  function send(chunk, onProgress) {
    const body = new FormData();
    for (const file of chunk) body.append("files", file, file.name);
    if (labelInput.value.trim()) body.append("label", labelInput.value.trim());
    if (el("rerun").checked) body.append("rerun", "1");
    const url = batchId === null ? form.dataset.createUrl : `${form.dataset.batchUrlPrefix}${batchId}/files`;
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.responseType = "json";
      xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded));
      xhr.addEventListener("load", () => resolve({ status: xhr.status, body: xhr.response || {} }));
      xhr.addEventListener("error", () => resolve({ status: 0, body: { error: "The connection to the server failed." } }));
      xhr.send(body);
    });
  }

  // One row per file with its own upload progress (from the XHR's loaded bytes: the files of a
  // chunk are sent in order) and, once the server answered, what became of it.
  function fileRows(list) {
    const body = el("file-rows");
    body.textContent = "";
    return list.map((file) => {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = file.webkitRelativePath || file.name;
      const meter = document.createElement("progress");
      meter.max = Math.max(file.size, 1);
      meter.value = 0;
      const meterCell = document.createElement("td");
      meterCell.appendChild(meter);
      const state = document.createElement("td");
      state.textContent = "waiting";
      state.className = "file-state";
      tr.append(name, meterCell, state);
      body.appendChild(tr);
      return { file, meter, state };
    });
  }

  function showFileProgress(rows, loaded) {
    let before = 0;
    for (const row of rows) {
      row.meter.value = Math.max(0, Math.min(row.file.size, loaded - before));
      if (row.meter.value > 0 && row.state.textContent === "waiting") row.state.textContent = "sending";
      before += row.file.size;
    }
  }

  function showFileResults(rows, body, ok) {
    const accepted = (body.accepted || []).slice();
    const rejected = (body.rejected || []).slice();
    const take = (list, name) => {
      const i = list.findIndex((item) => item.filename === name);
      return i < 0 ? null : list.splice(i, 1)[0];
    };
    for (const row of rows) {
      row.meter.value = row.file.size;
      if (!ok) { row.state.textContent = "not sent"; row.state.className = "file-state message error"; continue; }
      if (/\.zip$/i.test(row.file.name)) {
        const prefix = `${row.file.name}/`;
        const a = accepted.filter((item) => item.filename.startsWith(prefix)).length;
        const r = rejected.filter((item) => item.filename.startsWith(prefix) || item.filename === row.file.name).length;
        row.state.textContent = `unpacked: ${a} accepted, ${r} refused`;
        continue;
      }
      const a = take(accepted, row.file.name);
      const r = a ? null : take(rejected, row.file.name);
      if (a) row.state.textContent = a.duplicate ? `already submitted: study ${a.id}` : `accepted: study ${a.id}`;
      else if (r) { row.state.textContent = `refused: ${r.reason}`; row.state.className = "file-state message error"; }
      else row.state.textContent = "sent";
    }
  }

  function addDuplicates(list) {
    const dups = (list || []).filter((a) => a.duplicate);
    if (dups.length === 0) return;
    el("duplicates-block").hidden = false;
    for (const d of dups) {
      const li = document.createElement("li");
      const link = document.createElement("a");
      link.href = `/studies/${d.id}`;
      link.textContent = `study ${d.id}`;
      li.append(`${d.filename}: `, link, ` (${d.status})`);
      el("duplicates").appendChild(li);
    }
  }

  function addRejected(list) {
    if (!list || list.length === 0) return;
    el("rejected-block").hidden = false;
    for (const r of list) {
      const li = document.createElement("li");
      li.textContent = `${r.filename}: ${r.reason}`;
      el("rejected").appendChild(li);
    }
  }

  function message(text, kind) {
    const node = el("message");
    node.textContent = text;
    node.className = `message ${kind || ""}`;
  }

  function statusCell(status) {
    const span = document.createElement("span");
    span.className = `status status-${status}`;
    span.textContent = status;
    return span;
  }

  function renderBatch(batch) {
    el("batch-id").textContent = batch.id;
    el("batch-link").href = batch.page_url;
    el("batch-link").hidden = false;
    const c = batch.counts;
    el("done-progress").max = Math.max(c.total, 1);
    el("done-progress").value = c.done + c.failed;
    el("done-text").textContent = `${c.done + c.failed} of ${c.total}`;
    el("counts").textContent = "";
    for (const name of ["queued", "processing", "done", "failed"]) {
      const span = document.createElement("span");
      span.textContent = `${name}: ${c[name]}`;
      el("counts").appendChild(span);
    }
    const body = el("studies");
    body.textContent = "";
    for (const s of batch.studies) {
      const tr = document.createElement("tr");
      const idCell = document.createElement("td");
      const link = document.createElement("a");
      link.href = s.page_url;
      link.textContent = s.id;
      idCell.appendChild(link);
      const nameCell = document.createElement("td");
      nameCell.textContent = s.filename;
      const statusTd = document.createElement("td");
      statusTd.appendChild(statusCell(s.status));
      if (s.error) {
        const err = document.createElement("div");
        err.className = "message error small";
        err.textContent = s.error;
        statusTd.appendChild(err);
      }
      tr.append(idCell, nameCell, statusTd);
      body.appendChild(tr);
    }
    return batch.complete;
  }

  async function poll() {
    if (batchId === null) return;
    try {
      const response = await fetch(`${form.dataset.batchUrlPrefix}${batchId}`, { headers: { Accept: "application/json" } });
      const batch = await response.json();
      if (!response.ok) { message(batch.error || `The server answered ${response.status}.`, "error"); return; }
      const complete = renderBatch(batch);
      if (complete && !sending) {
        clearInterval(polling);
        polling = null;
        message("All studies of this batch are finished. Completed studies are on the worklist.", "");
      }
    } catch (err) {
      message(`Could not reach the server (${err}); retrying…`, "warn");
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (sending || files.length === 0) return;
    sending = true;
    renderSelection();
    progress.hidden = false;
    batchId = null;
    el("rejected").textContent = "";
    el("rejected-block").hidden = true;
    el("studies").textContent = "";
    el("duplicates").textContent = "";
    el("duplicates-block").hidden = true;
    message("", "");
    const todo = files;
    files = [];
    const total = todo.reduce((sum, f) => sum + f.size, 0);
    let sent = 0;
    el("send-progress").max = Math.max(total, 1);
    let accepted = 0;
    let failedChunks = 0;
    const rows = fileRows(todo);
    let index = 0;
    for (const chunk of chunks(todo)) {
      const chunkRows = rows.slice(index, index + chunk.length);
      index += chunk.length;
      const chunkBytes = chunk.reduce((sum, f) => sum + f.size, 0);
      const result = await send(chunk, (loaded) => {
        showFileProgress(chunkRows, loaded);
        el("send-progress").value = sent + Math.min(loaded, chunkBytes);
        el("send-text").textContent = `${((sent + loaded) / 1048576).toFixed(1)} of ${(total / 1048576).toFixed(1)} MiB`;
      });
      sent += chunkBytes;
      el("send-progress").value = sent;
      const body = result.body;
      if (body.batch_id !== undefined && body.batch_id !== null) batchId = body.batch_id;
      addRejected(body.rejected);
      addDuplicates(body.accepted);
      showFileResults(chunkRows, body, result.status === 200 || result.status === 201 || result.status === 422);
      accepted += (body.accepted || []).length;
      if (result.status !== 200 && result.status !== 201 && result.status !== 422) {
        failedChunks += 1;
        const names = chunk.map((f) => f.name).join(", ");
        message(`${body.error || `The server answered ${result.status}.`} Not sent: ${names}`, "error");
      } else if (body.warning) {
        message(body.warning, "warn");
      }
      if (batchId !== null && polling === null) { polling = setInterval(poll, POLL_MS); poll(); }
    }
    sending = false;
    renderSelection();
    el("send-text").textContent = `${accepted} accepted`;
    if (batchId === null && failedChunks === 0) {
      message(accepted ? "Every file was already submitted: see the existing studies above." : "No file was accepted.", accepted ? "" : "error");
    }
    if (batchId !== null) poll();
  });

  renderSelection();
})();
