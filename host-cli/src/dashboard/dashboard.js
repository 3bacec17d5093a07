// The Courier dashboard: polls the ingress's JSON routes once a second and shows them.
//
// Every string that comes from the runner (component ids, states' reasons, dead letters'
// reasons and payload previews, host names) may have been chosen by a guest or a remote host,
// so it is only ever written with textContent or as an attribute value, never parsed as
// markup. The page's Content-Security-Policy would block a script that slipped in anyway.
"use strict";

(function () {
  // How often the routes are read, and how many samples the sparklines keep (60 s of them).
  const POLL_MS = 1000;
  const HISTORY = 60;
  // The latest dead letters shown, and those a component's "dead letters" button shows:
  // each is at most 1 KiB of reason and 1 KiB of payload, so a poll stays small.
  const DEAD_LETTERS_SHOWN = 20;
  const DEAD_LETTERS_PER_COMPONENT = 10;
  // How much of a payload preview a cell shows; the rest is in the cell's title.
  const PREVIEW_CHARS = 80;
  const TOKEN_KEY = "courier.token";
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  // Per component id: its table rows and the samples of its last minute.
  const components = new Map();
  // Ids whose "dead letters" row is open.
  const openLetters = new Set();
  let polls = 0;

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function headers() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  async function getJson(path) {
    const response = await fetch(path, { headers: headers(), cache: "no-store" });
    if (!response.ok) {
      let kind = String(response.status);
      try {
        kind = (await response.json()).error || kind;
      } catch (_) {
        // Not JSON: the status says enough.
      }
      const error = new Error(kind);
      error.status = response.status;
      error.kind = kind;
      throw error;
    }
    return response.json();
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function cell(field, className) {
    const td = el("td", className);
    td.dataset.field = field;
    return td;
  }

  function setNumber(td, value, text) {
    td.dataset.value = String(value);
    td.textContent = text === undefined ? formatCount(value) : text;
  }

  function formatCount(n) {
    return Number(n).toLocaleString("en-US");
  }

  function formatMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1) return (ms * 1000).toFixed(0) + " µs";
    if (ms < 1000) return ms.toFixed(ms < 10 ? 2 : 0) + " ms";
    return (ms / 1000).toFixed(2) + " s";
  }

  // A small line chart of `values` (numbers, or null where there was no sample).
  function sparkline(values, className) {
    const width = 64;
    const height = 22;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark " + className);
    svg.setAttribute("width", String(width));
    svg.setAttribute("height", String(height));
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    const known = values.filter((v) => typeof v === "number" && isFinite(v));
    const max = Math.max(1e-9, ...known);
    const step = width / (HISTORY - 1);
    const offset = HISTORY - values.length;
    const points = [];
    values.forEach((v, i) => {
      if (typeof v !== "number" || !isFinite(v)) return;
      const x = (offset + i) * step;
      const y = height - 1 - (v / max) * (height - 2);
      points.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.appendChild(line);
    return svg;
  }

  function newRow(id) {
    const tr = el("tr");
    tr.dataset.component = id;
    const cells = {
      id: cell("id", "id"),
      state: cell("state"),
      version: cell("version", "version"),
      mailbox: cell("mailbox_depth", "num"),
      delivered: cell("delivered", "num"),
      rate: cell("delivered_per_s", "num"),
      failed: cell("failed", "num"),
      deadLettered: cell("dead_lettered", "num"),
      restarts: cell("restarts", "num"),
      latency: cell("latency", "num"),
      keyed: cell("keyed", "num keyed"),
      actions: cell("actions", "actions"),
    };
    cells.keyed.hidden = true;
    cells.id.textContent = id;
    for (const td of Object.values(cells)) tr.appendChild(td);

    const restart = el("button", "restart", "restart");
    restart.type = "button";
    restart.addEventListener("click", () => restartComponent(id));
    const letters = el("button", "letters", "letters");
    letters.title = "the last dead letters for " + id;
    letters.type = "button";
    letters.addEventListener("click", () => toggleLetters(id));
    cells.actions.append(restart, " ", letters);

    const lettersRow = el("tr", "letters-row");
    lettersRow.dataset.lettersOf = id;
    lettersRow.hidden = true;
    const lettersCell = el("td");
    lettersCell.colSpan = 12;
    lettersRow.appendChild(lettersCell);

    return { tr, cells, restart, lettersRow, lettersCell, samples: [] };
  }

  function renderComponents(list) {
    const tbody = $("components").tBodies[0];
    const seen = new Set();
    let anyKeyed = false;
    const now = performance.now();
    // Where the next row belongs, in the order the runner lists them.
    let cursor = tbody.firstChild;
    for (const c of list) {
      const id = String(c.id);
      seen.add(id);
      let row = components.get(id);
      if (!row) {
        row = newRow(id);
        components.set(id, row);
      }
      // Moved only when out of place: moving a row would take the keyboard focus from its
      // buttons once a second.
      if (cursor !== row.tr) tbody.insertBefore(row.tr, cursor);
      if (row.tr.nextSibling !== row.lettersRow) {
        tbody.insertBefore(row.lettersRow, row.tr.nextSibling);
      }
      cursor = row.lettersRow.nextSibling;

      const previous = row.samples[row.samples.length - 1];
      let rate = null;
      if (previous && now > previous.t) {
        // A restart through the ingress starts the counters again from zero.
        rate = Math.max(0, (c.delivered - previous.delivered) / ((now - previous.t) / 1000));
      }
      const latency = c.latency || {};
      row.samples.push({
        t: now,
        delivered: c.delivered,
        rate: rate,
        depth: c.mailbox_depth,
        p99: latency.p99_ms === undefined ? null : latency.p99_ms,
      });
      if (row.samples.length > HISTORY) row.samples.shift();

      const s = row.cells;
      s.state.textContent = c.state;
      s.state.dataset.value = c.state;
      s.state.className = "state state-" + (/^[a-z-]+$/.test(c.state) ? c.state : "other");
      s.state.title = c.reason || "";
      s.version.textContent = String(c.version || "").slice(0, 12);
      s.version.title = c.version || "";
      setNumber(s.mailbox, c.mailbox_depth);
      s.mailbox.append(" ", sparkline(row.samples.map((x) => x.depth), "depth"));
      setNumber(s.delivered, c.delivered);
      setNumber(s.rate, rate === null ? 0 : rate, rate === null ? "–" : rate.toFixed(rate < 10 ? 1 : 0));
      s.rate.append(" ", sparkline(row.samples.map((x) => x.rate), "rate"));
      setNumber(s.failed, c.failed);
      s.failed.classList.toggle("bad", c.failed > 0);
      setNumber(s.deadLettered, c.dead_lettered);
      s.deadLettered.classList.toggle("bad", c.dead_lettered > 0);
      setNumber(s.restarts, c.restarts);
      s.latency.dataset.p50 = latency.p50_ms === undefined ? "" : String(latency.p50_ms);
      s.latency.dataset.p99 = latency.p99_ms === undefined ? "" : String(latency.p99_ms);
      s.latency.textContent = formatMs(latency.p50_ms) + " / " + formatMs(latency.p99_ms) + " ";
      s.latency.append(sparkline(row.samples.map((x) => x.p99), "latency"));

      if (renderKeyed(c, s.keyed)) anyKeyed = true;

      // Only a failed or stopped component can be restarted; the route refuses the others.
      const restartable = c.state === "failed" || c.state === "stopped";
      row.restart.hidden = !restartable;
      row.restart.disabled = !token();
      row.restart.textContent = token() ? "restart" : "restart (token)";
      row.restart.title = token()
        ? "POST /components/{id}/restart with the management token"
        : "restarts need the management token `courier run` printed; enter it above";
    }
    for (const [id, row] of components) {
      if (!seen.has(id)) {
        row.tr.remove();
        row.lettersRow.remove();
        components.delete(id);
        openLetters.delete(id);
      }
    }
    for (const th of document.querySelectorAll("th.keyed")) th.hidden = !anyKeyed;
    for (const row of components.values()) row.cells.keyed.hidden = !anyKeyed;
    $("component-count").textContent = "(" + list.length + ")";
  }

  // The hook for keyed actors (many instances of one component, one per key), which the
  // runtime does not have yet: once `GET /components` gives a component a `keyed` object,
  // `{"actors": N}`, its count shows in the "keyed actors" column, which stays hidden until
  // some component has one. Returns whether this one had it.
  function renderKeyed(component, td) {
    const keyed = component.keyed;
    if (!keyed || typeof keyed.actors !== "number") {
      td.textContent = "";
      delete td.dataset.value;
      return false;
    }
    setNumber(td, keyed.actors);
    return true;
  }

  function deadLetterRow(letter, withTarget) {
    const tr = el("tr");
    tr.dataset.deadLetter = "";
    const at = new Date(letter.at_ms);
    tr.append(el("td", "at", isNaN(at) ? "" : at.toLocaleTimeString("en-GB")));
    const sender = el("td", "id", letter.sender);
    sender.dataset.field = "sender";
    tr.append(sender);
    if (withTarget) {
      const target = el("td", "id", letter.target);
      target.dataset.field = "target";
      tr.append(target);
    }
    tr.append(el("td", "", letter.kind));
    // The first line says why; a trap's backtrace follows it, in the cell's title.
    const fullReason = String(letter.reason || "");
    const reason = el("td", "reason", fullReason.split("\n", 1)[0]);
    reason.dataset.field = "reason";
    reason.title = fullReason;
    tr.append(reason);
    const bytes = el("td", "num", formatCount(letter.payload_len));
    tr.append(bytes);
    const preview = String(letter.payload_preview || "");
    const payload = el(
      "td",
      "payload",
      preview.length > PREVIEW_CHARS ? preview.slice(0, PREVIEW_CHARS) + "…" : preview,
    );
    payload.dataset.field = "payload";
    payload.title = preview;
    tr.append(payload);
    return tr;
  }

  function renderDeadLetters(letters) {
    const tbody = $("dead-letters").tBodies[0];
    // Newest first.
    tbody.replaceChildren(...letters.slice().reverse().map((l) => deadLetterRow(l, true)));
    $("dead-letter-note").textContent = letters.length
      ? "(latest " + letters.length + ")"
      : "(none)";
  }

  async function refreshLetters(id) {
    const row = components.get(id);
    if (!row) return;
    const path =
      "/dead-letters?target=" + encodeURIComponent(id) + "&limit=" + DEAD_LETTERS_PER_COMPONENT;
    let content;
    try {
      const letters = await getJson(path);
      if (letters.length === 0) {
        content = el("p", "muted", "no dead letters kept for " + id);
      } else {
        content = el("table", "nested");
        const body = el("tbody");
        body.append(...letters.slice().reverse().map((l) => deadLetterRow(l, false)));
        content.append(body);
      }
    } catch (error) {
      content = el("p", "bad", "could not read its dead letters: " + error.kind);
    }
    row.lettersCell.replaceChildren(content);
  }

  function toggleLetters(id) {
    const row = components.get(id);
    if (!row) return;
    if (openLetters.has(id)) {
      openLetters.delete(id);
      row.lettersRow.hidden = true;
    } else {
      openLetters.add(id);
      row.lettersRow.hidden = false;
      refreshLetters(id);
    }
  }

  async function restartComponent(id) {
    const result = $("action-result");
    if (!token()) {
      result.textContent = "restarting " + id + " needs the management token: enter it above";
      return;
    }
    result.textContent = "restarting " + id + "…";
    try {
      const response = await fetch("/components/" + encodeURIComponent(id) + "/restart", {
        method: "POST",
        headers: headers(),
        cache: "no-store",
      });
      const body = await response.json().catch(() => ({}));
      result.textContent = response.ok
        ? "restarted " + id
        : "restart of " + id + " refused (" + response.status + " " + (body.error || "") +
          "): " + (body.message || "");
    } catch (error) {
      result.textContent = "restart of " + id + " failed: " + error.message;
    }
  }

  function renderLattice(lattice) {
    const table = $("lattice-hosts");
    if (!lattice) {
      table.hidden = true;
      $("lattice-summary").textContent = "(this host joined no lattice)";
      return;
    }
    table.hidden = false;
    $("lattice-summary").textContent =
      "(" + lattice.lattice + ", this host " + lattice.host + ", " + lattice.hosts.length +
      " other host" + (lattice.hosts.length === 1 ? "" : "s") + ")";
    const rows = lattice.hosts.map((h) => {
      const tr = el("tr");
      tr.dataset.host = h.host;
      const served = el("td", "", h.served.join(", "));
      served.dataset.field = "served";
      tr.append(
        el("td", "id", h.host),
        served,
        el("td", "", h.replicated.concat(h.keyed.map((id) => id + " (keyed)")).join(", ")),
        el("td", "", h.topics.join(", ")),
        el("td", "num", (h.last_heard_ms / 1000).toFixed(1) + " s ago"),
      );
      return tr;
    });
    table.tBodies[0].replaceChildren(...rows);
  }

  function setStatus(kind, text) {
    const status = $("status");
    status.dataset.status = kind;
    status.textContent = text;
  }

  async function poll() {
    try {
      const [list, letters, lattice] = await Promise.all([
        getJson("/components"),
        getJson("/dead-letters?limit=" + DEAD_LETTERS_SHOWN),
        getJson("/lattice").catch((error) => {
          if (error.kind === "no-lattice") return null;
          throw error;
        }),
      ]);
      renderComponents(list);
      renderDeadLetters(letters);
      renderLattice(lattice);
      for (const id of openLetters) refreshLetters(id);
      polls += 1;
      document.body.dataset.polls = String(polls);
      setStatus("live", "live, updated " + new Date().toLocaleTimeString("en-GB"));
    } catch (error) {
      if (error.status === 401) {
        setStatus("token", "this ingress asks for its token on every route: enter it above");
      } else {
        setStatus("down", "cannot reach the runner (" + (error.kind || error.message) + ")");
      }
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  function showToken() {
    const state = $("token-state");
    state.dataset.token = token() ? "set" : "none";
    state.textContent = token()
      ? "token kept for this tab"
      : "no token: restarts are refused";
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    showToken();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showToken();
  });
  showToken();
  poll();
})();
