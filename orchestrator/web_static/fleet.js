// The fleet page: one snapshot a second from /events (server-sent events), or /api/fleet when
// the browser has no EventSource. Every value from outside goes in as text (textContent),
// never as markup.
"use strict";

(function () {
  var POLL_MS = 2000;
  var STALE_MS = 5000;
  var lastSnapshotAt = 0;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function cell(row, text, className) {
    var td = el("td", className, text === undefined || text === null || text === "" ? "-" : text);
    row.appendChild(td);
    return td;
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    return span(seconds) + " ago";
  }

  function span(seconds) {
    var s = Math.abs(seconds);
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + Math.floor(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function ms(value) {
    return value === null || value === undefined ? "-" : Math.round(value) + " ms";
  }

  function clock(unixSeconds) {
    if (!unixSeconds) return "-";
    return new Date(unixSeconds * 1000).toLocaleTimeString();
  }

  function safeUrl(url) {
    return /^https?:\/\//i.test(url || "") ? url : null;
  }

  function link(text, href, title) {
    var url = safeUrl(href);
    if (!url) return el("span", null, text);
    var a = el("a", null, text);
    a.href = url;
    a.rel = "noreferrer";
    a.target = "_blank";
    if (title) a.title = title;
    return a;
  }

  function bar(value, total, className) {
    var outer = el("span", "bar " + (className || ""));
    var fill = el("span", "fill");
    var share = total > 0 ? Math.min(1, value / total) : 0;
    fill.style.width = (share * 100).toFixed(1) + "%";
    outer.appendChild(fill);
    return outer;
  }

  function fill(tableId, rows, render, emptyText, columns) {
    var body = document.querySelector("#" + tableId + " tbody");
    var fresh = document.createElement("tbody");
    rows.forEach(function (item) {
      var tr = el("tr");
      render(tr, item);
      fresh.appendChild(tr);
    });
    if (!rows.length) {
      var tr = el("tr", "empty");
      var td = el("td", "muted", emptyText);
      td.colSpan = columns;
      tr.appendChild(td);
      fresh.appendChild(tr);
    }
    body.replaceWith(fresh);
  }

  function serverState(row) {
    if (!row.online) return { text: "offline", css: "offline", beat: "last beat " + ago(row.last_beat_age_s) };
    if (!row.healthy) return { text: "down", css: "warn", beat: (row.fault || row.backend + " does not answer") + ", " + ago(row.last_beat_age_s) };
    if (row.cooling_s > 0) return { text: "cooling", css: "warn", beat: "cooling " + span(row.cooling_s) + " (" + row.failures + " failed), " + ago(row.last_beat_age_s) };
    if (row.failures) return { text: "probing", css: "warn", beat: "probing after " + row.failures + " failed, " + ago(row.last_beat_age_s) };
    return { text: "online", css: "online", beat: ago(row.last_beat_age_s) };
  }

  function renderServer(tr, row) {
    var state = serverState(row);
    tr.setAttribute("data-server", row.id);
    tr.className = state.css;
    var stateCell = cell(tr, "");
    stateCell.textContent = "";
    stateCell.appendChild(el("span", "dot " + state.css));
    stateCell.appendChild(el("span", "state", state.text));
    cell(tr, row.id, "server-id");
    cell(tr, row.location);
    var tailnet = row.tailscale_name && row.tailscale_ip ? row.tailscale_name + " (" + row.tailscale_ip + ")" : (row.tailscale_name || row.tailscale_ip);
    cell(tr, tailnet);
    cell(tr, row.backend);
    var load = cell(tr, "", "load");
    load.textContent = "";
    load.appendChild(bar(row.inflight, row.capacity, row.online ? "" : "off"));
    load.appendChild(el("span", "load-text", row.online ? row.inflight + "/" + row.capacity : row.inflight + "/-"));
    var slots = Object.keys(row.model_slots || {}).map(function (model) {
      return model + " " + ((row.inflight_models || {})[model] || 0) + "/" + row.model_slots[model];
    });
    cell(tr, slots.join(", "));
    cell(tr, ms(row.latency_ms), "num");
    cell(tr, row.tokens_per_s === null || row.tokens_per_s === undefined ? "-" : row.tokens_per_s.toFixed(1), "num");
    var loaded = (row.loaded || []).join(", ");
    if (row.loading && row.loading.length) loaded += (loaded ? " " : "") + "(loading " + row.loading.join(", ") + ")";
    cell(tr, loaded);
    cell(tr, state.beat, "heartbeat");
    cell(tr, row.queued, "num");
  }

  function renderTiles(snapshot) {
    var totals = snapshot.totals;
    var outcomes = totals.outcomes || {};
    var minutes = snapshot.per_minute || [];
    var thisMinute = minutes.length ? minutes[minutes.length - 1].outcomes : {};
    var tiles = [
      ["servers online", totals.online + "/" + totals.servers, "online"],
      ["slots busy", totals.inflight + "/" + totals.capacity, "slots"],
      ["queued", totals.queued, "queued"],
      ["jobs in flight", totals.active_jobs, "active"],
      ["answered", outcomes.answered || 0, "answered"],
      ["scored", outcomes.scored || 0, "scored"],
      ["answered this minute", thisMinute.answered || 0, "minute"],
      ["dead letters", totals.dead_letters, "dead"],
    ];
    var box = document.getElementById("tiles");
    var fresh = el("section", "tiles");
    fresh.id = "tiles";
    fresh.setAttribute("aria-label", "totals");
    tiles.forEach(function (tile) {
      var div = el("div", "tile");
      div.setAttribute("data-total", tile[2]);
      div.appendChild(el("div", "value", tile[1]));
      div.appendChild(el("div", "label", tile[0]));
      fresh.appendChild(div);
    });
    box.replaceWith(fresh);
  }

  function renderMinutes(minutes) {
    var rows = minutes.slice().reverse();
    var most = 1;
    rows.forEach(function (m) {
      var sum = 0;
      Object.keys(m.outcomes).forEach(function (k) { sum += m.outcomes[k]; });
      most = Math.max(most, sum);
    });
    fill("per-minute", rows, function (tr, m) {
      var o = m.outcomes;
      var sum = 0;
      Object.keys(o).forEach(function (k) { sum += o[k]; });
      cell(tr, new Date(m.minute_start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
      ["answered", "scored", "skipped", "dead", "score_lost"].forEach(function (name) {
        cell(tr, o[name] || 0, "num" + (name === "dead" && o[name] ? " bad" : ""));
      });
      var td = cell(tr, "");
      td.textContent = "";
      td.appendChild(bar(sum, most, "minute"));
    }, "nothing yet", 7);
  }

  function renderLetters(letters) {
    var kinds = [["dead", "dead letters"], ["lost_scores", "lost scores"], ["broker", "broker dead letters"], ["refused", "refused messages"]];
    var now = Date.now() / 1000;
    fill("letters", kinds, function (tr, kind) {
      var kept = letters[kind[0]] || { count: 0 };
      cell(tr, kind[1]);
      cell(tr, kept.count, "num" + (kept.count ? " bad" : ""));
      cell(tr, kept.newest_at ? ago(now - kept.newest_at) : "-");
    }, "", 3);
  }

  // Flower's page of the job's latest generate task, else its task list.
  function jobLink(id, taskId, flower) {
    var target = !flower ? null : taskId ? flower + "/task/" + encodeURIComponent(taskId) : flower + "/tasks";
    return link(id, target, "task detail in Flower");
  }

  function renderActive(rows, total, flower) {
    document.getElementById("active-count").textContent = rows.length < total ? "(" + rows.length + " of " + total + ")" : "(" + total + ")";
    fill("active", rows, function (tr, job) {
      tr.setAttribute("data-job", job.id);
      cell(tr, "").replaceChildren(jobLink(job.id, job.task_id, flower));
      cell(tr, job.kind);
      cell(tr, job.state);
      cell(tr, job.attempt, "num");
      cell(tr, job.server_id);
      cell(tr, job.entity);
      cell(tr, span(job.age_s));
      cell(tr, job.deadline_in_s < 0 ? "overdue " + span(job.deadline_in_s) : span(job.deadline_in_s), job.deadline_in_s < 0 ? "bad" : "");
      cell(tr, job.last_error, "reason");
    }, "no job in flight", 9);
  }

  function renderRecent(rows, flower, now) {
    fill("recent", rows, function (tr, entry) {
      tr.setAttribute("data-job", entry.job_id);
      cell(tr, ago(now - entry.at));
      cell(tr, "").replaceChildren(jobLink(entry.job_id, entry.task_id, flower));
      cell(tr, entry.kind);
      cell(tr, entry.outcome, entry.outcome === "dead" || entry.outcome === "score_lost" ? "bad" : "");
      cell(tr, entry.server_id);
      cell(tr, entry.entity);
      cell(tr, ms(entry.latency_ms), "num");
      cell(tr, ms(entry.generation_ms), "num");
      cell(tr, entry.tokens_per_s === null || entry.tokens_per_s === undefined ? "-" : entry.tokens_per_s.toFixed(1), "num");
    }, "no reply yet", 9);
  }

  function renderDead(tableId, rows, flower, now, emptyText) {
    fill(tableId, rows, function (tr, job) {
      tr.setAttribute("data-job", job.id);
      cell(tr, "").replaceChildren(jobLink(job.id, job.task_id, flower));
      cell(tr, job.entity);
      cell(tr, job.finished_at ? ago(now - job.finished_at) : "-");
      var reason = cell(tr, job.reason, "reason");
      if (job.reason) reason.title = job.reason;
      var attempts = (job.attempts || []).map(function (a) {
        return "#" + a.attempt + " " + a.server_id + ": " + (a.error_kind || "") + (a.error ? " " + a.error : "");
      });
      cell(tr, attempts.join("\n"), "attempts");
    }, emptyText, 5);
  }

  function render(snapshot) {
    lastSnapshotAt = Date.now();
    var flower = safeUrl(snapshot.flower_url);
    var flowerLink = document.getElementById("flower-link");
    if (flower) flowerLink.href = flower;
    renderTiles(snapshot);
    fill("servers", snapshot.servers, renderServer, "no server has beaten yet", 12);
    renderMinutes(snapshot.per_minute || []);
    renderLetters(snapshot.letters || {});
    renderActive(snapshot.active || [], snapshot.active_total || 0, flower);
    renderRecent(snapshot.recent || [], flower, snapshot.at);
    renderDead("dead", snapshot.dead_letters || [], flower, snapshot.at, "no dead letter");
    renderDead("lost", snapshot.lost_scores || [], flower, snapshot.at, "no lost score");
    document.getElementById("updated").textContent = "updated " + clock(snapshot.at);
    connection("live", "live");
  }

  function connection(css, text) {
    var node = document.getElementById("connection");
    node.className = "connection " + css;
    node.textContent = text;
  }

  function receive(text) {
    try {
      render(JSON.parse(text));
    } catch (err) {
      connection("problem", "unreadable snapshot");
    }
  }

  function poll() {
    fetch("/api/fleet", { cache: "no-store", credentials: "same-origin" })
      .then(function (answer) {
        if (!answer.ok) throw new Error("HTTP " + answer.status);
        return answer.text();
      })
      .then(receive)
      .catch(function () { connection("problem", "no answer, retrying"); })
      .then(function () { setTimeout(poll, POLL_MS); });
  }

  function start() {
    if (!window.EventSource) {
      poll();
      return;
    }
    var source = new EventSource("/events");
    source.onmessage = function (event) { receive(event.data); };
    source.addEventListener("problem", function (event) {
      var problem = "no snapshot";
      try { problem = JSON.parse(event.data).error || problem; } catch (err) { /* keep the default */ }
      connection("problem", problem);
    });
    source.onerror = function () { connection("waiting", "reconnecting…"); };
    setInterval(function () {
      if (lastSnapshotAt && Date.now() - lastSnapshotAt > STALE_MS) connection("waiting", "no update for " + span((Date.now() - lastSnapshotAt) / 1000));
    }, 1000);
  }

  start();
})();
