// sitesearch playground: plain JS over the public API. The token stays in localStorage.
"use strict";
(function () {
  const TOKEN_KEY = "sitesearch.token";
  const INSTANCE_KEY = "sitesearch.instance";
  const account = document.querySelector('meta[name="sitesearch-account"]').content || "local";
  const base = "/client/v4/accounts/" + encodeURIComponent(account) + "/ai-search";
  const $ = (id) => document.getElementById(id);
  let mode = "search";

  $("account").textContent = account;

  function setStatus(text, isError) {
    $("status").textContent = text || "";
    $("status").className = isError ? "error" : "";
  }

  function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + token() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try { data = await resp.json(); } catch (e) { /* not JSON */ }
    if (!resp.ok || !data || data.success === false) {
      const msg = data && data.errors && data.errors.length ? data.errors[0].message : "HTTP " + resp.status;
      const err = new Error(msg);
      err.status = resp.status;
      throw err;
    }
    return data.result;
  }

  async function loadInstances() {
    const select = $("instance");
    if (!token()) { setStatus("Paste an API token to start."); return; }
    try {
      const rows = await api("GET", "/instances");
      select.replaceChildren();
      for (const row of rows) {
        const opt = document.createElement("option");
        opt.value = row.id;
        opt.textContent = row.source ? row.id + " — " + row.source : row.id;
        select.appendChild(opt);
      }
      if (!rows.length) {
        const opt = document.createElement("option");
        opt.value = ""; opt.textContent = "(no instances yet)";
        select.appendChild(opt);
      }
      const saved = localStorage.getItem(INSTANCE_KEY);
      if (saved && rows.some((r) => r.id === saved)) select.value = saved;
      setStatus(rows.length + " instance" + (rows.length === 1 ? "" : "s"));
    } catch (e) {
      // A token with only AI Search:Run cannot list instances: type the id instead.
      setStatus("Cannot list instances (" + e.message + "); type an instance id.", true);
    }
  }

  function instanceId() { return $("instance-id").value.trim() || $("instance").value; }

  function safeHref(url) { return /^https?:\/\//i.test(url) ? url : "#"; }

  function snippet(text, limit) {
    const flat = (text || "").replace(/\s+/g, " ").trim();
    return flat.length <= limit ? flat : flat.slice(0, limit).replace(/\s+\S*$/, "") + "…";
  }

  function render(result) {
    const list = $("results");
    list.replaceChildren();
    const data = result.data || [];
    $("summary").textContent = data.length + " result" + (data.length === 1 ? "" : "s") + " for “" + result.search_query + "”";
    for (const hit of data) {
      const file = (hit.attributes && hit.attributes.file) || {};
      const url = file.url || hit.filename;
      const li = document.createElement("li");
      li.className = "result";
      const head = document.createElement("div");
      head.className = "result-head";
      const a = document.createElement("a");
      a.className = "result-title"; a.href = safeHref(url); a.target = "_blank"; a.rel = "noopener";
      a.textContent = file.title || hit.filename;
      const score = document.createElement("span");
      score.className = "result-score"; score.textContent = "score " + Number(hit.score).toFixed(3);
      head.append(a, score);
      const u = document.createElement("div");
      u.className = "result-url"; u.textContent = url;
      const p = document.createElement("p");
      p.className = "result-snippet";
      p.textContent = snippet(hit.content && hit.content.length ? hit.content[0].text : "", 320);
      li.append(head, u, p);
      list.appendChild(li);
    }
  }

  async function run(event) {
    event.preventDefault();
    const id = instanceId();
    const query = $("query").value.trim();
    if (!token()) { setStatus("Paste an API token first.", true); return; }
    if (!id) { setStatus("Pick or type an instance.", true); return; }
    if (!query) return;
    localStorage.setItem(INSTANCE_KEY, id);
    const body = { query, max_num_results: Math.min(50, Math.max(1, parseInt($("max").value, 10) || 10)) };
    setStatus(mode === "answer" ? "Answering…" : "Searching…");
    $("go").disabled = true;
    const started = performance.now();
    try {
      const path = "/instances/" + encodeURIComponent(id) + (mode === "answer" ? "/ai-search" : "/search");
      const result = await api("POST", path, body);
      $("answer").hidden = mode !== "answer";
      $("answer-text").textContent = mode === "answer" ? result.response || "" : "";
      render(result);
      setStatus("Done in " + Math.round(performance.now() - started) + " ms");
    } catch (e) {
      setStatus(e.message, true);
    } finally {
      $("go").disabled = false;
    }
  }

  function selectTab(next) {
    mode = next;
    for (const tab of document.querySelectorAll(".tab")) {
      const on = tab.dataset.mode === mode;
      tab.classList.toggle("active", on);
      tab.setAttribute("aria-selected", on ? "true" : "false");
    }
    $("go").textContent = mode === "answer" ? "Ask" : "Search";
    $("answer").hidden = true;
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) localStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    $("token").placeholder = value ? "token saved" : "paste a bearer token";
    loadInstances();
  });
  $("forget").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    $("token").placeholder = "paste a bearer token";
    setStatus("Token forgotten.");
  });
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => selectTab(tab.dataset.mode));
  $("search-form").addEventListener("submit", run);
  if (token()) $("token").placeholder = "token saved";
  loadInstances();
})();
