// status.js - fills the ppc status page from /status once a second and
// draws its two small charts on canvas. No library, nothing from elsewhere.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem("ppc-token") || "";
  let lastTop = null; // the newest error shown so far

  function fmtNum(n) { return n.toLocaleString("en-US"); }
  function fmtSec(s) {
    if (s === null || s === undefined) return "\u2013";
    if (s < 1e-3) return (s * 1e6).toFixed(0) + " \u00b5s";
    if (s < 1) return (s * 1e3).toFixed(1) + " ms";
    if (s < 120) return s.toFixed(2) + " s";
    return (s / 60).toFixed(1) + " min";
  }
  // a bucket's upper bound, short: 10µs, 1ms, 1s, 1min
  function shortSec(s) {
    if (s < 1e-3) return Math.round(s * 1e6) + "\u00b5s";
    if (s < 1) return Math.round(s * 1e3) + "ms";
    if (s < 60) return Math.round(s) + "s";
    return Math.round(s / 60) + "min";
  }
  function fmtBytes(b) {
    if (b < 0) return "\u2013";
    if (b < 1 << 20) return (b / 1024).toFixed(0) + " KiB";
    if (b < 1 << 30) return (b / 1048576).toFixed(1) + " MiB";
    return (b / 1073741824).toFixed(2) + " GiB";
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function pill(state) { return el("span", "pill " + state, state); }
  function row(cells, attrs) {
    const tr = el("tr");
    for (const k in attrs || {}) tr.setAttribute(k, attrs[k]);
    for (const c of cells) {
      const td = el("td", c.cls);
      if (c.node) td.appendChild(c.node); else td.textContent = c.text;
      if (c.name) td.dataset.f = c.name;
      tr.appendChild(td);
    }
    return tr;
  }
  function fill(tbody, rows) {
    tbody.replaceChildren(...rows);
  }
  function linkText(l) {
    if (!l) return "in process";
    return (l.tls ? "TLS" : "no TLS") + ", auth " + l.auth;
  }

  function setup(cv) {
    const r = window.devicePixelRatio || 1, w = cv.clientWidth || cv.width, h = cv.clientHeight || cv.height;
    if (cv.width !== Math.round(w * r)) { cv.width = Math.round(w * r); cv.height = Math.round(h * r); }
    const g = cv.getContext("2d");
    g.setTransform(r, 0, 0, r, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = "11px DejaVu Sans, sans-serif";
    return [g, w, h];
  }
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function axes(g, w, h, L, B, max) {
    g.strokeStyle = "#e2e7ee"; g.fillStyle = "#6b7686"; g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = Math.round(8 + (h - B - 8) * i / 4) + 0.5;
      g.beginPath(); g.moveTo(L, y); g.lineTo(w - 4, y); g.stroke();
      const v = max * (4 - i) / 4;
      g.textAlign = "right"; g.textBaseline = "middle";
      g.fillText(v >= 1000 ? (v / 1000).toFixed(v % 1000 ? 1 : 0) + "k" : String(+v.toFixed(1)), L - 6, y);
    }
  }
  function drawRate(series) {
    const [g, w, h] = setup($("rate"));
    const L = 44, B = 20, max = niceMax(Math.max(...series));
    axes(g, w, h, L, B, max);
    const n = series.length, dx = (w - 4 - L) / (n - 1), y0 = h - B;
    const yOf = (v) => y0 - (y0 - 8) * v / max;
    g.beginPath(); g.moveTo(L, y0);
    series.forEach((v, i) => g.lineTo(L + i * dx, yOf(v)));
    g.lineTo(L + (n - 1) * dx, y0); g.closePath();
    g.fillStyle = "rgba(47,111,222,0.15)"; g.fill();
    g.beginPath();
    series.forEach((v, i) => (i ? g.lineTo : g.moveTo).call(g, L + i * dx, yOf(v)));
    g.strokeStyle = "#2f6fde"; g.lineWidth = 2; g.stroke();
    g.fillStyle = "#6b7686"; g.textBaseline = "alphabetic";
    g.textAlign = "left"; g.fillText("-60 s", L, h - 5);
    g.textAlign = "center"; g.fillText("-30 s", L + (w - 4 - L) / 2, h - 5);
    g.textAlign = "right"; g.fillText("now", w - 4, h - 5);
  }
  function drawHist(hist) {
    const [g, w, h] = setup($("hist"));
    const c = hist.counts, L = 44, B = 20, max = niceMax(Math.max(...c));
    axes(g, w, h, L, B, max);
    const labels = hist.bounds_seconds.map(shortSec).concat(["more"]);
    const n = c.length, bw = (w - 4 - L) / n, y0 = h - B;
    for (let i = 0; i < n; i++) {
      const bh = (y0 - 8) * c[i] / max;
      g.fillStyle = "#2f6fde";
      g.fillRect(L + i * bw + 3, y0 - bh, bw - 6, bh);
      g.fillStyle = "#6b7686"; g.textAlign = "center"; g.textBaseline = "alphabetic";
      g.fillText(labels[i], L + i * bw + bw / 2, h - 5);
      if (c[i]) { g.fillStyle = "#1c2430"; g.fillText(fmtNum(c[i]), L + i * bw + bw / 2, Math.max(18, y0 - bh - 4)); }
    }
  }

  function render(s) {
    $("role").textContent = s.role === "ppserver" ? "ppserver status" : "client status";
    const up = s.nodes.filter((n) => n.state === "up");
    $("t-nodes").textContent = up.length + " / " + s.nodes.length;
    $("t-cores").textContent = fmtNum(up.reduce((a, n) => a + n.cores, 0));
    $("t-done").textContent = fmtNum(s.jobs_done);
    $("t-rate").textContent = s.jobs_per_second_1m.toFixed(s.jobs_per_second_1m < 10 ? 1 : 0);
    $("t-queue").textContent = fmtNum(s.queue);
    $("t-pending").textContent = fmtNum(s.pending);
    $("t-errors").textContent = fmtNum(s.errors_total);
    fill($("nodes").tBodies[0], s.nodes.map((n) => row([
      { text: n.name, name: "name" }, { text: n.address, name: "address" },
      { node: pill(n.state), name: "state" }, { text: n.cores, cls: "n", name: "cores" },
      { text: n.inflight, cls: "n", name: "inflight" }, { text: fmtNum(n.jobs), cls: "n", name: "jobs" },
      { text: fmtSec(n.job_seconds), cls: "n" },
      { text: n.jobs ? fmtSec(n.job_seconds / n.jobs) : "\u2013", cls: "n" },
      { text: linkText(n.link) }], { "data-node": n.name, "data-jobs": n.jobs })));
    fill($("workers").tBodies[0], s.workers.map((w) => row([
      { text: w.pid, cls: "n" }, { node: pill(w.state) }, { text: fmtSec(w.job_age_seconds), cls: "n" },
      { text: fmtNum(w.jobs), cls: "n", name: "jobs" }, { text: fmtBytes(w.rss_bytes), cls: "n" }],
      { "data-pid": w.pid })));
    $("clients-card").hidden = s.role !== "ppserver";
    fill($("clients").tBodies[0], s.clients.map((c) => row([
      { text: c.peer }, { node: pill(c.state) }, { text: c.active, cls: "n" }, { text: linkText(c.link) }])));
    const box = $("errors");
    if (!s.errors.length) {
      box.replaceChildren(el("p", "muted", "none"));
    } else {
      const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.dataset.key));
      const shown = s.errors.slice(0, 6);
      box.replaceChildren(...shown.map((e, i) => {
        const d = el("details", "err"), sm = el("summary");
        d.dataset.key = e.time + "|" + e.node + "|" + e.message;
        // the newest one opens by itself; others stay as the user left them
        if ((i === 0 && d.dataset.key !== lastTop) || open.has(d.dataset.key)) d.open = true;
        sm.append(el("span", "ty", e.type), document.createTextNode(": " + e.message),
                  el("span", "meta", "on " + e.node + ", " + new Date(e.time * 1000).toLocaleTimeString()));
        d.append(sm);
        if (e.traceback) d.append(el("pre", "", e.traceback));
        return d;
      }));
      lastTop = shown[0].time + "|" + shown[0].node + "|" + shown[0].message;
      if (s.errors.length > shown.length)
        box.append(el("p", "muted", (s.errors.length - shown.length) + " older errors in /status"));
    }
    drawRate(s.jobs_per_second.slice(0, -1)); // whole seconds: the current one is partial
    drawHist(s.histogram);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString() +
      ", engine up " + fmtSec(s.uptime_seconds);
  }

  async function poll() {
    try {
      const r = await fetch("/status", { cache: "no-store",
        headers: token ? { Authorization: "Bearer " + token } : {} });
      if (r.status === 401) {
        $("auth").hidden = false;
        $("conn").textContent = "needs the cluster secret"; $("conn").className = "conn lost";
      } else if (r.ok) {
        $("auth").hidden = true;
        render(await r.json());
        $("conn").textContent = "live"; $("conn").className = "conn live";
      } else {
        throw new Error("HTTP " + r.status);
      }
    } catch (e) {
      $("conn").textContent = "engine not reachable"; $("conn").className = "conn lost";
    }
    setTimeout(poll, 1000);
  }
  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value;
    sessionStorage.setItem("ppc-token", token);
  });
  poll();
})();
