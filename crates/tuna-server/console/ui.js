// Small DOM and formatting helpers shared by the pages. No framework: `h()` builds elements,
// pages re-render the parts that change.

import { lang, t } from "./i18n.js";

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
    copy: "M9 9h10v10H9zM5 15V5h10",
    code: "M8 8l-4 4 4 4M16 8l4 4-4 4",
    file: "M6 3h8l4 4v14H6zM14 3v4h4M9 12h6M9 16h6",
    trash: "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6M14 11v6",
    globe: "M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18zM3 12h18M12 3c2.5 2.5 3.5 5.5 3.5 9s-1 6.5-3.5 9c-2.5-2.5-3.5-5.5-3.5-9s1-6.5 3.5-9z",
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

/** The locale for dates and numbers: Chinese when the console is, else the browser's own. */
export function locale() {
  if (lang() === "zh") return "zh-CN";
  const nav = navigator.language || "en";
  return nav.toLowerCase().startsWith("zh") ? "en" : nav;
}

export function fmtDate(unixSeconds) {
  if (!unixSeconds) return "—";
  const d = new Date(unixSeconds * 1000);
  return d.toLocaleString(locale(), {
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
  const time = d.toLocaleTimeString(locale(), { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (d.toDateString() === new Date().toDateString()) return time;
  return `${d.toLocaleDateString(locale(), { month: "short", day: "numeric" })} ${time}`;
}

/** 3725 → "1h 2m 5s"; small values keep seconds. */
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "—";
  const s = Math.round(seconds);
  if (s < 60) return t("{s}s", { s });
  const m = Math.floor(s / 60);
  if (m < 60) return t("{m}m {s}s", { m, s: s % 60 });
  const hr = Math.floor(m / 60);
  if (hr < 48) return t("{h}h {m}m", { h: hr, m: m % 60 });
  return t("{d}d {h}h", { d: Math.floor(hr / 24), h: hr % 24 });
}

/** Numbers for metric tables: 4 significant digits, exponent for tiny learning rates. */
export function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  if (typeof v !== "number") return String(v);
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a < 1e-3 || a >= 1e6) return v.toExponential(2);
  if (Number.isInteger(v)) return v.toLocaleString(locale());
  return Number(v.toPrecision(digits)).toString();
}

export function fmtInt(v) {
  return v === null || v === undefined ? "—" : Math.round(v).toLocaleString(locale());
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

/** Status names as people read them. */
function statusLabels() {
  return {
    validating_files: t("Validating"),
    queued: t("Queued"),
    running: t("Running"),
    paused: t("Paused"),
    pausing: t("Pausing"),
    succeeded: t("Succeeded"),
    failed: t("Failed"),
    cancelled: t("Cancelled"),
    cancelling: t("Cancelling"),
  };
}

export function statusLabel(status) {
  const labels = statusLabels();
  if (Object.hasOwn(labels, status)) return labels[status];
  return status ? status[0].toUpperCase() + status.slice(1).replace(/_/g, " ") : t("Unknown");
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
    { role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": pct.toFixed(0), "aria-label": label || t("progress") },
    fill,
  );
}

/** A red box with the server's message; `null` message → nothing. */
export function errorBox(message, title = t("The server refused this")) {
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

/** Puts `text` on the clipboard; the older `execCommand` way where the async API is unavailable. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return;
  } catch {
    /* not a secure context, or permission refused: fall back */
  }
  const area = h("textarea", { style: { position: "fixed", top: "-1000px", opacity: "0" } });
  area.value = text;
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error(t("The browser did not allow copying."));
}

/** A small button that copies `text` (an id, a snippet) and says so. */
export function copyButton(text, label = t("Copy")) {
  const btn = h(
    "button.btn.btn-xs.btn-copy",
    {
      type: "button",
      title: label,
      "aria-label": `${label}: ${text.length > 60 ? text.slice(0, 60) + "…" : text}`,
      dataset: { copy: text },
      onclick: async (e) => {
        e.stopPropagation();
        try {
          await copyText(text);
          btn.classList.add("copied");
          btn.lastChild.textContent = t("Copied");
          setTimeout(() => {
            btn.classList.remove("copied");
            btn.lastChild.textContent = label;
          }, 1500);
        } catch (ex) {
          toast(ex.message, "error");
        }
      },
    },
    svgIcon("copy"),
    h("span", label),
  );
  return btn;
}

/** An id in monospace with a copy button beside it. */
export function copyableId(text, attrs = {}) {
  return h("span.copyable", attrs, h("span.mono", text), copyButton(text));
}

/** Offers `text` as a file download named `name`. */
export function saveText(name, text, type = "text/plain") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
