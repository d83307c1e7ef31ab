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

// Pan and zoom: the wheel zooms around the pointer, dragging pans, "Reset view" restores. The image,
// heatmap and box share one transformed stage, so overlays stay registered at every zoom.
(function () {
  const viewer = document.getElementById("viewer");
  const stage = document.getElementById("stage");
  const level = document.getElementById("zoom-level");
  const reset = document.getElementById("zoom-reset");
  if (!viewer || !stage) return;
  const MIN = 1, MAX = 16;
  let scale = 1, x = 0, y = 0, drag = null;

  function clamp() {
    const w = viewer.clientWidth, h = viewer.clientHeight;
    x = Math.min(0, Math.max(w - w * scale, x));
    y = Math.min(0, Math.max(h - h * scale, y));
  }
  function apply() {
    clamp();
    stage.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
    level.textContent = `${Math.round(scale * 100)}%`;
    viewer.classList.toggle("zoomed", scale > 1);
  }
  viewer.addEventListener("wheel", (event) => {
    event.preventDefault();
    const rect = viewer.getBoundingClientRect();
    const px = event.clientX - rect.left, py = event.clientY - rect.top;
    const next = Math.min(MAX, Math.max(MIN, scale * Math.exp(-event.deltaY * 0.0015)));
    x = px - (px - x) * (next / scale);
    y = py - (py - y) * (next / scale);
    scale = next;
    apply();
  }, { passive: false });
  viewer.addEventListener("pointerdown", (event) => {
    drag = { px: event.clientX, py: event.clientY, x, y };
    viewer.setPointerCapture(event.pointerId);
    viewer.classList.add("dragging");
  });
  viewer.addEventListener("pointermove", (event) => {
    if (!drag) return;
    x = drag.x + event.clientX - drag.px;
    y = drag.y + event.clientY - drag.py;
    apply();
  });
  const end = () => { drag = null; viewer.classList.remove("dragging"); };
  viewer.addEventListener("pointerup", end);
  viewer.addEventListener("pointercancel", end);
  reset.addEventListener("click", () => { scale = 1; x = 0; y = 0; apply(); });
  apply();
})();

// Review: post the form as JSON; on success the study is off the worklist.
(function () {
  const form = document.getElementById("review-form");
  if (!form) return;
  const message = document.getElementById("review-message");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const verdicts = {};
    const body = { verdicts, note: null };  // the reviewer is the logged-in user (server side)
    for (const [key, value] of data.entries()) {
      if (key.startsWith("verdict_")) verdicts[key.slice(8)] = value;
      else if (key === "note" && String(value).trim()) body[key] = String(value);
    }
    const button = document.getElementById("review-submit");
    button.disabled = true;
    try {
      const response = await fetch(form.dataset.url, {
        method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
      });
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
      message.className = "message ok";
      message.textContent = "Reviewed: this study is off the worklist.";
      button.textContent = "Add another review";
    } catch (err) {
      message.className = "message error";
      message.textContent = `The review was not saved: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });
})();
