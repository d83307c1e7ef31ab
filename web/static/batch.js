// Batch page: poll the batch JSON until every study is done or failed, without reloading.
"use strict";
(function () {
  const POLL_MS = 2000;
  const root = document.getElementById("batch");
  const el = (id) => document.getElementById(id);
  const nodes = { progress: el("done-progress"), progressText: el("done-text"), counts: el("counts"), groups: el("groups") };
  let timer = null;

  async function poll() {
    try {
      const response = await fetch(root.dataset.url, { headers: { Accept: "application/json" } });
      const batch = await response.json();
      if (!response.ok) throw new Error(batch.error || `HTTP ${response.status}`);
      el("batch-error").textContent = "";
      if (window.BatchView.render(batch, nodes) && timer !== null) { clearInterval(timer); timer = null; }
    } catch (err) {
      el("batch-error").textContent = `Could not refresh the batch (${err.message}); retrying.`;
    }
  }
  timer = setInterval(poll, POLL_MS);
  poll();
})();
