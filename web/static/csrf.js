// Adds this session's CSRF token (from <meta name="csrf-token">) as the X-CSRF-Token header to every
// same-origin fetch or XMLHttpRequest that changes something, and sends the browser to the login page when a same-origin
// request answers 401 (the session ended). Loaded by base.html before the page's own script.
"use strict";
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const token = meta ? meta.getAttribute("content") : "";
  const loginMeta = document.querySelector('meta[name="login-url"]');
  const loginUrl = loginMeta ? loginMeta.getAttribute("content") : "/login";
  const SAFE = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);
  const original = window.fetch.bind(window);

  function sameOrigin(url) {
    try { return new URL(url, window.location.href).origin === window.location.origin; } catch (e) { return false; }
  }

  window.fetch = async function (input, init) {
    const options = Object.assign({}, init || {});
    const url = typeof input === "string" ? input : (input && input.url) || "";
    const method = (options.method || (input && input.method) || "GET").toUpperCase();
    const local = sameOrigin(url);
    if (local && !SAFE.has(method) && token) {
      const headers = new Headers(options.headers || (input && input.headers) || {});
      headers.set("X-CSRF-Token", token);
      options.headers = headers;
    }
    const response = await original(input, options);
    if (local && response.status === 401) {
      const here = window.location.pathname + window.location.search;
      window.location.assign(`${loginUrl}?next=${encodeURIComponent(here)}`);
    }
    return response;
  };

  // XMLHttpRequest too (the upload page uses it for upload progress).
  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this.xrayNeedsCsrf = !SAFE.has(String(method).toUpperCase()) && sameOrigin(String(url));
    return open.call(this, method, url, ...rest);
  };
  XMLHttpRequest.prototype.send = function (body) {
    if (this.xrayNeedsCsrf && token) this.setRequestHeader("X-CSRF-Token", token);
    return send.call(this, body);
  };
})();
