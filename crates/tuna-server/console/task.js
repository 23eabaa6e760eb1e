// The task page: progress, live charts (smoothing, CSV export), checkpoints with their samples
// and effect test, "Use this model" snippets, events and settings. While the job runs, its event
// stream (SSE) says when metrics, events and checkpoints change; only the job itself is polled.

import * as api from "./api.js";
import { LineChart } from "./charts.js";
import { openEffectTest } from "./chat.js";
import { plural, t } from "./i18n.js";
import { TERMINAL, fmtCost, jobDuration, jobMethod, jobName, jobProgress, statusExtra } from "./jobs.js";
import { onLeave } from "./router.js";
import { draftFromJob } from "./wizard.js";
import { copyButton, copyableId, empty, errorBox, fmtBytes, fmtDate, fmtDuration, fmtInt, fmtNum, fmtTime, h, mount, progressBar, saveText, statusBadge, svgIcon, toast } from "./ui.js";

const SMOOTHING_STORAGE = "tuna.lossSmoothing";
const SMOOTHING_CHOICES = [0, 0.6, 0.8, 0.9, 0.95];

function storedSmoothing() {
  const v = Number(localStorage.getItem(SMOOTHING_STORAGE));
  return SMOOTHING_CHOICES.includes(v) ? v : 0.6;
}

/** Metric rows as CSV: one line per row, the union of the rows' keys as columns. */
/** The device a task ran on: `gpu:0 · NVIDIA H200 (cuda) · worker box-a`. */
function ranOnText(r) {
  if (!r) return null;
  const kind = r.software ? t("{backend}, software: runs on the CPU", { backend: r.backend }) : r.backend;
  return `${r.device} · ${r.name} (${kind}) · ${t("worker {name}", { name: r.worker })}`;
}

