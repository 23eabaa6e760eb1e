// Small DOM and formatting helpers shared by the pages. No framework: `h()` builds elements,
// pages re-render the parts that change.

/**
 * h("div.card#main", {onclick, dataset: {...}, ...attrs}, ...children) → HTMLElement.
 * Children may be strings, numbers, nodes, arrays, or null/false (skipped). Text is never parsed
 * as HTML, so server data cannot inject markup.
 */
export function h(tag, attrs, ...children) {
  if (attrs === null || typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs)) {
    children.unshift(attrs);
    attrs = {};
  }
  const [, name = "div", rest = ""] = tag.match(/^([a-z0-9-]*)(.*)$/i);
  const el = document.createElement(name || "div");
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "class") el.className = [el.className, v].filter(Boolean).join(" ");
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces an element's children. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function svgIcon(name) {
  const paths = {
    plus: "M12 5v14M5 12h14",
    back: "M15 18l-6-6 6-6",
    download: "M12 4v11m0 0l-4-4m4 4l4-4M5 19h14",
    play: "M7 5l12 7-12 7z",
    pause: "M8 5v14M16 5v14",
    stop: "M6 6h12v12H6z",
    flask: "M9 3h6M10 3v6L5 19a1 1 0 0 0 1 1.5h12A1 1 0 0 0 19 19l-5-10V3",
    upload: "M12 20V9m0 0l-4 4m4-4l4 4M5 5h14",
    send: "M4 12l16-8-6 16-2-7z",
    logout: "M15 4h4v16h-4M10 8l-4 4 4 4M6 12h10",
    list: "M8 6h12M8 12h12M8 18h12M4 6h.01M4 12h.01M4 18h.01",
    close: "M6 6l12 12M18 6L6 18",
    check: "M5 12l5 5 9-10",
    alert: "M12 8v5m0 3.5v.01M10.3 3.9L2.4 18a2 2 0 0 0 1.7 3h15.8a2 2 0 0 0 1.7-3L13.7 3.9a2 2 0 0 0-3.4 0z",
  };
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  const p = document.createElementNS(ns, "path");
  p.setAttribute("d", paths[name] || "");
  svg.append(p);
  return svg;
}

// ---- formatting ----------------------------------------------------------------------------

export function fmtDate(unixSeconds) {
  if (!unixSeconds) return "—";
  const d = new Date(unixSeconds * 1000);
  return d.toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
}

/** Time of day for today's events, the date too for older ones. */
export function fmtTime(unixSeconds) {
  if (!unixSeconds) return "—";
  const d = new Date(unixSeconds * 1000);
  const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (d.toDateString() === new Date().toDateString()) return time;
  return `${d.toLocaleDateString(undefined, { month: "short", day: "numeric" })} ${time}`;
}

/** 3725 → "1h 2m 5s"; small values keep seconds. */
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr}h ${m % 60}m`;
  return `${Math.floor(hr / 24)}d ${hr % 24}h`;
}

/** Numbers for metric tables: 4 significant digits, exponent for tiny learning rates. */
export function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  if (typeof v !== "number") return String(v);
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a < 1e-3 || a >= 1e6) return v.toExponential(2);
  if (Number.isInteger(v)) return v.toLocaleString();
  return Number(v.toPrecision(digits)).toString();
}

export function fmtInt(v) {
  return v === null || v === undefined ? "—" : Math.round(v).toLocaleString();
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// ---- shared widgets ------------------------------------------------------------------------

const STATUS_LABELS = {
  validating_files: "Validating",
  queued: "Queued",
  running: "Running",
  paused: "Paused",
  pausing: "Pausing",
  succeeded: "Succeeded",
  failed: "Failed",
  cancelled: "Cancelled",
  cancelling: "Cancelling",
};

export function statusLabel(status) {
  return STATUS_LABELS[status] || (status ? status[0].toUpperCase() + status.slice(1).replace(/_/g, " ") : "Unknown");
}

export function statusBadge(status, extra) {
  return h(
    "span.badge",
    { class: `status-${status || "unknown"}`, dataset: { status: status || "" } },
    h("span.dot"),
    statusLabel(status),
    extra ? h("span.badge-extra", extra) : null,
  );
}

export function progressBar(fraction, label) {
  const pct = Math.max(0, Math.min(1, Number(fraction) || 0)) * 100;
  const fill = h("div.progress-fill");
  fill.style.width = `${pct.toFixed(1)}%`;
  return h(
    "div.progress",
    { role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": pct.toFixed(0), "aria-label": label || "progress" },
    fill,
  );
}

/** A red box with the server's message; `null` message → nothing. */
export function errorBox(message, title = "The server refused this") {
  if (!message) return null;
  return h("div.alert.alert-error", { role: "alert" }, svgIcon("alert"), h("div", h("strong", title), h("p", message)));
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  if (!box) return;
  const t = h("div.toast", { class: `toast-${kind}` }, message);
  box.append(t);
  setTimeout(() => t.classList.add("toast-out"), 3000);
  setTimeout(() => t.remove(), 3500);
}

/** An empty state for lists. */
export function empty(title, text, action) {
  return h("div.empty", h("div.empty-title", title), text ? h("p", text) : null, action || null);
}

/** Copy of `v` with keys whose value is "" / null / undefined left out. */
export function compact(v) {
  return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== "" && x !== null && x !== undefined));
}
