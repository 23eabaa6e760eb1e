// Charts drawn by hand: a <canvas> line chart for training metrics (several series against the
// step, hover read-out, optional smoothing, crisp on high-DPI screens) and an inline-SVG bar
// chart for the dataset's token-length histogram. No library: a few hundred points per series is
// all a run produces.

import { plural, t } from "./i18n.js";
import { fmtNum, h } from "./ui.js";

const FONT = '11px system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans CJK SC", sans-serif';
const AXIS = "#8a94a6";
const GRID = "#eef1f5";

/** "Nice" tick values covering [lo, hi], about `n` of them. */
export function ticks(lo, hi, n = 4) {
  if (!(hi > lo)) {
    const d = Math.abs(lo) || 1;
    lo -= d * 0.5;
    hi += d * 0.5;
  }
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return { values: out, step, lo: Math.min(lo, out[0] ?? lo), hi: Math.max(hi, out[out.length - 1] ?? hi) };
}

/** Decimals that write every multiple of `step` exactly: 0.25 → 2, 0.5 → 1, 20 → 0. */
export function stepDecimals(step) {
  for (let d = 0; d < 10; d++) {
    const scaled = step * 10 ** d;
    if (Math.abs(scaled - Math.round(scaled)) < 1e-6 * Math.max(1, scaled)) return d;
  }
  return 10;
}

/**
 * Exponential moving average with bias correction (TensorBoard's "smoothing"): `weight` 0 is the
 * raw series, 0.9 averages over about the last ten points.
 */
export function smooth(points, weight) {
  if (!(weight > 0)) return points;
  let avg = 0;
  let norm = 0;
  return points.map((p) => {
    avg = avg * weight + (1 - weight) * p.y;
    norm = norm * weight + (1 - weight);
    return { x: p.x, y: avg / norm };
  });
}

export class LineChart {
  /**
   * @param {string} title shown above the plot
   * @param {{name: string, color: string, dashed?: boolean, smoothable?: boolean}[]} series
   * @param {{yFormat?: (v: number) => string, percent?: boolean, zeroBased?: boolean, smoothing?: number}} opts
   */
  constructor(title, series, opts = {}) {
    this.title = title;
    this.series = series;
    this.data = series.map(() => []);
    this.opts = opts;
    this.smoothing = opts.smoothing || 0;
    this.hover = null;
    this.canvas = h("canvas", { role: "img", "aria-label": t("{title} chart", { title }) });
    this.legend = h(
      "div.chart-legend",
      series.map((s) => {
        const sw = h("span.swatch", { class: s.dashed ? "dashed" : "" });
        sw.style.borderColor = s.color;
        return h("span.legend-item", sw, s.name);
      }),
    );
    this.readout = h("span.chart-readout");
    this.emptyNote = h("div.chart-empty", t("Waiting for the first step…"));
    this.el = h(
      "figure.chart",
      { dataset: { chart: opts.key || title } },
      h("figcaption", h("span.chart-title", title), this.readout),
      h("div.chart-canvas", this.canvas, this.emptyNote),
      series.length > 1 ? this.legend : null,
    );
    this.canvas.addEventListener("mousemove", (e) => this.onMove(e));
    this.canvas.addEventListener("mouseleave", () => {
      this.hover = null;
      this.draw();
    });
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(this.canvas);
  }

  /** `points[i]` is the i-th series as `[{x, y}]`, x ascending. */
  setData(points) {
    this.data = points.map((p) => p.filter((q) => Number.isFinite(q.x) && Number.isFinite(q.y)));
    this.emptyNote.hidden = this.data.some((p) => p.length > 0);
    this.el.dataset.points = String(this.data.reduce((n, p) => n + p.length, 0));
    this.draw();
  }

  /** Smoothing weight in [0, 1) for the series marked `smoothable`. */
  setSmoothing(weight) {
    this.smoothing = weight;
    this.el.dataset.smoothing = String(weight);
    this.draw();
  }

  destroy() {
    this.resize.disconnect();
  }

  /** The series as drawn: smoothed where asked, the raw points kept for the faint line. */
  shown() {
    return this.data.map((pts, i) => (this.series[i].smoothable && this.smoothing > 0 && pts.length > 2 ? smooth(pts, this.smoothing) : pts));
  }

  layout() {
    const all = this.data.flat();
    const xs = all.map((p) => p.x);
    const ys = all.map((p) => p.y);
    const xlo = Math.min(...xs, 0);
    let xhi = Math.max(...xs, 1);
    if (xhi <= xlo) xhi = xlo + 1;
    let ylo = Math.min(...ys);
    const yhi = Math.max(...ys);
    if (this.opts.zeroBased) ylo = Math.min(0, ylo);
    const pad = (yhi - ylo) * 0.08 || Math.abs(yhi) * 0.1 || 1;
    // Losses, norms, rates and accuracies are never negative: the axis stops at 0.
    const nonNegative = ylo >= 0;
    let lo = this.opts.zeroBased && ylo === 0 ? 0 : ylo - pad;
    if (nonNegative) lo = Math.max(0, lo);
    const yt = ticks(lo, yhi + pad);
    const xt = ticks(xlo, xhi, 5);
    return { xlo, xhi, ylo: yt.lo, yhi: yt.hi, yticks: yt.values, ystep: yt.step, xticks: xt.values.filter((v) => v > xlo && v <= xhi && Number.isInteger(v)) };
  }

