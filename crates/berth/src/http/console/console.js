// berth console: live regions and confirmed actions. No framework, no
// external script. Regions name the change kinds that make them stale
// (data-live); on such a change from GET /v1/stream the region is fetched
// again from this page's URL with X-Berth-Fragment.
"use strict";
(function () {
  const csrfMeta = document.querySelector('meta[name="berth-csrf"]');
  const csrf = csrfMeta ? csrfMeta.content : null;
  const actorMeta = document.querySelector('meta[name="berth-actor"]');
  const live = document.getElementById("live-state");
  const result = document.getElementById("action-result");
  const pending = new Map(); // region id -> timer
  const inFlight = new Set();

  function setLive(state, text) {
    if (!live) return;
    live.dataset.state = state;
    live.textContent = text;
  }

  function regions() {
    return Array.from(document.querySelectorAll("section[data-live]"));
  }

  async function refresh(section) {
    if (inFlight.has(section.id)) {
      schedule(section); // one more after this one
      return;
    }
    inFlight.add(section.id);
    try {
      const res = await fetch(location.pathname + location.search, {
        headers: { "X-Berth-Fragment": section.id },
        credentials: "same-origin",
        redirect: "manual",
      });
      if (res.status === 200) {
        section.innerHTML = await res.text();
        document.body.dataset.refreshed = String(Date.now());
      } else if (res.type === "opaqueredirect" || res.status === 401) {
        location.reload(); // the session ended
      }
    } catch (e) {
      /* the stream's reconnect will refresh again */
    } finally {
      inFlight.delete(section.id);
    }
  }

  // Coalesces bursts (a rollout moves many runtimes at once).
  function schedule(section) {
    if (pending.has(section.id)) return;
    pending.set(section.id, setTimeout(() => {
      pending.delete(section.id);
      refresh(section);
    }, 150));
  }

  function onChange(change) {
    for (const section of regions()) {
      const kinds = section.dataset.live.split(",");
      if (!kinds.includes(change.kind)) continue;
      // A region of one runtime: its own changes, and pins and templates
      // (which belong to no runtime but change how it reads).
      const only = section.dataset.runtime;
      const shared = change.kind === "pin" || change.kind === "template";
      if (only && !shared && change.runtime !== only && !(change.kind === "runtime" && change.key === only)) continue;
      schedule(section);
    }
  }

  function connect() {
    if (!window.EventSource || regions().length === 0) return;
    const source = new EventSource("/v1/stream");
    source.addEventListener("open", () => setLive("live", "live"));
    source.addEventListener("change", (e) => {
      try { onChange(JSON.parse(e.data)); } catch (_) { /* not ours */ }
    });
    // The server no longer has what we missed: reload every region.
    source.addEventListener("reset", () => regions().forEach(schedule));
    source.addEventListener("error", () => {
      // EventSource reconnects by itself, with Last-Event-ID.
      setLive("reconnecting", "reconnecting…");
    });
  }

  function say(text, failed) {
    if (!result) return;
    result.textContent = text;
    result.classList.toggle("failed", !!failed);
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-path]");
    if (!button) return;
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    const headers = { "Accept": "application/json" };
    if (csrf) headers["X-Berth-CSRF"] = csrf;
    if (actorMeta && !csrf) headers["X-Berth-Actor"] = actorMeta.content;
    button.disabled = true;
    say(button.textContent + "…", false);
    try {
      const res = await fetch(button.dataset.path, {
        method: button.dataset.method || "POST",
        headers: headers,
        credentials: "same-origin",
      });
      if (res.ok) {
        say(button.textContent + ": done", false);
      } else {
        let message = res.status + " " + res.statusText;
        try {
          const body = await res.json();
          if (body.error) message = body.error.code + ": " + body.error.message;
        } catch (_) { /* not JSON */ }
        say(button.textContent + " failed: " + message, true);
      }
    } catch (e) {
      say(button.textContent + " failed: " + e, true);
    } finally {
      button.disabled = false;
      regions().forEach(schedule);
    }
  });

  connect();
})();
