// Tributary dashboard: progressive enhancement only (every page reads without it).
// 1. Live parts: an element with data-poll is re-fetched every second from that URL (an
//    HTML fragment rendered by the server) until the fragment comes back without data-poll.
// 2. Playground: answers stream from /playground/stream (OpenAI server-sent events), text
//    appended with textContent (never parsed as markup); then the attribution panel loads.
// 3. "Re-run attribution" forms post in place: the result page's div.rerun-result goes
//    under the form (without the script the form posts and the result is a page).
"use strict";

function fragment(html, id) {
  const doc = new DOMParser().parseFromString(html, "text/html");
  return doc.getElementById(id) || doc.body;
}

function poll(el) {
  const url = el.dataset.poll;
  if (!url) return;
  setTimeout(async () => {
    try {
      const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (r.ok) {
        const next = fragment(await r.text(), el.id);
        el.replaceWith(next);
        poll(next);
        return;
      }
    } catch (e) { /* retry below */ }
    poll(el);
  }, 1000);
}

function csrf() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
}

async function loadAttribution(panel, requestId, tries) {
  if (!requestId) return;
  try {
    const r = await fetch("/playground/attribution/" + encodeURIComponent(requestId),
      { credentials: "same-origin", cache: "no-store" });
    const html = await r.text();
    const doc = new DOMParser().parseFromString(html, "text/html");
    panel.replaceChildren(...doc.body.childNodes);
    if (/pending/.test(panel.textContent) && tries > 0) {
      setTimeout(() => loadAttribution(panel, requestId, tries - 1), 2000);
    }
  } catch (e) {
    panel.textContent = "Attribution: could not load (" + e + ")";
  }
}

async function streamInto(side, model, prompt, maxTokens) {
  const out = document.getElementById("answer-" + side);
  const panel = document.getElementById("attr-" + side);
  out.textContent = "";
  panel.textContent = "";
  out.setAttribute("aria-busy", "true");
  let id = "";
  try {
    const r = await fetch("/playground/stream", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf() },
      body: JSON.stringify({ model, prompt, max_tokens: maxTokens }),
    });
    if (!r.ok || !r.body) {
      const t = await r.text();
      let msg = t;
      try { msg = JSON.parse(t).error.message; } catch (e) { /* not JSON */ }
      out.textContent = "error " + r.status + ": " + msg;
      return;
    }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        try {
          const chunk = JSON.parse(data);
          if (chunk.id) id = chunk.id;
          const c = chunk.choices && chunk.choices[0];
          const delta = c && c.delta && c.delta.content;
          if (delta) out.textContent += delta;
        } catch (e) { /* a partial line */ }
      }
    }
  } finally {
    out.setAttribute("aria-busy", "false");
    out.dataset.request = id;
  }
  // Only adapters' answers are attributed and billed: the base model alone pays no one.
  const sel = document.getElementById("model-" + side);
  const opt = sel && sel.selectedOptions[0];
  if (opt && /\(base\)$/.test(opt.textContent.trim())) {
    panel.textContent = "Answers of the base model alone are not attributed: no adapter, no fee.";
    return;
  }
  panel.textContent = "Attribution: loading…";
  loadAttribution(panel, id, 45);
}

async function rerun(form) {
  const button = form.querySelector("button");
  let out = form.nextElementSibling;
  if (!out || !out.classList.contains("rerun-result")) {
    out = document.createElement("div");
    out.className = "rerun-result";
    form.after(out);
  }
  out.textContent = "Re-running…";
  if (button) button.disabled = true;
  try {
    const r = await fetch(form.action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(new FormData(form)),
    });
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const result = doc.querySelector(".rerun-result");
    if (result) out.replaceWith(result);
    else out.textContent = "Re-run: " + r.status;
  } catch (e) {
    out.textContent = "Re-run failed: " + e;
  } finally {
    if (button) button.disabled = false;
  }
}

document.addEventListener("submit", (ev) => {
  const form = ev.target;
  if (form instanceof HTMLFormElement && form.classList.contains("rerun")) {
    ev.preventDefault();
    rerun(form);
  }
});

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(poll);
  document.querySelectorAll(".attribution[data-request]").forEach((p) =>
    loadAttribution(p, p.dataset.request, 45));
  const chat = document.getElementById("chat");
  if (chat) {
    chat.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const prompt = document.getElementById("prompt").value;
      const max = parseInt(document.getElementById("max_tokens").value, 10) || 32;
      for (const side of ["a", "b"]) {
        const model = document.getElementById("model-" + side).value;
        if (model) streamInto(side, model, prompt, max);
        else document.getElementById("answer-" + side).textContent = "";
      }
    });
  }
});