  /** Tick labels: as many decimals as the tick step needs, so neighbours never read alike. */
  tickFormat(step) {
    if (this.opts.percent) {
      const d = Math.min(6, stepDecimals(step * 100));
      return (v) => `${(v * 100).toFixed(d)}%`;
    }
    if (this.opts.yFormat) return this.opts.yFormat;
    const d = Math.min(8, stepDecimals(step));
    return (v) => (Math.abs(v) >= 1e5 ? fmtNum(v, 3) : v.toFixed(d));
  }

  valueFormat() {
    return this.opts.percent ? (v) => `${fmtNum(v * 100, 3)}%` : this.opts.yFormat || ((v) => fmtNum(v, 4));
  }

  draw() {
    const c = this.canvas;
    const w = c.clientWidth;
    const hgt = c.clientHeight;
    if (!w || !hgt) return;
    const dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(hgt * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(hgt * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    if (!this.data.some((p) => p.length)) {
      this.readout.textContent = "";
      return;
    }
    const L = this.layout();
    const fmt = this.tickFormat(L.ystep);
    const readout = this.valueFormat();
    g.font = FONT;
    const left = Math.max(...L.yticks.map((v) => g.measureText(fmt(v)).width)) + 10;
    // Room below the plot for the x tick labels and the axis title.
    const box = { x0: left, x1: w - 8, y0: 6, y1: hgt - 32 };
    this.box = box;
    this.L = L;
    // A few pixels of inset keep points at either end whole.
    const X = (x) => box.x0 + 5 + ((x - L.xlo) / (L.xhi - L.xlo)) * (box.x1 - box.x0 - 10);
    const Y = (y) => box.y1 - ((y - L.ylo) / (L.yhi - L.ylo)) * (box.y1 - box.y0);

    // Grid and axis labels.
    g.lineWidth = 1;
    g.strokeStyle = GRID;
    g.fillStyle = AXIS;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (const v of L.yticks) {
      const y = Math.round(Y(v)) + 0.5;
      g.beginPath();
      g.moveTo(box.x0, y);
      g.lineTo(box.x1, y);
      g.stroke();
      g.fillText(fmt(v), box.x0 - 6, y);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    for (const v of L.xticks) g.fillText(String(v), X(v), box.y1 + 5);
    g.fillText(t("step"), (box.x0 + box.x1) / 2, box.y1 + 18);
    this.el.dataset.yticks = L.yticks.map(fmt).join("|");

    // Series: raw points faint under their smoothed line when smoothing is on.
    const shown = this.shown();
    g.save();
    g.beginPath();
    g.rect(box.x0, box.y0 - 2, box.x1 - box.x0, box.y1 - box.y0 + 4);
    g.clip();
    const line = (pts, color, width, dashed, alpha) => {
      g.globalAlpha = alpha;
      g.strokeStyle = color;
      g.lineWidth = width;
      g.setLineDash(dashed ? [5, 3] : []);
      g.beginPath();
      pts.forEach((p, j) => (j ? g.lineTo(X(p.x), Y(p.y)) : g.moveTo(X(p.x), Y(p.y))));
      g.stroke();
      g.setLineDash([]);
      g.globalAlpha = 1;
    };
    this.data.forEach((pts, i) => {
      const s = this.series[i];
      const smoothed = shown[i] !== pts;
      if (smoothed) line(pts, s.color, 1.25, s.dashed, 0.25);
      line(shown[i], s.color, 1.75, s.dashed, 1);
      // Sparse series (validation loss) get dots so single points show.
      if (pts.length < 40) {
        g.fillStyle = s.color;
        for (const p of pts) {
          g.beginPath();
          g.arc(X(p.x), Y(p.y), 2.5, 0, Math.PI * 2);
          g.fill();
        }
      }
    });
    g.restore();

    const named = (i, text) => (this.series.length > 1 ? `${this.series[i].name} ${text}` : text);
    if (this.hover !== null) {
      // Hover read-out: each series' value at exactly the hovered step; a series without a point
      // there (validation runs every few steps) is left out rather than shown from another step.
      const x = this.hover;
      g.strokeStyle = "#c3cad6";
      g.beginPath();
      g.moveTo(Math.round(X(x)) + 0.5, box.y0);
      g.lineTo(Math.round(X(x)) + 0.5, box.y1);
      g.stroke();
      const parts = this.data.map((pts, i) => {
        const j = pts.findIndex((p) => p.x === x);
        if (j < 0) return null;
        const y = shown[i][j].y;
        g.fillStyle = this.series[i].color;
        g.beginPath();
        g.arc(X(x), Y(y), 3, 0, Math.PI * 2);
        g.fill();
        return named(i, readout(y));
      });
      this.readout.textContent = `${t("step")} ${x} · ${parts.filter(Boolean).join(" · ")}`;
    } else {
      // The newest value of each series, named, with its step when the series ends earlier.
      const lastX = Math.max(...this.data.map((pts) => (pts.length ? pts[pts.length - 1].x : -Infinity)));
      const parts = this.data
        .map((pts, i) => {
          if (!pts.length) return null;
          const p = shown[i][pts.length - 1];
          const at = p.x === lastX ? "" : ` (${t("step")} ${p.x})`;
          return named(i, `${readout(p.y)}${at}`);
        })
        .filter(Boolean);
      this.readout.textContent = parts.length ? `${t("latest")} ${parts.join(" · ")}` : "";
    }
  }

  /** The step under the pointer: the nearest step that has a point in any series. */
  stepAt(clientX) {
    if (!this.box || !this.L) return null;
    const r = this.canvas.getBoundingClientRect();
    const px = clientX - r.left;
    const { x0, x1 } = this.box;
    if (px < x0 || px > x1) return null;
    const x = this.L.xlo + ((px - x0 - 5) / (x1 - x0 - 10)) * (this.L.xhi - this.L.xlo);
    let best = null;
    for (const p of this.data.flat()) if (best === null || Math.abs(p.x - x) < Math.abs(best - x)) best = p.x;
    return best;
  }

  onMove(e) {
    const step = this.stepAt(e.clientX);
    if (step === null) return;
    this.hover = step;
    this.draw();
  }
}

/**
 * The dataset's token-length histogram as an SVG bar chart. `buckets` are `{min, max, count}`
 * (`max: null` is open-ended); `limit` marks the maximum sequence length. Drawn at its natural
 * size (never scaled up), so its text stays 11 px however few the bars; a phone scales it down.
 */
export function histogram(buckets, limit) {
  const ns = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  };
  // Trim empty buckets at both ends so the bars that matter are wide.
  let first = buckets.findIndex((b) => b.count > 0);
  let last = buckets.length - 1 - [...buckets].reverse().findIndex((b) => b.count > 0);
  if (first < 0) {
    first = 0;
    last = buckets.length - 1;
  }
  first = Math.max(0, first - 1);
  last = Math.min(buckets.length - 1, last + 1);
  const shown = buckets.slice(first, last + 1);
  const W = Math.max(320, Math.min(560, shown.length * 84 + 44));
  const H = 180;
  const pad = { l: 36, r: 8, t: 18, b: 34 };
  const max = Math.max(1, ...shown.map((b) => b.count));
  // Bars at most 96 units wide, centred, so a file with few lengths does not get slabs.
  const bw = Math.min(96, (W - pad.l - pad.r) / shown.length);
  const x0 = pad.l + (W - pad.l - pad.r - bw * shown.length) / 2;
  const svg = mk("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "histogram", role: "img", "aria-label": t("Token length histogram") });
  const yt = ticks(0, max, 3).values.filter((v) => Number.isInteger(v));
  for (const v of yt) {
    const y = H - pad.b - (v / max) * (H - pad.t - pad.b);
    svg.append(mk("line", { x1: pad.l, x2: W - pad.r, y1: y, y2: y, stroke: GRID }));
    svg.append(mk("text", { x: pad.l - 6, y: y + 4, "text-anchor": "end", fill: AXIS, "font-size": 11 }, String(v)));
  }
  const short = (n) => (n >= 1024 ? `${n / 1024}k` : String(n));
  shown.forEach((b, i) => {
    const bh = (b.count / max) * (H - pad.t - pad.b);
    const x = x0 + i * bw;
    const over = isOver(b, limit);
    const rect = mk("rect", {
      x: x + 3,
      y: H - pad.b - bh,
      width: Math.max(1, bw - 6),
      height: Math.max(b.count ? 1.5 : 0, bh),
      rx: 2,
      fill: over ? "#e8833a" : "#2f7fb5",
      "data-over": over ? "true" : "false",
    });
    const range = b.max === null ? `≥ ${b.min}` : `${b.min}–${b.max - 1}`;
    rect.append(mk("title", {}, plural(b.count, "{n} example with {range} tokens", "{n} examples with {range} tokens", { range })));
    svg.append(rect);
    if (b.count) svg.append(mk("text", { x: x + bw / 2, y: H - pad.b - bh - 4, "text-anchor": "middle", fill: "#334155", "font-size": 11 }, String(b.count)));
    const label = b.max === null ? `≥${short(b.min)}` : `<${short(b.max)}`;
    svg.append(mk("text", { x: x + bw / 2, y: H - pad.b + 15, "text-anchor": "middle", fill: AXIS, "font-size": 11 }, label));
  });
  svg.append(mk("text", { x: W / 2, y: H - 3, "text-anchor": "middle", fill: AXIS, "font-size": 11 }, t("tokens per example")));
  return svg;
}

/** Whether a bucket's examples are all longer than the maximum sequence length. */
export function isOver(bucket, limit) {
  return Boolean(limit) && bucket.count > 0 && bucket.min >= limit;
}