export function metricsCsv(rows) {
  const keys = [];
  for (const r of rows) for (const k of Object.keys(r)) if (!keys.includes(k)) keys.push(k);
  const cell = (v) => {
    if (v === null || v === undefined) return "";
    const s = typeof v === "object" ? JSON.stringify(v) : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [keys.join(","), ...rows.map((r) => keys.map((k) => cell(r[k])).join(","))].join("\n") + "\n";
}

export function pageTask(main, id) {
  mount(main, h("div.loading", h("span.spinner"), ` ${t("Loading task…")}`));
  let alive = true;
  let timer = null;
  const charts = {
    loss: new LineChart(
      t("Loss"),
      [
        { name: t("training"), color: "#1c79b0", smoothable: true },
        { name: t("validation"), color: "#e8833a", dashed: true },
      ],
      { key: "Loss", smoothing: storedSmoothing() },
    ),
    lr: new LineChart(t("Learning rate"), [{ name: "lr", color: "#7c3aed" }], { key: "Learning rate", yFormat: (v) => (v === 0 ? "0" : v.toExponential(1)) }),
    grad: new LineChart(t("Gradient norm"), [{ name: "grad norm", color: "#0f9d76" }], { key: "Gradient norm" }),
    tps: new LineChart(t("Tokens / s"), [{ name: "tokens/s", color: "#c2410c" }], { key: "Tokens / s", zeroBased: true, yFormat: (v) => fmtNum(v, 3) }),
    acc: new LineChart(t("Token accuracy"), [{ name: "accuracy", color: "#0e7490" }], { key: "Token accuracy", percent: true }),
  };
  // A preference (DPO) run adds TRL's reward metrics; they are known once the job is.
  const preferenceCharts = () => ({
    rewards: new LineChart(
      t("Rewards"),
      [
        { name: t("preferred"), color: "#0f9d76" },
        { name: t("non-preferred"), color: "#c2410c" },
      ],
      { key: "Rewards" },
    ),
    margins: new LineChart(t("Reward margin"), [{ name: "rewards/margins", color: "#7c3aed" }], { key: "Reward margin" }),
    accuracies: new LineChart(t("Reward accuracy"), [{ name: "rewards/accuracies", color: "#0e7490" }], { key: "Reward accuracy", percent: true }),
    logps: new LineChart(
      t("Log-probabilities"),
      [
        { name: t("preferred"), color: "#0f9d76" },
        { name: t("non-preferred"), color: "#c2410c" },
      ],
      { key: "Log-probabilities" },
    ),
  });
  charts.loss.el.classList.add("wide");
  charts.loss.el.dataset.smoothing = String(charts.loss.smoothing);
  onLeave(() => {
    alive = false;
    clearTimeout(timer);
    Object.values(charts).forEach((c) => c.destroy());
  });

  const smoothingSelect = h(
    "select.select-sm",
    {
      id: "loss-smoothing",
      "aria-label": t("Loss smoothing"),
      onchange: (e) => {
        const v = Number(e.target.value);
        localStorage.setItem(SMOOTHING_STORAGE, String(v));
        charts.loss.setSmoothing(v);
      },
    },
    SMOOTHING_CHOICES.map((v) => h("option", { value: String(v), selected: v === charts.loss.smoothing }, v === 0 ? t("no smoothing") : t("smoothing {v}", { v }))),
  );
  let metricRows = [];
  const exportCsv = h(
    "button.btn.btn-sm",
    {
      type: "button",
      id: "export-csv",
      // Until the first read of the metrics arrives there is nothing honest to export.
      disabled: true,
      onclick: () => {
        if (!metricRows.length) return toast(t("No metrics yet."), "info");
        saveText(`${id}-metrics.csv`, metricsCsv(metricRows), "text/csv");
      },
    },
    svgIcon("download"),
    t("CSV"),
  );

  const view = {
    head: h("div.page-head"),
    progress: h("section.card.card-pad", { id: "progress" }),
    error: h("div"),
    charts: h("div.charts", { id: "charts" }, Object.values(charts).map((c) => c.el)),
    checkpoints: h("div.ckpt-list", { id: "checkpoints" }),
    ckptHint: h("span.hint"),
    metricsHint: h("span.hint"),
    useModel: h("section.card.sec-use", { id: "use-model", hidden: true }),
    events: h("ul.events", { id: "events" }),
    details: h("dl.summary-list", { id: "settings" }),
    artifacts: h("section.card.card-pad.sec-artifacts", { id: "artifacts", hidden: true }),
  };
  let job = null;
  let ckptKey = "";
  let metricsSignature = "";
  let checkpointsChanged = false;
  let checkpoints = [];
  const fileNames = {};

  const layout = () => {
    if (job && job.method && job.method.type === "dpo" && !charts.rewards) {
      Object.assign(charts, preferenceCharts());
      // Token accuracy means little for pairs: the reward accuracy takes its place.
      charts.acc.destroy();
      delete charts.acc;
      mount(view.charts, Object.values(charts).map((c) => c.el));
    }
    mount(
      main,
      view.head,
      h("div.task-top", view.progress, view.error),
      h(
        "div.task-grid",
        h(
          "div.side-stack",
          h("section.card.sec-metrics", h("div.card-head", h("h2", t("Training metrics")), h("div.card-tools", view.metricsHint, smoothingSelect, exportCsv)), view.charts),
          h("section.card.sec-events", h("div.card-head", h("h2", t("Events"))), view.events),
        ),
        h(
          "div.side-stack",
          h("section.card.sec-checkpoints", h("div.card-head", h("h2", t("Checkpoints")), view.ckptHint), view.checkpoints),
          view.useModel,
          h("section.card.sec-settings", h("div.card-head", h("h2", t("Settings"))), h("div.card-body", view.details)),
          view.artifacts,
        ),
      ),
    );
  };

  const act = async (action, btn) => {
    btn.disabled = true;
    try {
      job = await api.jobAction(id, action);
      toast({ pause: t("Pause requested"), resume: t("Resume requested"), cancel: t("Cancel requested") }[action], "ok");
      drawJob();
      schedule(300);
    } catch (e) {
      mount(view.error, errorBox(e.message, { pause: t("Cannot pause this task"), resume: t("Cannot resume this task"), cancel: t("Cannot cancel this task") }[action]));
      btn.disabled = false;
    }
  };

  /** File ids in the settings become their names (fetched once each). */
  const fileLabel = (fid) => {
    if (!fid) return null;
    if (fileNames[fid] === undefined) {
      fileNames[fid] = null;
      api.getFile(fid).then(
        (f) => {
          fileNames[fid] = f.filename || fid;
          if (alive && job) drawJob();
        },
        () => {
          fileNames[fid] = fid;
        },
      );
    }
    const name = fileNames[fid];
    return h("span.file-ref", { dataset: { file: fid } }, name && name !== fid ? h("span.file-name", name) : null, h("span.mono.small", fid));
  };

  const drawJob = () => {
    const j = job;
    const p = jobProgress(j);
    const tu = j.tuna || {};
    const actions = [];
    // A queued job leaves the queue at once; a running one stops after its step, saving a checkpoint.
    if ((j.status === "running" && !tu.pause_requested) || j.status === "queued")
      actions.push(h("button.btn", { type: "button", id: "pause", onclick: (e) => act("pause", e.currentTarget) }, svgIcon("pause"), t("Pause")));
    if (j.status === "paused") actions.push(h("button.btn", { type: "button", id: "resume", onclick: (e) => act("resume", e.currentTarget) }, svgIcon("play"), t("Resume")));
    if (!TERMINAL.has(j.status))
      actions.push(
        h(
          "button.btn.btn-danger",
          {
            type: "button",
            id: "cancel",
            onclick: (e) => {
              if (confirm(t("Cancel “{name}”? Checkpoints written so far are kept.", { name: jobName(j) }))) act("cancel", e.currentTarget);
            },
          },
          svgIcon("stop"),
          t("Cancel"),
        ),
      );
    // Clone: a new task with these settings, to change first; retry: the same task again.
    const fromJob = (retry) => async (e) => {
      const btn = e.currentTarget;
      btn.disabled = true;
      try {
        await draftFromJob(j, { retry });
      } finally {
        btn.disabled = false;
      }
    };
    if (j.status === "failed" || j.status === "cancelled")
      actions.push(h("button.btn", { type: "button", id: "retry", title: t("A new task with the same settings and data"), onclick: fromJob(true) }, svgIcon("play"), t("Retry")));
    actions.push(h("button.btn", { type: "button", id: "clone", title: t("A new task starting from these settings"), onclick: fromJob(false) }, svgIcon("plus"), t("Clone")));
    mount(
      view.head,
      h(
        "div",
        h("a.crumb", { href: "#/" }, svgIcon("back"), t("Tasks")),
        h("h1", { id: "task-title" }, jobName(j)),
        h("p.sub", copyableId(j.id, { id: "job-id" }), " · ", j.model, " · ", jobMethod(j), " · ", t("created {when}", { when: fmtDate(j.created_at) })),
      ),
      h("div.actions", actions),
    );
    document.title = `${jobName(j)} · Tuna`;
    view.metricsHint.textContent = TERMINAL.has(j.status) ? t("Whole run · hover for values") : t("Updates live · hover for values");
    const eta = j.status === "running" ? tu.eta_seconds : j.status === "queued" && tu.estimated_start ? Math.max(0, tu.estimated_start - Date.now() / 1000) : null;
    const item = (k, v, idAttr, sub) => h("div", h("div.k", k), h("div.v", { id: idAttr }, v), sub ? h("div.muted.small", sub) : null);
    const steps = p.total ? (p.estimated ? t("step {step} / ≈{total} (estimate)", { step: p.step, total: p.total }) : t("step {step} / {total}", { step: p.step, total: p.total })) : t("step {step}", { step: p.step });
    const epochText = p.totalEpochs ? `${fmtNum(p.epoch, 3)} / ${fmtNum(p.totalEpochs, 3)}` : fmtNum(p.epoch, 3);
    const est = tu.estimate || {};
    const estimateNote = Number.isFinite(est.duration_seconds) ? t("estimated {d} before the start", { d: fmtDuration(est.duration_seconds) }) : null;
    mount(
      view.progress,
      h(
        "div.task-progress",
        h(
          "div.bar-wrap",
          h("div.bar-line", h("span", { id: "task-status" }, statusBadge(j.status, statusExtra(j))), h("span.muted", { id: "task-steps", dataset: { estimated: String(p.estimated) } }, steps)),
          h("div.progress-lg", progressBar(p.fraction, t("training progress"))),
        ),
        item(t("Progress"), `${Math.round(p.fraction * 100)}%`, "task-percent"),
        item(t("Epoch"), epochText, "task-epoch", tu.max_steps ? t("max steps {n}", { n: tu.max_steps }) : null),
        item(t("Elapsed"), fmtDuration(jobDuration(j)), "task-elapsed"),
        item(
          j.status === "queued" ? t("Starts in") : TERMINAL.has(j.status) ? t("Estimate") : t("Remaining"),
          TERMINAL.has(j.status) ? (Number.isFinite(est.duration_seconds) ? fmtDuration(est.duration_seconds) : "—") : eta !== null && eta !== undefined ? fmtDuration(eta) : "—",
          "task-eta",
          TERMINAL.has(j.status) ? t("made before the start") : j.status === "running" ? [t("at the measured speed"), estimateNote].filter(Boolean).join(" · ") : estimateNote,
        ),
      ),
    );
    if (j.error && j.error.message) mount(view.error, errorBox(j.error.message, t("Training failed")));
    else if (!view.error.dataset.sticky) mount(view.error);

    const d = (k, v) => (v === null || v === undefined || v === "" ? null : [h("dt", k), h("dd", v instanceof Node ? v : String(v))]);
    const hp = j.hyperparameters || {};
    mount(
      view.details,
      d(t("Base model"), j.model),
      d(t("Method"), tu.method === "full" ? t("Full fine-tuning") : "LoRA"),
      d(t("Training objective"), j.method && j.method.type === "dpo" ? t("Preference (DPO), beta {beta}", { beta: fmtNum(j.method.dpo.hyperparameters.beta) }) : t("Supervised (SFT)")),
      tu.lora ? d("LoRA", t("rank {rank}, alpha {alpha}, dropout {dropout}", { rank: tu.lora.rank, alpha: fmtNum(tu.lora.alpha), dropout: fmtNum(tu.lora.dropout) })) : null,
      d(t("Epochs"), tu.max_steps ? t("{n} (max steps {steps} decide)", { n: hp.n_epochs, steps: tu.max_steps }) : hp.n_epochs),
      d(t("Batch size"), hp.batch_size),
      d(t("Learning rate"), tu.learning_rate !== undefined ? fmtNum(tu.learning_rate) : null),
      d(t("Max sequence length"), tu.max_seq_len),
      d(t("Checkpoint interval"), tu.checkpoint_interval ? plural(tu.checkpoint_interval, "{n} step", "{n} steps") : t("every epoch")),
      d(t("Seed"), j.seed),
      d(t("Training file"), fileLabel(j.training_file)),
      d(t("Validation file"), fileLabel(j.validation_file)),
      d(t("Compute"), tu.compute === "gpu" ? t("GPU") : t("CPU")),
      d(t("Device"), ranOnText(tu.ran_on) || tu.device),
      d(
        t("Estimate"),
        est.total_tokens !== undefined
          ? `${Number.isFinite(est.duration_seconds) ? fmtDuration(est.duration_seconds) : t("no speed measured on this device yet")}, ${fmtCost(est.cost, est.currency)}`
          : null,
      ),
      d(t("Fine-tuned model"), j.fine_tuned_model ? copyableId(j.fine_tuned_model) : null),
      d(t("Trained tokens"), j.trained_tokens !== null && j.trained_tokens !== undefined ? fmtInt(j.trained_tokens) : null),
    );
    drawUseModel();
    drawArtifacts();
  };

  /** A finished task's stored weights (checkpoints, the fine-tuned model), deleted after asking. */
  const drawArtifacts = () => {
    const j = job;
    const has = TERMINAL.has(j.status) && (checkpoints.length > 0 || Boolean(j.fine_tuned_model));
    view.artifacts.hidden = !has;
    if (!has) return mount(view.artifacts);
    if (view.artifacts.dataset.key === `${checkpoints.length}:${j.fine_tuned_model}`) return;
    view.artifacts.dataset.key = `${checkpoints.length}:${j.fine_tuned_model}`;
    const del = h(
      "button.btn.btn-danger.btn-sm",
      {
        type: "button",
        id: "delete-artifacts",
        onclick: async (e) => {
          const what = [
            j.fine_tuned_model ? t("the fine-tuned model {model}", { model: j.fine_tuned_model }) : null,
            checkpoints.length ? plural(checkpoints.length, "{n} checkpoint", "{n} checkpoints") : null,
          ]
            .filter(Boolean)
            .join(t(" and "));
          if (!confirm(t("Delete {what} of “{name}”? Chat and downloads with them stop working. The task, its metrics and events stay. This cannot be undone.", { what, name: jobName(j) }))) return;
          const btn = e.currentTarget;
          btn.disabled = true;
          try {
            const r = await api.deleteJobArtifacts(j.id);
            toast(t("Deleted: {n} freed", { n: fmtBytes(r.freed_bytes || 0) }), "ok");
            job = await api.getJob(j.id);
            await Promise.all([loadCheckpoints(), loadEvents()]);
            drawJob();
          } catch (ex) {
            mount(view.error, errorBox(ex.message, t("Cannot delete the task's files")));
            btn.disabled = false;
          }
        },
      },
      svgIcon("trash"),
      t("Delete checkpoints and model"),
    );
    mount(
      view.artifacts,
      h("div.section-title", h("h2", t("Stored files"))),
      h("p.small.muted", t("Free the disk space of this task: its checkpoints and fine-tuned model are deleted; the task, its metrics and events stay.")),
      del,
    );
  };

  /** "Use this model": the fine-tuned model (or a checkpoint) through the API, ready to copy. */
  let useModelKey = "";
  const drawUseModel = () => {
    const models = [];
    if (job.fine_tuned_model) models.push({ id: job.fine_tuned_model, label: t("Fine-tuned model (final)") });
    for (const c of checkpoints) models.push({ id: c.fine_tuned_model_checkpoint, label: t("Checkpoint · step {step}", { step: c.step_number }) });
    const key = models.map((m) => m.id).join(",");
    if (key === useModelKey) return;
    useModelKey = key;
    view.useModel.hidden = !models.length;
    if (!models.length) return mount(view.useModel);
    const select = h("select.select-sm", { id: "use-model-select", "aria-label": t("Model") }, models.map((m) => h("option", { value: m.id }, m.label)));
    const tabs = h("div.tabs", { role: "tablist" });
    const code = h("pre.snippet", { id: "use-model-snippet" });
    const copyBox = h("div.snippet-tools");
    let kind = "curl";
    const draw = () => {
      const text = snippet(kind, select.value);
      code.textContent = text;
      code.dataset.kind = kind;
      mount(copyBox, copyButton(text, t("Copy")));
      mount(
        tabs,
        ["curl", "python"].map((k) =>
          h(
            "button.tab",
            {
              type: "button",
              role: "tab",
              dataset: { snippet: k },
              "aria-selected": String(k === kind),
              onclick: () => {
                kind = k;
                draw();
              },
            },
            k === "curl" ? "curl" : "Python (openai)",
          ),
        ),
      );
    };
    select.addEventListener("change", draw);
    mount(
      view.useModel,
      h("div.card-head", h("h2", t("Use this model")), select),
      h(
        "div.card-body",
        h("p.small.muted", t("Any OpenAI-compatible client works: point it at this server and use your API key. The model id is:")),
        h("p", copyableId(models[0].id, { id: "use-model-id" })),
        h("div.snippet-bar", tabs, copyBox),
        code,
      ),
    );
    select.addEventListener("change", () => mount(view.useModel.querySelector("#use-model-id"), h("span.mono", select.value), copyButton(select.value)));
    draw();
  };

  // Rows arrive incrementally: each read asks only for the steps after the last one held, less
  // one, since a step's validation row can follow its training row.
  let metricsLoaded = false;
  const loadMetrics = async () => {
    const last = metricRows.length ? metricRows[metricRows.length - 1].step : null;
    const after = Number.isFinite(last) && last > 0 ? last - 1 : "";
    let m;
    try {
      m = await api.listMetrics(id, after);
    } catch {
      return; // charts keep their last data; the job poll shows real failures
    }
    const fresh = Array.isArray(m) ? m : m.data || [];
    metricRows = after === "" ? fresh : metricRows.filter((r) => r.step <= after).concat(fresh);
    const rows = metricRows;
    if (!metricsLoaded) {
      metricsLoaded = true;
      exportCsv.disabled = false;
    }
    exportCsv.dataset.rows = String(rows.length);
    // Redraw when a step arrives or the last step gains its validation loss.
    const signature = `${rows.length}:${JSON.stringify(rows[rows.length - 1] || null)}`;
    if (signature === metricsSignature && !checkpointsChanged) return;
    metricsSignature = signature;
    checkpointsChanged = false;
    // The trainer's rows, oldest first: `train` per optimizer step (`loss`, `lr`, `grad_norm`,
    // `tokens_per_sec`, `token_accuracy`, and for DPO TRL's `rewards/…` and `logps/…`), `eval`
    // per validation pass (`loss`).
    const series = (type, key) =>
      rows.filter((r) => r.type === type && Number.isFinite(r[key])).map((r) => ({ x: r.step, y: r[key] }));
    charts.loss.setData([series("train", "loss"), series("eval", "loss")]);
    charts.lr.setData([series("train", "lr")]);
    charts.grad.setData([series("train", "grad_norm")]);
    charts.tps.setData([series("train", "tokens_per_sec")]);
    charts.acc?.setData([series("train", "token_accuracy")]);
    charts.rewards?.setData([series("train", "rewards/chosen"), series("train", "rewards/rejected")]);
    charts.margins?.setData([series("train", "rewards/margins")]);
    charts.accuracies?.setData([series("train", "rewards/accuracies")]);
    charts.logps?.setData([series("train", "logps/chosen"), series("train", "logps/rejected")]);
  };

  const loadCheckpoints = async () => {
    try {
      const list = await api.listCheckpoints(id);
      checkpoints = (list.data || []).sort((a, b) => b.step_number - a.step_number);
    } catch {
      return;
    }
    const key = checkpoints.map((c) => c.id).join(",");
    if (key === ckptKey && view.checkpoints.childElementCount) return;
    ckptKey = key;
    view.ckptHint.textContent = checkpoints.length ? t("{n} saved", { n: checkpoints.length }) : "";
    if (!checkpoints.length) {
      drawUseModel();
      drawArtifacts();
      mount(view.checkpoints, empty(t("No checkpoint yet"), TERMINAL.has(job.status) ? t("This task wrote no checkpoint.") : t("Each checkpoint appears here with its metrics and a sample answer.")));
      return;
    }
    const finalStep = job.status === "succeeded" ? checkpoints[0].step_number : null;
    mount(
      view.checkpoints,
      checkpoints.map((c) => checkpointCard(c, job, c.step_number === finalStep, checkpoints)),
    );
    checkpointsChanged = true; // validation points may come from checkpoints
    drawUseModel();
    drawArtifacts();
  };

  const loadEvents = async () => {
    try {
      const list = await api.listEvents(id, 50);
      const evs = list.data || [];
      mount(
        view.events,
        evs.length ? evs.map((e) => h("li", h("time", fmtTime(e.created_at)), h("span", { class: `level-${e.level}` }, e.message))) : h("li", h("span.muted", t("No events yet."))),
      );
    } catch {
      /* keep the old list */
    }
  };

  // The job's event stream is open: it, not the poll, says when metrics, events and checkpoints
  // change (a `metrics` event per step, a `message` event for the rest).
  let live = false;
  let listening = false;
  let polled = false;
  let eventsTimer = null;
  let metricsTimer = null;
  onLeave(() => {
    clearTimeout(eventsTimer);
    clearTimeout(metricsTimer);
  });
  // Events arrive in bursts (the stream first replays every earlier one): one refresh per burst.
  const eventsChanged = () => {
    if (eventsTimer) return;
    eventsTimer = setTimeout(async () => {
      eventsTimer = null;
      if (!alive) return;
      await Promise.all([loadEvents(), loadCheckpoints()]);
      schedule(0);
    }, 250);
  };
  // A step a second at most: the charts need no more.
  const metricsChanged = () => {
    if (metricsTimer) return;
    metricsTimer = setTimeout(() => {
      metricsTimer = null;
      if (alive) loadMetrics();
    }, 1000);
  };
  const listen = async () => {
    listening = true;
    const ctrl = new AbortController();
    onLeave(() => ctrl.abort());
    try {
      const path = `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?stream=true`;
      for await (const ev of api.streamEvents(path, undefined, { signal: ctrl.signal, method: "GET" })) {
        if (!alive) return;
        live = true;
        if (ev && ev.type === "metrics") metricsChanged();
        else eventsChanged();
      }
    } catch {
      /* refused (too many streams) or cut: the poll takes over */
    } finally {
      live = false;
    }
  };

  const poll = async () => {
    if (!alive) return;
    try {
      job = await api.getJob(id);
    } catch (e) {
      if (!alive) return;
      if (!job) {
        mount(
          main,
          h("div.page-head", h("div", h("a.crumb", { href: "#/" }, svgIcon("back"), t("Tasks")), h("h1", t("Task not available")))),
          errorBox(e.message, e.status === 404 ? t("No such task") : t("Cannot load the task")),
        );
        return;
      }
      schedule(5000);
      return;
    }
    if (!alive) return;
    if (!view.head.isConnected) layout();
    drawJob();
    // Without the stream (or at the start, or at the end), checkpoints, events and metrics are
    // polled too.
    const all = !live || !polled || TERMINAL.has(job.status);
    polled = true;
    if (all) {
      await Promise.all([loadCheckpoints(), loadEvents()]);
      await loadMetrics(); // after the checkpoints: validation points may come from them
    }
    if (!alive) return;
    if (TERMINAL.has(job.status)) return;
    if (!listening) listen();
    schedule(job.status === "running" ? 1500 : 3000);
  };
  const schedule = (ms) => {
    clearTimeout(timer);
    timer = setTimeout(poll, ms);
  };
  poll();
}

/** The request a client sends to talk to `model` on this server. */
function snippet(kind, model) {
  const base = `${location.origin}/v1`;
  if (kind === "python")
    return [
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url="${base}", api_key="YOUR_TUNA_API_KEY")`,
      "reply = client.chat.completions.create(",
      `    model="${model}",`,
      '    messages=[{"role": "user", "content": "Who are you?"}],',
      ")",
      "print(reply.choices[0].message.content)",
    ].join("\n");
  return [
    `curl ${base}/chat/completions \\`,
    '  -H "Authorization: Bearer $TUNA_API_KEY" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Who are you?"}]}'`,
  ].join("\n");
}

