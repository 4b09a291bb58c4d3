// The status page's renderer: polls /page.json and redraws. No libraries,
// nothing fetched from elsewhere: the gateway is often offline.
"use strict";
const POLL_MS = 5000;
let lastOk = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

// Numbers as a technician reads them: 3 decimals below 1, 2 below 100, 1 above.
function fmt(v) {
  if (typeof v !== "number" || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (Number.isInteger(v) && a < 1e9) return String(v);
  return v.toFixed(a >= 100 ? 1 : a >= 1 ? 2 : 3);
}

function num(v, attrs) {
  return el("td", Object.assign({ class: "num", "data-value": typeof v === "number" ? String(v) : null }, attrs || {}), fmt(v));
}

function duration(s) {
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function when(ms) {
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  const t = d.toLocaleTimeString([], { hour12: false });
  return today ? t : d.toLocaleDateString() + " " + t;
}

function fill(id, rows, empty, columns) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
  if (rows.length === 0) body.append(el("tr", { class: "empty" }, el("td", { colspan: columns }, empty)));
}

function sparkline(points) {
  const w = 140, h = 30, pad = 3;
  if (points.length < 2) return el("span", { class: "note" }, "builds up, one point a minute");
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = x => pad + (x1 > x0 ? (x - x0) / (x1 - x0) : 1) * (w - 2 * pad);
  const sy = y => h - pad - (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5) * (h - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map(p => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "));
  svg.append(line);
  const last = points[points.length - 1];
  const dot = document.createElementNS(ns, "circle");
  dot.setAttribute("cx", sx(last[0]).toFixed(1));
  dot.setAttribute("cy", sy(last[1]).toFixed(1));
  dot.setAttribute("r", 2);
  svg.append(dot);
  const title = document.createElementNS(ns, "title");
  title.textContent = `${fmt(y0)} to ${fmt(y1)} over ${duration(Math.round((x1 - x0) / 1000))}`;
  svg.append(title);
  return svg;
}

function renderStatus(p) {
  const st = p.status;
  if (!st) {
    document.getElementById("summary").textContent = "status unavailable";
    return;
  }
  document.title = "Outpost " + st.gateway;
  document.getElementById("title").textContent = "Outpost gateway " + st.gateway;
  const link = st.mqtt_connected ? "connected" : "DISCONNECTED";
  document.getElementById("summary").replaceChildren(
    "site ", el("b", {}, st.site), " · state ", el("b", { id: "agent-state" }, st.state),
    ` · broker ${st.broker} (${link}) · up ${duration(st.uptime_s)} · updated ${when(p.now_ms)}`);
  const rows = st.services.map(s => {
    const ok = s.running === s.instances && s.instances > 0;
    const notes = [];
    if (s.canary) notes.push(`canary ${s.canary[0]} on ${s.canary[1]} %`);
    if (s.shadow) notes.push(`shadow ${s.shadow}`);
    if (s.probation) notes.push("on probation");
    return el("tr", { class: ok ? "ok" : "degraded", "data-service": s.name },
      el("td", { class: "name" }, s.name),
      el("td", { class: "version" }, s.version),
      el("td", { class: "health" }, el("span", { class: "badge " + (ok ? "ok" : "degraded") }, ok ? "ok" : "degraded"),
        notes.length ? " " + notes.join(", ") : ""),
      el("td", { class: "num instances" }, `${s.running}/${s.instances}`),
      num(s.queued, { class: "num queued" }),
      num(s.restarts, { class: "num restarts" }),
      el("td", { class: "uptime" }, duration(s.uptime_s)));
  });
  for (const [name, why] of st.rejected) {
    rows.push(el("tr", { class: "bad", "data-service": name }, el("td", { class: "name" }, name),
      el("td", { colspan: 6 }, "not loaded: " + why)));
  }
  fill("services", rows, "no services installed", 7);
}

function renderKpis(p) {
  const rows = p.kpis.map(k => {
    const points = k.trend.slice();
    if (typeof k.value === "number") points.push([p.now_ms, k.value]);
    const ys = points.map(q => q[1]);
    const span = points.length > 1 ? ` over ${duration(Math.round((p.now_ms - points[0][0]) / 1000))}` : "";
    const range = ys.length ? `${fmt(Math.min(...ys))} – ${fmt(Math.max(...ys))}${span}` : "";
    const better = k.better ? ` (${k.better} is better)` : "";
    return el("tr", { "data-kpi": k.service + "/" + k.name },
      el("td", {}, k.service),
      el("td", { title: (k.description || "") + better }, k.name),
      num(k.value, { class: "num value" }),
      el("td", {}, k.unit),
      el("td", {}, sparkline(points)),
      el("td", { class: "note" }, range));
  });
  fill("kpis", rows, "no service declares a KPI", 6);
  const per = Object.entries(p.subject_kpis).map(([s, n]) => `${s}: ${n}`).join(", ");
  const hours = (360 * p.trend_interval_s / 3600).toFixed(0);
  document.getElementById("kpi-note").textContent =
    `Trends: one sample every ${p.trend_interval_s} s, the last ${hours} h.` +
    (per ? ` Per truck, loader or zone figures are in /metrics (${per} series).` : "");
}

// Alarms, warnings and agent events are all listed; routine advice (one
// per load) only its latest few, so it never hides an alarm.
const ADVICE_SHOWN = 15;

function renderRecent(p) {
  let advice = 0;
  const shown = p.recent.filter(r => r.kind !== "advice" || ++advice <= ADVICE_SHOWN);
  const rows = shown.map(r => el("tr", { class: "item " + r.kind, "data-kind": r.kind, "data-service": r.service },
    el("td", { class: "time" }, when(r.ts_ms)),
    el("td", {}, el("span", { class: "badge " + r.kind }, r.kind)),
    el("td", { class: "service" }, r.service),
    el("td", { class: "subject" }, r.subject),
    el("td", { class: "summary", title: r.topic }, r.summary)));
  fill("recent", rows, "nothing yet", 5);
  const counts = {};
  for (const r of p.recent) counts[r.kind] = (counts[r.kind] || 0) + 1;
  const kept = Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ");
  document.getElementById("recent-note").textContent = kept
    ? `Kept: the latest ${kept} (at most 50 of each kind); advice shows its latest ${ADVICE_SHOWN}.`
    : "";
}

function renderShifts(p) {
  const rows = p.shifts.map(s => {
    const r = s.report;
    return el("tr", { "data-shift": s.shift, "data-site": s.site },
      el("td", { class: "shift" }, s.shift), el("td", {}, s.site),
      num(r.trucks_working, { class: "num trucks" }), num(r.cycles, { class: "num cycles" }),
      num(r.tonnes, { class: "num tonnes" }), num(r.tonnes_per_hour, { class: "num tph" }),
      num(r.payload_ratio), num(r.under), num(r.overload), num(r.queue_s_mean),
      num(r.litres), num(r.rejected_total, { class: "num rejected" }), el("td", {}, when(s.ts_ms)));
  });
  fill("shifts", rows, "no shift report yet", 13);
  const detail = document.getElementById("shift-detail");
  detail.replaceChildren();
  const latest = p.shifts[0];
  if (!latest) return;
  const r = latest.report;
  if (Array.isArray(r.trucks_rejected_only) && r.trucks_rejected_only.length) {
    detail.append(el("p", { class: "stale" },
      `Shift ${latest.shift}: every cycle rejected for ${r.trucks_rejected_only.join(", ")} (check the scale or the feed).`));
  }
  const table = (caption, cols, rows) => el("table", {},
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, ...cols.map(([h, key]) => el("th", { class: key === cols[0][1] ? null : "num" }, h)))),
    el("tbody", {}, ...rows.map(row => el("tr", {}, ...cols.map(([, key], i) =>
      i === 0 ? el("td", {}, row[key]) : num(row[key]))))));
  if (Array.isArray(r.per_truck) && r.per_truck.length) {
    detail.append(el("h3", {}, `Shift ${latest.shift} by truck`), table("", [["truck", "truck"], ["cycles", "cycles"],
      ["tonnes (t)", "tonnes"], ["mean payload (t)", "mean_payload_t"], ["t/h", "tonnes_per_hour"], ["under", "under"],
      ["overload", "overload"], ["mean queue (s)", "queue_s_mean"], ["refuels", "refuels"], ["fuel (l)", "litres"],
      ["rejected", "rejected_total"]], r.per_truck));
  }
  if (Array.isArray(r.per_loader) && r.per_loader.length) {
    detail.append(el("h3", {}, `Shift ${latest.shift} by loader`), table("", [["loader", "loader"], ["cycles", "cycles"],
      ["tonnes (t)", "tonnes"], ["mean payload (t)", "mean_payload_t"], ["mean deviation (t)", "mean_deviation_t"],
      ["under", "under"], ["overload", "overload"], ["mean queue (s)", "queue_s_mean"], ["mean loading (s)", "loading_s_mean"]],
      r.per_loader));
  }
}

async function refresh() {
  try {
    const res = await fetch("/page.json", { cache: "no-store" });
    if (!res.ok) throw new Error(res.status);
    const p = await res.json();
    renderStatus(p);
    renderKpis(p);
    renderRecent(p);
    renderShifts(p);
    lastOk = p.now_ms;
    document.getElementById("stale").hidden = true;
    document.body.setAttribute("data-loaded", "1");
  } catch (e) {
    if (lastOk !== null) {
      document.getElementById("stale-since").textContent = when(lastOk);
      document.getElementById("stale").hidden = false;
    } else {
      document.getElementById("summary").textContent = "No answer from the agent yet (" + e + ").";
    }
  }
}

refresh();
setInterval(refresh, POLL_MS);
