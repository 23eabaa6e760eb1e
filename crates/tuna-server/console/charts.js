// Charts drawn by hand: a <canvas> line chart for training metrics (several series against the
// step, hover read-out, crisp on high-DPI screens) and an inline-SVG bar chart for the dataset's
// token-length histogram. No library: a few hundred points per series is all a run produces.

import { fmtNum, h } from "./ui.js";

const FONT = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
const AXIS = "#8a94a6";
const GRID = "#eef1f5";

/** "Nice" tick values covering [lo, hi], about `n` of them. */
function ticks(lo, hi, n = 4) {
  if (!(hi > lo)) {
    const d = Math.abs(lo) || 1;
    lo -= d * 0.5;
    hi += d * 0.5;
  }
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return { values: out, step, lo: Math.min(lo, out[0] ?? lo), hi: Math.max(hi, out[out.length - 1] ?? hi) };
}

export class LineChart {
  /**
   * @param {string} title shown above the plot
   * @param {{name: string, color: string, dashed?: boolean}[]} series
   * @param {{yFormat?: (v: number) => string, percent?: boolean, zeroBased?: boolean}} opts
   */
  constructor(title, series, opts = {}) {
    this.series = series;
    this.data = series.map(() => []);
    this.opts = opts;
    this.hover = null;
    this.canvas = h("canvas", { role: "img", "aria-label": `${title} chart` });
    this.legend = h(
      "div.chart-legend",
      series.map((s) => {
        const sw = h("span.swatch", { class: s.dashed ? "dashed" : "" });
        sw.style.borderColor = s.color;
        return h("span.legend-item", sw, s.name);
      }),
    );
    this.readout = h("span.chart-readout");
    this.emptyNote = h("div.chart-empty", "Waiting for the first step…");
    this.el = h(
      "figure.chart",
      { dataset: { chart: title } },
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

  destroy() {
    this.resize.disconnect();
  }

  layout() {
    const all = this.data.flat();
    const xs = all.map((p) => p.x);
    const ys = all.map((p) => p.y);
    let xlo = Math.min(...xs, 0);
    let xhi = Math.max(...xs, 1);
    if (xhi <= xlo) xhi = xlo + 1;
    let ylo = Math.min(...ys);
    let yhi = Math.max(...ys);
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
    if (!this.data.some((p) => p.length)) return;
    const L = this.layout();
    // Tick labels get as many decimals as the tick step needs, so neighbours never read alike.
    const decimals = Math.min(8, Math.max(0, -Math.floor(Math.log10(L.ystep || 1) + 1e-9)));
    const pctDecimals = Math.min(6, Math.max(0, -Math.floor(Math.log10((L.ystep || 1) * 100) + 1e-9)));
    const fmt = this.opts.percent
      ? (v) => `${(v * 100).toFixed(pctDecimals)}%`
      : this.opts.yFormat || ((v) => (Math.abs(v) >= 1e5 ? fmtNum(v, 3) : v.toFixed(decimals)));
    const readout = this.opts.percent ? (v) => `${fmtNum(v * 100, 3)}%` : this.opts.yFormat || ((v) => fmtNum(v, 4));
    g.font = FONT;
    const left = Math.max(...L.yticks.map((v) => g.measureText(fmt(v)).width)) + 10;
    const box = { x0: left, x1: w - 8, y0: 6, y1: hgt - 20 };
    this.box = box;
    this.L = L;
    // A few pixels of inset keep points at either end whole.
    const X = (x) => box.x0 + 5 + ((x - L.xlo) / (L.xhi - L.xlo)) * (box.x1 - box.x0 - 10);
    const Y = (y) => box.y1 - ((y - L.ylo) / (L.yhi - L.ylo)) * (box.y1 - box.y0);
    this.X = X;

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

    // Series.
    g.save();
    g.beginPath();
    g.rect(box.x0, box.y0 - 2, box.x1 - box.x0, box.y1 - box.y0 + 4);
    g.clip();
    this.data.forEach((pts, i) => {
      const s = this.series[i];
      g.strokeStyle = s.color;
      g.fillStyle = s.color;
      g.lineWidth = 1.75;
      g.setLineDash(s.dashed ? [5, 3] : []);
      g.beginPath();
      pts.forEach((p, j) => (j ? g.lineTo(X(p.x), Y(p.y)) : g.moveTo(X(p.x), Y(p.y))));
      g.stroke();
      g.setLineDash([]);
      // Sparse series (validation loss) get dots so single points show.
      if (pts.length < 40)
        for (const p of pts) {
          g.beginPath();
          g.arc(X(p.x), Y(p.y), 2.5, 0, Math.PI * 2);
          g.fill();
        }
    });
    g.restore();

    // Hover read-out: the nearest step of each series.
    if (this.hover !== null) {
      const x = this.hover;
      g.strokeStyle = "#c3cad6";
      g.beginPath();
      g.moveTo(Math.round(X(x)) + 0.5, box.y0);
      g.lineTo(Math.round(X(x)) + 0.5, box.y1);
      g.stroke();
      const parts = this.data.map((pts, i) => {
        const p = nearest(pts, x);
        if (!p) return null;
        g.fillStyle = this.series[i].color;
        g.beginPath();
        g.arc(X(p.x), Y(p.y), 3, 0, Math.PI * 2);
        g.fill();
        return `${this.series.length > 1 ? this.series[i].name + " " : ""}${readout(p.y)}`;
      });
      this.readout.textContent = `step ${Math.round(x)} · ${parts.filter(Boolean).join(" · ")}`;
    } else {
      const last = this.data.map((pts) => pts[pts.length - 1]).filter(Boolean);
      this.readout.textContent = last.length ? `latest ${last.map((p) => readout(p.y)).join(" / ")}` : "";
    }
  }

  onMove(e) {
    if (!this.box || !this.L) return;
    const r = this.canvas.getBoundingClientRect();
    const px = e.clientX - r.left;
    const { x0, x1 } = this.box;
    if (px < x0 || px > x1) return;
    const x = this.L.xlo + ((px - x0 - 5) / (x1 - x0 - 10)) * (this.L.xhi - this.L.xlo);
    const p = nearest(this.data.flat(), x);
    this.hover = p ? p.x : null;
    this.draw();
  }
}

function nearest(pts, x) {
  let best = null;
  for (const p of pts) if (!best || Math.abs(p.x - x) < Math.abs(best.x - x)) best = p;
  return best;
}

/**
 * The dataset's token-length histogram as an SVG bar chart. `buckets` are `{min, max, count}`
 * (`max: null` is open-ended); `limit` marks the maximum sequence length.
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
  // The drawing is as wide as its bars need, so that text keeps its size on a phone.
  const W = Math.max(320, Math.min(560, shown.length * 84 + 44));
  const H = 180;
  const pad = { l: 36, r: 8, t: 18, b: 34 };
  const max = Math.max(1, ...shown.map((b) => b.count));
  // Bars at most 96 units wide, centred, so a file with few lengths does not get slabs.
  const bw = Math.min(96, (W - pad.l - pad.r) / shown.length);
  const x0 = pad.l + (W - pad.l - pad.r - bw * shown.length) / 2;
  const svg = mk("svg", { viewBox: `0 0 ${W} ${H}`, class: "histogram", role: "img", "aria-label": "Token length histogram" });
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
    const over = limit && b.min >= limit;
    const rect = mk("rect", {
      x: x + 3,
      y: H - pad.b - bh,
      width: Math.max(1, bw - 6),
      height: Math.max(b.count ? 1.5 : 0, bh),
      rx: 2,
      fill: over ? "#e8833a" : "#2f7fb5",
    });
    rect.append(mk("title", {}, `${b.count} example${b.count === 1 ? "" : "s"} with ${b.max === null ? `≥ ${b.min}` : `${b.min}–${b.max - 1}`} tokens`));
    svg.append(rect);
    if (b.count) svg.append(mk("text", { x: x + bw / 2, y: H - pad.b - bh - 4, "text-anchor": "middle", fill: "#334155", "font-size": 11 }, String(b.count)));
    const label = b.max === null ? `≥${short(b.min)}` : `<${short(b.max)}`;
    svg.append(mk("text", { x: x + bw / 2, y: H - pad.b + 15, "text-anchor": "middle", fill: AXIS, "font-size": 11 }, label));
  });
  svg.append(mk("text", { x: W / 2, y: H - 3, "text-anchor": "middle", fill: AXIS, "font-size": 11 }, "tokens per example"));
  return svg;
}
