// Study page: probability bars against thresholds, a heatmap layer over the X-ray with an opacity
// control, the finding's box; while the study is queued or processing, poll until it finishes.
"use strict";
(function () {
  const POLL_MS = 3000;
  const root = document.getElementById("study");
  if (!root) return;
  const heatmap = document.getElementById("heatmap");
  const box = document.getElementById("box");
  const opacity = document.getElementById("opacity");
  const showBox = document.getElementById("show-box");
  const width = Number(root.dataset.width);
  const height = Number(root.dataset.height);

  const pct = (v) => `${(Math.max(0, Math.min(1, v)) * 100).toFixed(2)}%`;

  for (const li of document.querySelectorAll(".finding[data-label]")) {
    li.querySelector(".fill").style.width = pct(Number(li.dataset.probability));
    li.querySelector(".threshold").style.left = pct(Number(li.dataset.threshold));
    li.title = `probability ${Number(li.dataset.probability).toFixed(3)}, threshold ${Number(li.dataset.threshold).toFixed(3)}`;
  }

  function applyOpacity() { heatmap.style.opacity = String(Number(opacity.value) / 100); }

  function select(label) {
    const li = label ? document.querySelector(`.finding[data-label="${CSS.escape(label)}"]`) : null;
    if (li && li.dataset.heatmap) {
      heatmap.src = li.dataset.heatmap;
      heatmap.alt = `Heatmap for ${label}`;
      heatmap.hidden = false;
    } else {
      heatmap.hidden = true;
      heatmap.removeAttribute("src");
    }
    if (li && li.dataset.boxX !== undefined && width && height && showBox.checked) {
      box.style.left = pct(Number(li.dataset.boxX) / width);
      box.style.top = pct(Number(li.dataset.boxY) / height);
      box.style.width = pct(Number(li.dataset.boxW) / width);
      box.style.height = pct(Number(li.dataset.boxH) / height);
      box.hidden = false;
    } else {
      box.hidden = true;
    }
  }

  function current() {
    const checked = document.querySelector('input[name="layer"]:checked');
    return checked ? checked.value : "";
  }

  document.querySelectorAll('input[name="layer"]').forEach((input) =>
    input.addEventListener("change", () => select(current())));
  if (opacity) opacity.addEventListener("input", applyOpacity);
  if (showBox) showBox.addEventListener("change", () => select(current()));
  applyOpacity();

  // Start with the most probable finding above threshold that has a heatmap, if any.
  const positives = Array.from(document.querySelectorAll(".finding.positive[data-label]"))
    .filter((li) => li.dataset.heatmap)
    .sort((a, b) => Number(b.dataset.probability) - Number(a.dataset.probability));
  if (positives.length) {
    positives[0].querySelector('input[name="layer"]').checked = true;
    select(positives[0].dataset.label);
  }

  const status = root.dataset.status;
  if (status === "queued" || status === "processing") {
    const timer = setInterval(async () => {
      try {
        const response = await fetch(root.dataset.url, { headers: { Accept: "application/json" } });
        if (!response.ok) return;
        const study = await response.json();
        if (study.status !== status) { clearInterval(timer); window.location.reload(); }
      } catch (err) {
        // keep polling; the server may be restarting
      }
    }, POLL_MS);
  }
})();