function checkpointCard(c, job, isFinal, all) {
  const m = c.metrics || {};
  const tu = c.tuna || {};
  const samples = tu.samples || [];
  const metric = (k, v, pct) => (v === null || v === undefined ? null : h("span", `${k} `, h("b", pct ? `${fmtNum(v * 100, 3)}%` : fmtNum(v))));
  const download = h(
    "button.btn.btn-sm",
    {
      type: "button",
      onclick: async (e) => {
        const btn = e.currentTarget;
        btn.disabled = true;
        try {
          await downloadCheckpoint(c, job);
        } catch (ex) {
          toast(ex.message, "error");
        } finally {
          btn.disabled = false;
        }
      },
    },
    svgIcon("download"),
    tu.kind === "full" ? t("Download model") : t("Download adapter"),
  );
  const test = h(
    "button.btn.btn-sm.btn-primary",
    { type: "button", dataset: { action: "effect-test" }, onclick: () => openEffectTest({ job, checkpoint: c, checkpoints: all }) },
    svgIcon("flask"),
    t("Effect test"),
  );
  return h(
    "article.ckpt",
    { dataset: { step: String(c.step_number), checkpoint: c.id } },
    h(
      "div.ckpt-head",
      h(
        "div.ckpt-title",
        t("Step {step}", { step: c.step_number }),
        tu.epoch !== null && tu.epoch !== undefined ? h("span.muted.small", t("epoch {n}", { n: fmtNum(tu.epoch, 3) })) : null,
        isFinal ? h("span.tag", t("final")) : null,
      ),
      h("div.ckpt-actions", download, test),
    ),
    h(
      "div.ckpt-metrics",
      metric(t("train loss"), m.train_loss),
      metric(t("valid loss"), m.valid_loss ?? m.full_valid_loss),
      metric(t("token acc."), m.train_mean_token_accuracy, true),
      metric(t("valid acc."), m.valid_mean_token_accuracy ?? m.full_valid_mean_token_accuracy, true),
    ),
    samples.map((s, i) => sampleView(s, i, samples.length)),
    h("div.ckpt-model", { title: t("Model id for chat completions") }, copyableId(c.fine_tuned_model_checkpoint)),
  );
}

