// fleetward console: live updates and actions. No framework, no build step.
// Actions are forms with data-method/data-path: their named fields become the
// JSON body of a REST API call sent with the session's CSRF token; the API's
// problem detail is shown in the form. Live updates: a server-sent event says
// the tenant changed, and the page's main block is fetched again.
"use strict";
(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const main = () => document.getElementById("main");
  let refreshing = false, pending = false, lastRefresh = 0;
  const MIN_GAP = 2500; // ms between two refreshes of the main block

  function problemText(status, body) {
    if (body && typeof body === "object") {
      let text = (body.title || ("HTTP " + status)) + (body.detail ? ": " + body.detail : "");
      if (Array.isArray(body.errors)) {
        text += " " + body.errors.map(e => (e.loc ? e.loc.join(".") + ": " : "") + (e.msg || e.detail || "")).join("; ");
      }
      return text;
    }
    return "HTTP " + status;
  }

  function busy() {
    const d = document.getElementById("confirm");
    if (d && d.open) return true;
    const a = document.activeElement;
    return !!(a && a.closest && a.closest("main form") && (a.tagName === "INPUT" || a.tagName === "SELECT") && a.value);
  }

  async function refresh() {
    const m = main();
    if (!m) return;
    if (refreshing || busy()) { pending = true; return; }
    const wait = lastRefresh + MIN_GAP - Date.now();
    if (wait > 0) { pending = true; setTimeout(flush, wait); return; }
    refreshing = true; pending = false; lastRefresh = Date.now();
    try {
      const r = await fetch(location.href, { headers: { "X-Console-Partial": "1" }, credentials: "same-origin", cache: "no-store" });
      if (new URL(r.url).pathname === "/login") { location.assign(r.url); return; }
      if (!r.ok) return;
      const html = await r.text();
      const focusedId = document.activeElement && document.activeElement.id;
      m.innerHTML = html;
      if (focusedId) { const el = document.getElementById(focusedId); if (el) el.focus(); }
      document.dispatchEvent(new CustomEvent("console:refreshed"));
    } catch (e) {
      // a failed refresh leaves the page as it was; the next change tries again
    } finally {
      refreshing = false;
    }
  }
  function flush() { if (pending) refresh(); }

  function confirmEffect(text) {
    const d = document.getElementById("confirm");
    if (!d || typeof d.showModal !== "function") return Promise.resolve(window.confirm(text));
    document.getElementById("confirm-effect").textContent = text;
    d.returnValue = "";
    return new Promise(resolve => {
      d.addEventListener("close", () => { resolve(d.returnValue === "ok"); setTimeout(flush, 0); }, { once: true });
      d.showModal();
      document.getElementById("confirm-ok").focus();
    });
  }

  function bodyOf(form) {
    const body = {};
    let any = false;
    for (const el of form.elements) {
      if (!el.name || el.disabled) continue;
      let v = el.type === "checkbox" ? el.checked : el.value;
      if (v === "" && !el.required) continue;
      if (el.dataset.type === "number") v = Number(v);
      else if (el.dataset.type === "json") { try { v = JSON.parse(v); } catch (e) { throw new Error(el.name + " is not valid JSON"); } }
      else if (el.dataset.type === "list") v = String(v).split(",").map(s => s.trim()).filter(Boolean);
      body[el.name] = v; any = true;
    }
    return any || form.dataset.body === "always" ? body : null;
  }

  async function act(form) {
    const out = form.querySelector("output.result");
    const show = t => { if (out) out.textContent = t; };
    const effect = form.dataset.confirm;
    if (effect && !(await confirmEffect(effect))) { show("Cancelled."); return; }
    let body;
    try { body = bodyOf(form); } catch (e) { show(e.message); if (out) out.className = "result problem"; return; }
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    show("Working…");
    try {
      const r = await fetch(form.dataset.path, {
        method: form.dataset.method || "POST",
        credentials: "same-origin",
        headers: Object.assign({ "Accept": "application/json", "X-CSRF-Token": csrf() },
                               body === null ? {} : { "Content-Type": "application/json" }),
        body: body === null ? undefined : JSON.stringify(body),
      });
      let data = null;
      try { data = await r.json(); } catch (e) { data = null; }
      if (r.status === 401) { location.assign("/login?next=" + encodeURIComponent(location.pathname)); return; }
      if (!r.ok) { if (out) out.className = "result problem"; show(problemText(r.status, data)); return; }
      if (out) out.className = "result notice";
      if (form.dataset.show === "json" && out) {
        out.textContent = "";
        const pre = document.createElement("pre");
        pre.textContent = JSON.stringify(data, null, 2);
        out.appendChild(pre);
      } else {
        show(form.dataset.done || "Done.");
        if (form.dataset.go && data && data.id !== undefined) { location.assign(form.dataset.go.replace("{id}", data.id)); return; }
        lastRefresh = 0;
        setTimeout(refresh, 300);
      }
    } catch (e) {
      if (out) out.className = "result problem";
      show("The request failed: " + e.message);
    } finally {
      if (button) button.disabled = false;
    }
  }

  document.addEventListener("submit", ev => {
    const form = ev.target;
    if (form instanceof HTMLFormElement && form.classList.contains("action")) {
      ev.preventDefault();
      act(form);
    }
  });

  function listen() {
    const m = main();
    const badge = document.getElementById("live");
    if (!m || m.dataset.live !== "true" || typeof EventSource !== "function") { if (badge) badge.classList.add("off"); return; }
    const es = new EventSource("/console/events");
    es.addEventListener("open", () => { if (badge) { badge.classList.remove("off"); badge.textContent = "live"; } });
    es.addEventListener("change", () => refresh());
    es.addEventListener("ended", () => { es.close(); location.assign("/login?next=" + encodeURIComponent(location.pathname)); });
    es.addEventListener("error", () => { if (badge) { badge.classList.add("off"); badge.textContent = "reconnecting"; } });
    window.addEventListener("pagehide", () => es.close());
  }
  document.addEventListener("DOMContentLoaded", listen);
  window.fleetwardConsole = { refresh };
})();
