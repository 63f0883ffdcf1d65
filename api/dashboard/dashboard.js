/* Switchyard operator dashboard: reads the API with an operator key, redraws every few seconds.
 *
 * The key comes from the URL fragment (#key=sy_...; a fragment never reaches the server) or the
 * form, is kept in sessionStorage (this tab only) and is removed from the address bar. Every
 * piece of data is written with textContent or SVG attributes, never as HTML.
 */
(function () {
  "use strict";

  var REFRESH_MS = 3000;
  var MINUTES = 30;
  var STORAGE = "switchyard.operatorKey";
  var SVG = "http://www.w3.org/2000/svg";
  var BASE = location.pathname.replace(/\/dashboard\/?$/, "");
  var COLORS = { thread: "#2563eb", celery: "#059669" };
  var SPARE = ["#7c3aed", "#d97706", "#0891b2"];
  var FAILED = "#dc2626";
  var TOOL_ROWS = 4;

  var timer = null;
  var stopped = false;
  var lastGood = null;

  // ---- small helpers -------------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function el(tag, props) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (k) {
        if (k === "text") node.textContent = props[k];
        else if (k === "cls") node.className = props[k];
        else node.setAttribute(k, props[k]);
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    return node;
  }

  function setText(id, value) { $(id).textContent = show(value); }

  function show(value) {
    if (value === null || value === undefined || value === "") return "—";
    return String(value);
  }

  function isNum(v) { return typeof v === "number" && isFinite(v); }

  function pct(v) {
    if (!isNum(v)) return "—";
    return (Math.round(v * 10) / 10).toString() + " %";
  }

  function secs(v) {
    if (!isNum(v)) return "—";
    if (v < 1) return Math.round(v * 1000) + " ms";
    if (v < 120) return (Math.round(v * 10) / 10) + " s";
    return Math.round(v / 60) + " min";
  }

  function two(n) { return (n < 10 ? "0" : "") + n; }

  function hms(date) {
    return two(date.getUTCHours()) + ":" + two(date.getUTCMinutes()) + ":" + two(date.getUTCSeconds());
  }

  function when(iso) {
    if (typeof iso !== "string") return "—";
    var d = new Date(iso);
    if (isNaN(d.getTime())) return iso;
    var today = new Date();
    var sameDay = d.getUTCFullYear() === today.getUTCFullYear() &&
      d.getUTCMonth() === today.getUTCMonth() && d.getUTCDate() === today.getUTCDate();
    // Today: the time to the second; another day: month-day and the minute (the cell's title
    // holds the full timestamp).
    var day = two(d.getUTCMonth() + 1) + "-" + two(d.getUTCDate());
    return sameDay ? hms(d) : day + " " + two(d.getUTCHours()) + ":" + two(d.getUTCMinutes());
  }

  function full(iso) {
    var d = new Date(iso);
    if (typeof iso !== "string" || isNaN(d.getTime())) return show(iso);
    return d.getUTCFullYear() + "-" + two(d.getUTCMonth() + 1) + "-" + two(d.getUTCDate()) + " " + hms(d);
  }

  function hm(iso) {
    var d = new Date(iso);
    return isNaN(d.getTime()) ? "" : two(d.getUTCHours()) + ":" + two(d.getUTCMinutes());
  }

  function pill(text, tone) { return el("span", { cls: "pill pill-" + tone, text: show(text) }); }

  function tone(state) {
    if (state === "ok") return "ok";
    if (state === "saturated" || state === "degraded" || state === "no_workers") return "warn";
    if (state === "stopped" || state === "broker_down" || state === "unreachable") return "bad";
    return "muted";
  }

  function colorOf(backend, index) {
    return COLORS[backend] || SPARE[index % SPARE.length];
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // ---- the key ---------------------------------------------------------------------------

  function takeKeyFromFragment() {
    var match = /(?:^#|&)key=([^&]*)/.exec(location.hash);
    if (!match) return;
    var key = decodeURIComponent(match[1]).trim();
    if (key) sessionStorage.setItem(STORAGE, key);
    history.replaceState(null, "", location.pathname + location.search);
  }

  function key() { return sessionStorage.getItem(STORAGE); }

  function askForKey(message) {
    stop();
    sessionStorage.removeItem(STORAGE);
    notice(message, "bad");
    $("board").hidden = true;
    $("forget").hidden = true;
    $("keyform").hidden = false;
    setConn("no key", "muted");
    $("keyinput").focus();
  }

  // ---- fetching --------------------------------------------------------------------------

  function get(path) {
    var headers = { Accept: "application/json" };
    var k = key();
    if (k) headers.Authorization = "Bearer " + k;
    return fetch(BASE + path, { headers: headers, cache: "no-store" }).then(function (res) {
      return res.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        return { status: res.status, body: body };
      });
    });
  }

  function detail(res) {
    return res && res.body && typeof res.body.detail === "string" ? res.body.detail : "";
  }

  function refresh() {
    timer = null;
    if (stopped || !key()) return;
    Promise.all([
      get("/dashboard/activity?minutes=" + MINUTES),
      get("/rollout"),
      get("/rollout/history?limit=10"),
      get("/rollout/cohorts"),
      get("/health"),
    ]).then(function (all) {
      var activity = all[0];
      if (activity.status === 401) {
        askForKey("The key was refused (401): it is unknown, malformed or revoked. " +
          "Enter an operator key.");
        return;
      }
      if (activity.status === 403) {
        askForKey("This key is a user's key (403): the dashboard needs an operator key, e.g. " +
          "from .switchyard/operator.key or `switchyard keys create --role operator`.");
        return;
      }
      var failed = all.filter(function (r, i) {
        // /health answers 503 with its full body when degraded: that is data, not a failure.
        return !(r.status === 200 || (i === 4 && r.status === 503 && r.body));
      });
      render(all);
      if (failed.length) {
        var first = failed[0];
        stale("the API answered " + first.status + (detail(first) ? ": " + detail(first) : ""));
      } else {
        fresh();
      }
    }).catch(function (err) {
      stale("the API cannot be reached (" + (err && err.message ? err.message : "network error") + ")");
    }).then(schedule, schedule);
  }

  function schedule() {
    if (stopped || timer !== null || document.hidden || !key()) return;
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  function start() {
    stopped = false;
    $("keyform").hidden = true;
    $("forget").hidden = false;
    $("board").hidden = false;
    setConn("loading", "muted");
    stop();
    refresh();
  }

  // ---- status line -----------------------------------------------------------------------

  function setConn(text, t) {
    var c = $("conn");
    c.textContent = text;
    c.className = "pill pill-" + t;
  }

  function notice(message, t) {
    var n = $("notice");
    if (!message) { n.hidden = true; n.textContent = ""; return; }
    n.textContent = message;
    n.className = "notice notice-" + (t || "bad");
    n.hidden = false;
  }

  function fresh() {
    lastGood = new Date();
    setConn("live", "ok");
    $("updated").textContent = "updated " + hms(lastGood) + " UTC";
    document.body.classList.remove("is-stale");
    notice("");
  }

  function stale(why) {
    setConn("stale", "bad");
    document.body.classList.add("is-stale");
    var since = lastGood ? "; showing data from " + hms(lastGood) + " UTC" : "";
    notice("Update failed: " + why + since + ". Retrying every " + REFRESH_MS / 1000 + " s.", "bad");
  }

  // ---- rendering -------------------------------------------------------------------------

  function render(all) {
    var parts = [
      [all[1], renderRollout],
      [all[2], renderHistory],
      [all[3], renderCohorts],
      [all[4], renderHealth],
      [all[0], renderActivity],
    ];
    parts.forEach(function (p) {
      var res = p[0];
      if (!res || !res.body || (res.status !== 200 && res.status !== 503)) return;
      try { p[1](res.body); } catch (e) { if (window.console) console.error(e); }
    });
  }

  function renderRollout(r) {
    setText("rollout-percentage", isNum(r.percentage) ? Math.round(r.percentage * 100) / 100 : null);
    setText("rollout-effective", pct(r.effective_percentage));
    setText("rollout-version", isNum(r.version) ? "v" + r.version : null);
    var uc = $("rollout-use-celery");
    clear(uc);
    uc.appendChild(r.use_celery === true ? pill("true", "ok") :
      r.use_celery === false ? pill("false", "muted") : pill(null, "muted"));
    setText("rollout-stickiness", r.stickiness);
    var by = [];
    if (r.updated_by) by.push("by " + r.updated_by);
    if (r.source) by.push("via " + r.source);
    if (r.updated_at) by.push("at " + full(r.updated_at) + " UTC");
    setText("rollout-by", by.join(" "));
    var ov = $("rollout-overrides");
    clear(ov);
    var names = r.tool_overrides && typeof r.tool_overrides === "object" ? Object.keys(r.tool_overrides).sort() : [];
    if (!names.length) ov.textContent = "none";
    names.forEach(function (name) {
      ov.appendChild(el("span", { cls: "chip", text: name + " → " + pct(r.tool_overrides[name]) }));
    });
    setText("rollout-explanation", r.explanation);
  }

  function backendCard(name, b, index) {
    var card = el("div", { cls: "backend" });
    card.style.borderTopColor = colorOf(name, index);
    if (!b) {
      card.appendChild(el("div", { cls: "backend-head" }, el("h3", { text: name }), pill("not configured", "muted")));
      card.appendChild(el("p", { cls: "muted small", text: name === "celery" ?
        "USE_CELERY is off in this process: no Celery backend." : "Not in this process." }));
      return card;
    }
    var state = b.state;
    if (state === undefined && typeof b.ok === "boolean") state = b.ok ? "ok" : "degraded";
    card.appendChild(el("div", { cls: "backend-head" }, el("h3", { text: name }), pill(state, tone(state))));
    var queued = b.queued;
    if (queued === undefined && isNum(b.waiting)) queued = b.waiting;
    var rows = [
      ["workers", isNum(b.workers) ? b.workers : null],
      ["queued", isNum(queued) ? queued : null],
      ["oldest waiting", secs(b.oldest_waiting_seconds)],
    ];
    if (isNum(b.running) || name === "thread") rows.push(["running", isNum(b.running) ? b.running : null]);
    if (isNum(b.capacity) || name === "thread") rows.push(["capacity", isNum(b.capacity) ? b.capacity : null]);
    var dl = el("dl", { cls: "stats" });
    rows.forEach(function (row) {
      dl.appendChild(el("div", null, el("dt", { text: row[0] }), el("dd", { text: show(row[1]) })));
    });
    card.appendChild(dl);
    if (b.queues && typeof b.queues === "object") {
      var qs = Object.keys(b.queues).sort();
      if (qs.length) {
        card.appendChild(el("p", { cls: "muted small", text: "queues: " + qs.map(function (q) {
          return q + " " + show(b.queues[q]);
        }).join(", ") }));
      }
    }
    return card;
  }

  function renderHealth(h) {
    var status = $("health-status");
    var label = h.status ? "health " + h.status : "health —";
    status.textContent = label;
    status.className = "pill pill-" + tone(h.status);
    var reasons = Array.isArray(h.reasons) ? h.reasons.slice() : [];
    if (typeof h.database === "string" && h.database !== "ok") reasons.unshift("database: " + h.database);
    var box = $("health-reasons");
    clear(box);
    box.hidden = reasons.length === 0;
    reasons.forEach(function (r) { box.appendChild(el("div", { text: String(r) })); });
    var cards = $("backend-cards");
    clear(cards);
    var backends = h.backends && typeof h.backends === "object" ? h.backends : {};
    var names = ["thread", "celery"];
    Object.keys(backends).sort().forEach(function (n) { if (names.indexOf(n) < 0) names.push(n); });
    names.forEach(function (n, i) { cards.appendChild(backendCard(n, backends[n], i)); });
  }

  function renderCohorts(c) {
    setText("cohorts-basis", c.basis ? c.basis + (c.capped ? " (capped: newest tasks only)" : "") : null);
    var body = $("cohorts-table").tBodies[0];
    clear(body);
    var rows = Array.isArray(c.backends) ? c.backends : [];
    if (!rows.length) {
      body.appendChild(el("tr", null, el("td", { colspan: "7", cls: "empty", text: "No task finished in this range yet." })));
      return;
    }
    var tools = Array.isArray(c.tools) ? c.tools : [];
    rows.forEach(function (b, i) {
      cohortRow(body, b, el("td", null, el("span", { cls: "dot", style: "background:" + colorOf(b.backend, i) }), show(b.backend)));
      var mine = tools.filter(function (t) { return t.backend === b.backend; });
      mine.slice(0, TOOL_ROWS).forEach(function (t) {
        cohortRow(body, t, el("td", { cls: "tool clip", title: show(t.tool_id), text: show(t.tool_id) }), "sub");
      });
      if (mine.length > TOOL_ROWS) {
        body.appendChild(el("tr", { cls: "sub" }, el("td", { colspan: "7", cls: "tool muted", text: "+ " + (mine.length - TOOL_ROWS) + " more tools" })));
      }
    });
  }

  function cohortRow(body, b, first, cls) {
    body.appendChild(el("tr", cls ? { cls: cls } : null,
      first,
      el("td", { cls: "num", text: show(b.completed) }),
      el("td", { cls: "num", text: show(b.failed) }),
      el("td", { cls: "num", text: pct(b.failure_rate) }),
      el("td", { cls: "num", text: secs(b.queue_wait_p50) + " / " + secs(b.queue_wait_p95) }),
      el("td", { cls: "num", text: secs(b.run_time_p50) + " / " + secs(b.run_time_p95) }),
      el("td", null, b.enough === true ? pill("yes", "ok") : pill(b.enough === false ? "not yet" : null, "muted"))
    ));
  }

  function change(e) {
    var before = e.before && isNum(e.before.percentage) ? pct(e.before.percentage) : null;
    var after = e.after && isNum(e.after.percentage) ? pct(e.after.percentage) : "—";
    var text = before === null ? after : before + " → " + after;
    var bo = overrides(e.before), ao = overrides(e.after);
    if (bo !== ao) text += "; overrides " + (ao || "none");
    return text;
  }

  function overrides(routing) {
    var o = routing && routing.tool_overrides && typeof routing.tool_overrides === "object" ? routing.tool_overrides : {};
    return Object.keys(o).sort().map(function (k) { return k + " " + pct(o[k]); }).join(", ");
  }

  function renderHistory(list) {
    var body = $("history-table").tBodies[0];
    clear(body);
    var events = Array.isArray(list) ? list.slice(0, 10) : [];
    if (!events.length) {
      body.appendChild(el("tr", null, el("td", { colspan: "6", cls: "empty", text: "No change recorded." })));
      return;
    }
    events.forEach(function (e) {
      body.appendChild(el("tr", null,
        el("td", { cls: "num", text: isNum(e.version) ? "v" + e.version : "—" }),
        el("td", { cls: "nowrap", title: show(e.at), text: when(e.at) }),
        el("td", { title: show(e.action), text: show(e.action) }),
        el("td", { title: show(e.actor), text: show(e.actor) }),
        el("td", { title: change(e) }, el("div", { cls: "clamp", text: change(e) })),
        el("td", { title: show(e.reason) }, el("div", { cls: "clamp", text: show(e.reason) }))
      ));
    });
  }

  function renderActivity(a) {
    setText("failure-rate", pct(a.failure_rate));
    $("activity-window").textContent = isNum(a.minutes) ? "· last " + a.minutes + " min, UTC" : "";
    var backends = Array.isArray(a.backends) ? a.backends : [];
    drawChart(backends);
    var legend = $("chart-legend");
    clear(legend);
    backends.forEach(function (b, i) {
      var color = colorOf(b.backend, i);
      legend.appendChild(el("span", { cls: "legend-item" },
        el("span", { cls: "swatch", style: "background:" + color }),
        show(b.backend) + " completed " + show(b.completed)));
      legend.appendChild(el("span", { cls: "legend-item" },
        el("span", { cls: "swatch " + (i === 0 ? "swatch-dashed" : "swatch-dotted"), style: "border-color:" + FAILED }),
        show(b.backend) + " failed " + show(b.failed) + " (" + pct(b.failure_rate) + ")"));
    });
    var body = $("failures-table").tBodies[0];
    clear(body);
    var failures = Array.isArray(a.recent_failures) ? a.recent_failures : [];
    if (!failures.length) {
      body.appendChild(el("tr", null, el("td", { colspan: "5", cls: "empty", text: "No failure in the window." })));
    }
    failures.forEach(function (f) {
      var id = show(f.task_id);
      var error = (f.error_code ? f.error_code + ": " : "") + show(f.error_message);
      body.appendChild(el("tr", null,
        el("td", { cls: "nowrap", title: show(f.ended_at), text: when(f.ended_at) }),
        el("td", { cls: "mono", title: id, text: id.slice(0, 8) }),
        el("td", { title: show(f.tool_id), text: show(f.tool_id) }),
        el("td", { text: show(f.backend) }),
        el("td", { title: error }, el("div", { cls: "clamp", text: error }))
      ));
    });
  }

  function niceMax(v) {
    if (v <= 4) return 4;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  function drawChart(backends) {
    var box = $("chart");
    clear(box);
    // Drawn at the box's own width (redrawn on every refresh), so text is never scaled.
    var W = Math.max(320, Math.round(box.clientWidth || 640)), H = 210, L = 34, R = 12, T = 10, B = 24;
    var series = backends.filter(function (b) { return Array.isArray(b.per_minute) && b.per_minute.length; });
    var n = series.length ? series[0].per_minute.length : 0;
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "tasks ended per minute" });
    var top = 0;
    series.forEach(function (b) {
      b.per_minute.forEach(function (m) { top = Math.max(top, m.completed || 0, m.failed || 0); });
    });
    var ymax = niceMax(top);
    var x = function (i) { return L + (n <= 1 ? 0 : (i * (W - L - R)) / (n - 1)); };
    var y = function (v) { return T + (H - T - B) * (1 - v / ymax); };
    [0, 0.5, 1].forEach(function (f) {
      var v = ymax * f;
      root.appendChild(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: f === 0 ? "axis" : "grid" }));
      var label = svg("text", { x: L - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" });
      label.textContent = String(Math.round(v * 10) / 10);
      root.appendChild(label);
    });
    if (n) {
      var pm = series[0].per_minute;
      [0, Math.floor((n - 1) / 2), n - 1].forEach(function (i, k) {
        var t = svg("text", { x: x(i), y: H - 6, class: "tick", "text-anchor": k === 0 ? "start" : k === 2 ? "end" : "middle" });
        t.textContent = hm(pm[i].minute);
        root.appendChild(t);
      });
    } else {
      var none = svg("text", { x: W / 2, y: H / 2, class: "tick", "text-anchor": "middle" });
      none.textContent = "no data";
      root.appendChild(none);
    }
    series.forEach(function (b, si) {
      var color = colorOf(b.backend, si);
      var done = b.per_minute.map(function (m, i) { return x(i) + "," + y(m.completed || 0); });
      var area = svg("polygon", {
        points: x(0) + "," + y(0) + " " + done.join(" ") + " " + x(n - 1) + "," + y(0),
        fill: color, "fill-opacity": 0.08, stroke: "none",
      });
      root.appendChild(area);
      root.appendChild(svg("polyline", { points: done.join(" "), fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" }));
      var bad = b.per_minute.map(function (m, i) { return x(i) + "," + y(m.failed || 0); });
      root.appendChild(svg("polyline", {
        points: bad.join(" "), fill: "none", stroke: FAILED, "stroke-width": 1.75,
        "stroke-dasharray": si === 0 ? "5 3" : "1.5 3", "stroke-linejoin": "round",
      }));
      b.per_minute.forEach(function (m, i) {
        if (m.failed) root.appendChild(svg("circle", { cx: x(i), cy: y(m.failed), r: 2.5, fill: FAILED }));
      });
    });
    // One invisible column per minute: hovering it tells that minute's counts.
    var step = n > 1 ? (W - L - R) / (n - 1) : W - L - R;
    for (var i = 0; i < n; i++) {
      var col = svg("rect", { x: x(i) - step / 2, y: T, width: step, height: H - T - B, class: "hover" });
      var title = svg("title", {});
      title.textContent = hm(series[0].per_minute[i].minute) + " UTC — " + series.map(function (b) {
        var m = b.per_minute[i] || {};
        return b.backend + ": " + (m.completed || 0) + " completed, " + (m.failed || 0) + " failed";
      }).join("; ");
      col.appendChild(title);
      root.appendChild(col);
    }
    box.appendChild(root);
  }

  // ---- wiring ----------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", function () {
    takeKeyFromFragment();
    $("keyform").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var k = $("keyinput").value.trim();
      if (!k) return;
      sessionStorage.setItem(STORAGE, k);
      $("keyinput").value = "";
      notice("");
      start();
    });
    $("forget").addEventListener("click", function () {
      stopped = true;
      askForKey("Key forgotten. Enter an operator key to open the dashboard again.");
    });
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) stop();
      else if (key() && !stopped) { stop(); refresh(); }
    });
    window.addEventListener("hashchange", function () {
      if (/key=/.test(location.hash)) { takeKeyFromFragment(); start(); }
    });
    if (key()) start();
    else askForKey("");
  });
})();