function contentText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => p.text || "").join("");
  return content === null || content === undefined ? "" : String(content);
}

/** A checkpoint's automatic sample, open: the answer is what a person comes to see. */
function sampleView(s, i, n) {
  const msgs = s.messages || [];
  const lastUser = [...msgs].reverse().find((m) => m.role === "user");
  const pair = typeof s.non_preferred === "string";
  return h(
    "details.sample",
    { open: true },
    h("summary", n > 1 ? t("Sample {n}", { n: i + 1 }) : t("Auto-generated sample"), s.held_out === false ? h("span.muted.small", ` ${t("(training example)")}`) : null),
    h(
      "div.sample-body",
      lastUser ? h("div.sample-prompt", h("b", `${t("Prompt:")} `), contentText(lastUser.content)) : null,
      // A preference pair: the answer beside both of the pair's, to see which it resembles.
      h(
        "div.compare",
        { class: pair ? "compare-3" : "" },
        h("div.sample-generated", h("span.label", t("Model output")), (s.generated || "").trim() || h("span.muted", t("(empty)"))),
        h("div.sample-reference", h("span.label", pair ? t("Preferred answer") : t("Reference answer")), (s.reference || "").trim()),
        pair ? h("div.sample-rejected", h("span.label", t("Non-preferred answer")), s.non_preferred.trim()) : null,
      ),
    ),
  );
}

async function downloadCheckpoint(c, job) {
  const url = (c.tuna && c.tuna.download_url) || `/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/checkpoints/${encodeURIComponent(c.id)}/adapter`;
  const resp = await api.download(url);
  const blob = await resp.blob();
  const cd = resp.headers.get("Content-Disposition") || "";
  const match = cd.match(/filename\*?=(?:UTF-8'')?"?([^";]+)"?/i);
  const name = match ? decodeURIComponent(match[1]) : `${job.id}-step-${c.step_number}.tar`;
  const a = h("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
