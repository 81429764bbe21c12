/* GRID_XFER status page, served by CouchDB from _design/gridxfer.
 *
 * Plain JavaScript, no library, no file from elsewhere. Every number comes from
 * the reduce views of the design document this page is attached to (relative
 * URLs, so it works under any database name and behind a proxy prefix); the
 * arithmetic mirrors GRID_XFER/status.py. Auto-refresh polls the database's
 * update_seq and reloads the views when it changed (or every minute, for the
 * rates); no _changes feed is held open.
 */
(function () {
  "use strict";

  var STATES = ["todo", "locked", "staging", "archiving", "done", "error"];
  var HELD = ["locked", "staging", "archiving"];
  var OPEN = ["todo"].concat(HELD);
  var WINDOW = 900;      // seconds of completions the rate is measured over
  var BUCKET = 60;       // the finished view's time bucket
  var PAGE = 50;         // tokens listed per page
  var STALE = 60;        // reload the views at least this often (rates move)
  var SHARE = 5;         // wait at least this many times a reload's duration between reloads

  var VIEW = "_view/";   // relative to /<db>/_design/gridxfer/
  var DB = "../../";     // the database itself

  var codes = {};
  var nights = [];
  var ui = {night: null, tokensState: null, tokensShown: PAGE, seq: null, loaded: 0,
            busy: false, pending: false, timer: null, serverSkew: 0, took: 0};

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "className") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }

  function now() { return Date.now() / 1000 + ui.serverSkew; }

  // -- talking to CouchDB ---------------------------------------------------------
  function getJSON(url) {
    return fetch(url, {credentials: "same-origin", cache: "no-store",
                       headers: {Accept: "application/json"}}).then(function (resp) {
      var date = resp.headers.get("Date");
      if (date) {
        // Measure rates on the server's clock, not the browser's.
        var server = Date.parse(date) / 1000;
        if (!isNaN(server)) ui.serverSkew = server - Date.now() / 1000;
      }
      if (!resp.ok) {
        return resp.text().then(function (body) {
          var reason = body;
          try { var j = JSON.parse(body); reason = j.reason || j.error || body; } catch (e) { /* text */ }
          throw new Error("HTTP " + resp.status + " for " + url.split("?")[0] + ": " + reason);
        });
      }
      return resp.json();
    });
  }

  function view(name, params) {
    var parts = [];
    Object.keys(params || {}).forEach(function (k) {
      var v = params[k];
      var json = ["key", "startkey", "endkey"].indexOf(k) >= 0 || typeof v === "boolean";
      parts.push(k + "=" + encodeURIComponent(json ? JSON.stringify(v) : String(v)));
    });
    return getJSON(VIEW + name + (parts.length ? "?" + parts.join("&") : ""));
  }

  function nightRange(night) { return night === null ? {} : {startkey: [night], endkey: [night, {}]}; }

  // -- gathering (the same queries as GRID_XFER/status.py) ----------------------
  function gather() {
    var t = now();
    var start = Math.floor((t - WINDOW) / BUCKET) * BUCKET;
    return Promise.all([
      view("by_state", {group_level: 2}),
      view("errors", {group_level: 2}),
      view("finished", {group_level: 2, startkey: [start], endkey: [t, {}]}),
      view("holders", {group_level: 2})
    ]).then(function (res) {
      var byNight = {};
      res[0].rows.forEach(function (row) {
        var n = row.key[0], s = row.key[1];
        var ns = byNight[n] || (byNight[n] = {night: n, states: {}, bytes: {}, errors: {},
                                               workers: 0, done: 0, failed: 0, rbytes: 0, span: 0});
        ns.states[s] = row.value.count;
        ns.bytes[s] = row.value.sum;
      });
      res[1].rows.forEach(function (row) {
        var ns = byNight[row.key[0]];
        if (ns && row.key[1] !== null) ns.errors[row.key[1]] = row.value;
      });
      var first = {};
      res[2].rows.forEach(function (row) {
        var ns = byNight[row.key[1]];
        if (!ns) return;
        ns.done += row.value[0];
        ns.failed += row.value[1];
        ns.rbytes += row.value[2];
        first[ns.night] = Math.min(first[ns.night] === undefined ? row.key[0] : first[ns.night], row.key[0]);
      });
      Object.keys(first).forEach(function (n) {
        byNight[n].span = Math.min(WINDOW + BUCKET, Math.max(BUCKET, t - first[n]));
      });
      res[3].rows.forEach(function (row) {
        var ns = byNight[row.key[0]];
        if (ns) ns.workers += 1;
      });
      return Object.keys(byNight).sort().map(function (n) { return derive(byNight[n]); });
    });
  }

  function derive(ns) {
    ns.total = 0; ns.remaining = 0; ns.held = 0; ns.bytesTotal = 0;
    STATES.forEach(function (s) {
      ns.states[s] = ns.states[s] || 0;
      ns.total += ns.states[s];
      ns.bytesTotal += ns.bytes[s] || 0;
    });
    OPEN.forEach(function (s) { ns.remaining += ns.states[s]; });
    HELD.forEach(function (s) { ns.held += ns.states[s]; });
    ns.bytesDone = ns.bytes.done || 0;
    ns.rate = ns.span ? (ns.done + ns.failed) / ns.span : 0;
    ns.byteRate = ns.span ? ns.rbytes / ns.span : 0;
    ns.eta = ns.remaining === 0 ? 0 : (ns.rate > 0 ? ns.remaining / ns.rate : null);
    return ns;
  }

  // -- formatting -----------------------------------------------------------------
  function bytes(n) {
    var units = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    var i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return i === 0 ? n + " bytes" : n.toFixed(1) + " " + units[i];
  }

  function duration(s) {
    if (s === null || s === undefined) return "-";
    s = Math.round(s);
    var neg = s < 0 ? "-" : "";
    s = Math.abs(s);
    if (s < 60) return neg + s + "s";
    if (s < 3600) return neg + Math.floor(s / 60) + "m" + pad(s % 60) + "s";
    if (s < 86400) return neg + Math.floor(s / 3600) + "h" + pad(Math.floor(s % 3600 / 60)) + "m";
    return neg + Math.floor(s / 86400) + "d" + pad(Math.floor(s % 86400 / 3600)) + "h";
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function rateText(ns) {
    return ns.span ? (ns.rate * 60).toFixed(1) + "/min, " + bytes(Math.round(ns.byteRate)) + "/s" : "-";
  }

  function etaText(ns) { return ns.remaining === 0 ? "finished" : duration(ns.eta); }

  function codeName(code) { return (codes[String(code)] || {}).name || "CODE_" + code; }

  function bar(ns, big) {
    var b = el("div", {className: "bar" + (big ? " big" : "")});
    b.title = Math.floor(100 * (ns.total - ns.remaining) / Math.max(ns.total, 1)) + "% finished";
    ["done", "error", "archiving", "staging", "locked", "todo"].forEach(function (s) {
      if (!ns.states[s]) return;
      var seg = el("span", {className: "seg-" + s, "data-state": s});
      seg.style.width = (100 * ns.states[s] / ns.total) + "%";
      seg.title = s + ": " + ns.states[s];
      b.appendChild(seg);
    });
    return b;
  }

  // -- rendering ------------------------------------------------------------------
  function renderNights() {
    var body = $("nights").tBodies[0];
    body.textContent = "";
    var total = 0, done = 0, errors = 0;
    nights.forEach(function (ns) {
      total += ns.total; done += ns.states.done; errors += ns.states.error;
      var row = el("tr", {className: "night" + (ns.night === ui.night ? " selected" : ""),
                          "data-night": ns.night});
      row.appendChild(el("td", {}, [el("a", {href: "#night=" + encodeURIComponent(ns.night),
                                              text: ns.night})]));
      var pct = Math.floor(100 * (ns.total - ns.remaining) / Math.max(ns.total, 1));
      row.appendChild(el("td", {}, [el("div", {className: "progress"}, [
        bar(ns, false), el("span", {className: "pct", "data-field": "percent", text: pct + "%"})])]));
      STATES.forEach(function (s) {
        row.appendChild(el("td", {className: "num state-" + s + (ns.states[s] ? "" : " zero"),
                                  "data-state": s, text: String(ns.states[s])}));
      });
      row.appendChild(el("td", {className: "num", "data-field": "bytes",
                                text: bytes(ns.bytesDone) + " / " + bytes(ns.bytesTotal)}));
      row.appendChild(el("td", {className: "num", "data-field": "workers", text: String(ns.workers)}));
      row.appendChild(el("td", {className: "num", "data-field": "rate", text: rateText(ns)}));
      row.appendChild(el("td", {className: "num", "data-field": "eta", text: etaText(ns)}));
      row.addEventListener("click", function (ev) {
        if (ev.target.tagName !== "A") location.hash = "#night=" + encodeURIComponent(ns.night);
      });
      body.appendChild(row);
    });
    $("no-nights").hidden = nights.length > 0;
    $("totals").textContent = nights.length ? "(" + nights.length + " nights, " + total + " tokens, " +
      done + " done, " + errors + " errors)" : "";
  }

  function renderDetail(ns, samples, holders) {
    $("detail-night").textContent = ns.night;
    var old = $("detail-bar");
    var fresh = bar(ns, true);
    fresh.id = "detail-bar";
    old.parentNode.replaceChild(fresh, old);
    $("detail-summary").textContent = ns.total + " tokens; " +
      Math.floor(100 * (ns.total - ns.remaining) / Math.max(ns.total, 1)) + "% finished; " +
      bytes(ns.bytesDone) + " of " + bytes(ns.bytesTotal) + " done; rate " + rateText(ns) +
      "; ETA " + etaText(ns) + "; " + ns.workers + " workers holding leases.";

    var states = $("states");
    states.textContent = "";
    STATES.forEach(function (s) {
      var b = el("button", {type: "button", "data-state": s,
                            className: s === ui.tokensState ? "active" : ""},
                 [el("span", {className: "swatch seg-" + s}), document.createTextNode(s),
                  el("span", {className: "count", text: String(ns.states[s])})]);
      b.addEventListener("click", function () {
        ui.tokensState = s;
        ui.tokensShown = PAGE;
        refresh();
      });
      states.appendChild(b);
    });

    var eb = $("errors").tBodies[0];
    eb.textContent = "";
    samples.forEach(function (e) {
      var link = e.token ? el("a", {href: DB + encodeURIComponent(e.token), text: e.token}) : null;
      eb.appendChild(el("tr", {"data-code": String(e.code)}, [
        el("td", {className: "num code", text: String(e.code)}),
        el("td", {className: "name", text: codeName(e.code)}),
        el("td", {className: "num count", text: String(e.count)}),
        el("td", {className: "message", text: e.message || ""}),
        el("td", {className: "token"}, [link])
      ]));
    });
    $("errors").hidden = samples.length === 0;
    $("no-errors").hidden = samples.length > 0;

    var hb = $("holders").tBodies[0];
    hb.textContent = "";
    var t = now();
    holders.forEach(function (h) {
      var expired = h.earliest > 0 && h.earliest < t;
      hb.appendChild(el("tr", {"data-worker": h.worker || ""}, [
        el("td", {text: h.worker || "?"}), el("td", {text: h.host || "?"}),
        el("td", {text: h.job || "-"}), el("td", {className: "num", text: String(h.tokens)}),
        el("td", {className: "num" + (expired ? " expired" : ""),
                  text: expired ? "EXPIRED " + duration(t - h.earliest) + " ago"
                                : "expires in " + duration(h.earliest - t)})
      ]));
    });
    $("holders").hidden = holders.length === 0;
    $("no-holders").hidden = holders.length > 0;
  }

  function renderTokens(state, rows) {
    $("tokens-state").textContent = state ? "in state " + state : "";
    var tb = $("tokens").tBodies[0];
    tb.textContent = "";
    var shown = rows.slice(0, ui.tokensShown);
    var t = now();
    shown.forEach(function (row) {
      var d = row.doc || {};
      var err = d.error && !Array.isArray(d.error) ? d.error.code + " " + (d.error.name || codeName(d.error.code)) + ": " +
                          (d.error.message || "") : "";
      tb.appendChild(el("tr", {"data-token": row.id}, [
        el("td", {}, [el("a", {href: DB + encodeURIComponent(row.id), text: row.id})]),
        el("td", {text: d.state || state}),
        el("td", {className: "num", text: bytes(d.bytes_total || 0)}),
        el("td", {className: "num", text: String(d.attempts || 0) + "/" + String(d.max_attempts || "?")}),
        el("td", {text: d.worker ? d.worker.id : ""}),
        el("td", {className: "when", text: d.updated ? duration(t - d.updated) + " ago" : ""}),
        el("td", {className: "message", text: err})
      ]));
    });
    $("tokens").hidden = !state || shown.length === 0;
    $("no-tokens").hidden = !state || shown.length > 0;
    $("more").hidden = rows.length <= ui.tokensShown;
  }

  function renderReport(night, doc) {
    // Shown only as the service writes it (GRID_XFER/status/reports.py checks more).
    var ok = doc && doc.type === "gridxfer-report" && doc.night === night &&
             typeof doc.text === "string";
    $("report-text").textContent = ok ? doc.text : "";
    $("report").hidden = !ok;
  }

  // -- one refresh ----------------------------------------------------------------
  function loadDetail(night) {
    var ns = null;
    nights.forEach(function (n) { if (n.night === night) ns = n; });
    if (!ns) {
      $("detail").hidden = true;
      return Promise.resolve();
    }
    var codeList = Object.keys(ns.errors).map(Number).sort(function (a, b) { return a - b; });
    var samples = Promise.all(codeList.map(function (code) {
      return view("errors", {reduce: false, limit: 1, key: [night, code]}).then(function (res) {
        var r = res.rows[0] || {};
        return {code: code, count: ns.errors[code], message: r.value, token: r.id};
      });
    }));
    var holders = view("holders", Object.assign({group_level: 4}, nightRange(night))).then(function (res) {
      return res.rows.map(function (row) {
        return {worker: row.key[1], host: row.key[2], job: row.key[3], tokens: row.value.count,
                earliest: row.value.min};
      });
    });
    var state = ui.tokensState;
    var tokens = state ? view("by_state", {reduce: false, include_docs: true, limit: ui.tokensShown + 1,
                                           startkey: [night, state], endkey: [night, state, {}]})
                         .then(function (res) { return res.rows; })
                       : Promise.resolve([]);
    // The nightly service's report of the night, if it wrote one (404: none yet).
    var report = getJSON(DB + encodeURIComponent("gridxfer-report-" + night))
      .catch(function () { return null; });
    return Promise.all([samples, holders, tokens, report]).then(function (res) {
      renderDetail(ns, res[0], res[1]);
      renderTokens(state, res[2]);
      renderReport(night, res[3]);
      $("detail").hidden = false;
    });
  }

  function refresh() {
    if (ui.busy) {
      ui.pending = true;  // a click or a new night while loading: load again after
      return Promise.resolve();
    }
    ui.busy = true;
    ui.pending = false;
    var started = Date.now();
    return gather().then(function (list) {
      nights = list;
      renderNights();
      return ui.night === null ? ($("detail").hidden = true) : loadDetail(ui.night);
    }).then(function () {
      ui.loaded = now();
      ui.took = (Date.now() - started) / 1000;
      $("problem").hidden = true;
      var stamp = new Date(ui.loaded * 1000);
      $("updated").textContent = "updated " + stamp.toLocaleTimeString();
      document.body.setAttribute("data-loaded", String(ui.loaded));
    }).catch(function (err) {
      $("problem").textContent = "Could not read the views: " + err.message;
      $("problem").hidden = false;
    }).then(function () {
      ui.busy = false;
      if (ui.pending) return refresh();
    });
  }

  // -- auto-refresh: poll update_seq, reload on change ---------------------------
  function tick() {
    getJSON(DB).then(function (info) {
      var seq = JSON.stringify(info.update_seq);
      if (!$("db").textContent && info.db_name) {
        $("db").textContent = info.db_name;
        document.title = "GRID_XFER status: " + info.db_name;
      }
      if (seq !== ui.seq || now() - ui.loaded >= STALE) {
        ui.seq = seq;
        return refresh();
      }
    }).catch(function (err) {
      $("problem").textContent = "Database not reachable: " + err.message;
      $("problem").hidden = false;
    }).then(schedule);
  }

  function schedule() {
    clearTimeout(ui.timer);
    var every = Number($("interval").value);
    // On a server that reduces at query time (pouchdb-server: one row read per
    // token), a big database makes a reload slow: keep the page's share of the
    // server's time small by waiting longer between reloads.
    if (every > 0) ui.timer = setTimeout(tick, Math.max(every, SHARE * ui.took) * 1000);
  }

  function route() {
    var m = /^#night=(.+)$/.exec(location.hash);
    var night = m ? decodeURIComponent(m[1]) : null;
    if (night !== ui.night) {
      ui.night = night;
      ui.tokensState = null;
      ui.tokensShown = PAGE;
    }
    refresh();
  }

  function start() {
    $("refresh").addEventListener("click", function () { refresh(); });
    $("interval").addEventListener("change", schedule);
    $("more").addEventListener("click", function () { ui.tokensShown += PAGE; refresh(); });
    $("close").addEventListener("click", function (ev) { ev.preventDefault(); location.hash = ""; });
    window.addEventListener("hashchange", route);
    var m = /[?&]interval=(\d+)/.exec(location.search);
    if (m) {
      var known = [].some.call($("interval").options, function (o) { return o.value === m[1]; });
      if (!known) $("interval").appendChild(el("option", {value: m[1], text: m[1] + " s"}));
      $("interval").value = m[1];
    }
    getJSON("codes.json").then(function (c) { codes = c; }).catch(function () { codes = {}; })
      .then(function () {
        var m2 = /^#night=(.+)$/.exec(location.hash);
        ui.night = m2 ? decodeURIComponent(m2[1]) : null;
        tick();
      });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
}());
