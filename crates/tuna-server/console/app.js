// Tuna console: sign in, the task list, the new-task wizard and the task page. Hash routes
// (#/, #/new, #/tasks/<id>) so the server only serves `/`. Every page is built from the API's
// objects; Tuna's extras sit in their `tuna` / `check` keys (see docs/api.md).

import * as api from "./api.js";
import { LineChart, histogram } from "./charts.js";
import { openEffectTest } from "./chat.js";
import {
  compact,
  empty,
  errorBox,
  fmtBytes,
  fmtDate,
  fmtDuration,
  fmtInt,
  fmtNum,
  fmtTime,
  h,
  mount,
  progressBar,
  statusBadge,
  svgIcon,
  toast,
} from "./ui.js";

const root = document.getElementById("app");

/** Disposers of the current page (timers, charts, streams); run on navigation. */
let disposers = [];
function onLeave(fn) {
  disposers.push(fn);
}
function leavePage() {
  for (const fn of disposers.splice(0)) {
    try {
      fn();
    } catch {
      /* a disposer must not stop navigation */
    }
  }
}

const ACTIVE = new Set(["validating_files", "queued", "running", "paused"]);
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// ---- routing -------------------------------------------------------------------------------

function currentRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "new") return { page: "new" };
  if (parts[0] === "tasks" && parts[1]) return { page: "task", id: parts[1] };
  return { page: "tasks" };
}

export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function render() {
  leavePage();
  if (!api.getKey()) {
    renderSignIn();
    return;
  }
  const r = currentRoute();
  const main = h("main.main", { id: "main" });
  mount(root, shell(r.page, main));
  document.title = "Tuna · Fine-tuning console";
  if (!api.getUserName()) {
    api
      .me()
      .then((u) => {
        api.setUserName(u && u.name);
        const el = document.getElementById("user-name");
        if (el && u && u.name) el.textContent = `Signed in as ${u.name}`;
      })
      .catch(() => {});
  }
  if (r.page === "new") pageNewTask(main);
  else if (r.page === "task") pageTask(main, r.id);
  else pageTasks(main);
  window.scrollTo(0, 0);
}

window.addEventListener("hashchange", render);
api.onUnauthorized(() => {
  if (!api.getKey()) return;
  api.clearKey();
  toast("Your API key was not accepted any more. Please sign in again.", "error");
  render();
});

// ---- shell and sign in ---------------------------------------------------------------------

function shell(page, main) {
  const key = api.getKey() || "";
  const masked = key.length > 14 ? `${key.slice(0, 12)}…${key.slice(-4)}` : "••••";
  const link = (href, icon, label, active) =>
    h("a", { href, class: active ? "active" : "" }, svgIcon(icon), h("span", label));
  return h(
    "div.shell",
    h(
      "aside.sidebar",
      h("a.brand", { href: "#/" }, h("img", { src: "/assets/icon.svg", alt: "" }), h("span", "Tuna", h("small", "Fine-tuning console"))),
      h(
        "nav.nav",
        { "aria-label": "Main" },
        h("div.nav-section", "Model fine-tuning"),
        link("#/", "list", "Tasks", page === "tasks" || page === "task"),
        link("#/new", "plus", "New task", page === "new"),
      ),
      h(
        "div.user-box",
        h("div.who", { id: "user-name" }, api.getUserName() ? `Signed in as ${api.getUserName()}` : "Signed in"),
        h("div.key", { title: "API key in use" }, masked),
        h(
          "button.btn.btn-sm",
          { type: "button", id: "sign-out", onclick: signOut, title: "Sign out" },
          svgIcon("logout"),
          h("span.label", "Sign out"),
        ),
      ),
    ),
    main,
  );
}

function signOut() {
  api.clearKey();
  location.hash = "#/";
  render();
}

function renderSignIn() {
  const input = h("input", {
    type: "password",
    id: "api-key",
    name: "api-key",
    autocomplete: "current-password",
    placeholder: "sk-tuna-…",
    required: true,
    spellcheck: "false",
  });
  const err = h("div");
  const btn = h("button.btn.btn-primary", { type: "submit", id: "sign-in" }, "Sign in");
  const form = h(
    "form.card",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        btn.disabled = true;
        mount(btn, h("span.spinner"), "Checking…");
        mount(err);
        try {
          const user = await api.checkKey(key);
          api.setKey(key);
          api.setUserName(user && user.name);
          render();
        } catch (ex) {
          mount(err, errorBox(ex.message, ex.status === 401 ? "This key was not accepted" : "Cannot sign in"));
          input.setAttribute("aria-invalid", "true");
          btn.disabled = false;
          mount(btn, "Sign in");
        }
      },
    },
    h("div.brand", h("img", { src: "/assets/icon.svg", alt: "" }), h("span", "Tuna", h("small", "Fine-tuning console"))),
    h("div", h("h1", "Sign in"), h("p.lead", "Use the API key of your Tuna account. It stays in this browser.")),
    h("div.field", h("label", { for: "api-key" }, "API key"), input),
    err,
    btn,
    h(
      "p.muted.small",
      "No key yet? An administrator creates one with ",
      h("code", "tuna users create NAME"),
      ".",
    ),
  );
  mount(root, h("div.signin", form));
  input.focus();
}

// ---- job helpers ---------------------------------------------------------------------------

function jobName(j) {
  return (j.tuna && j.tuna.name) || j.user_provided_suffix || j.id;
}

function jobMethod(j) {
  const m = (j.tuna && j.tuna.method) || "lora";
  return m === "full" ? "Full" : "LoRA";
}

function jobProgress(j) {
  const p = (j.tuna && j.tuna.progress) || {};
  const step = p.step || 0;
  const total = p.total_steps || (j.tuna && j.tuna.estimate && j.tuna.estimate.total_steps) || 0;
  let fraction = total ? step / total : 0;
  if (j.status === "succeeded") fraction = 1;
  return { step, total, fraction, epoch: p.epoch || 0, totalEpochs: p.total_epochs || j.hyperparameters?.n_epochs };
}

function jobDuration(j) {
  if (j.tuna && Number.isFinite(j.tuna.elapsed_seconds) && j.tuna.elapsed_seconds > 0) return j.tuna.elapsed_seconds;
  if (j.finished_at && j.created_at) return j.finished_at - j.created_at;
  return null;
}

function statusExtra(j) {
  if (j.status === "queued" && j.tuna && j.tuna.queue_position) return `#${j.tuna.queue_position} in queue`;
  if (j.status === "running" && j.tuna && j.tuna.pause_requested) return "pausing…";
  return null;
}

// ---- page: task list -----------------------------------------------------------------------

function pageTasks(main) {
  const body = h("div", h("div.loading", h("span.spinner"), " Loading tasks…"));
  mount(
    main,
    h(
      "div.page-head",
      h("div", h("h1", "Fine-tuning tasks"), h("p.sub", "Your training tasks, newest first.")),
      h("div.actions", h("a.btn.btn-primary", { href: "#/new", id: "new-task" }, svgIcon("plus"), "New task")),
    ),
    body,
  );
  let timer = null;
  let alive = true;
  onLeave(() => {
    alive = false;
    clearTimeout(timer);
  });
  const load = async () => {
    try {
      const list = await api.listAllJobs();
      if (!alive) return;
      const jobs = [...list].sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? 1 : -1));
      mount(body, taskStats(jobs), taskTable(jobs));
      if (jobs.some((j) => ACTIVE.has(j.status))) timer = setTimeout(load, 3000);
    } catch (e) {
      if (!alive) return;
      mount(body, errorBox(e.message, "Cannot load your tasks"));
      timer = setTimeout(load, 8000);
    }
  };
  load();
}

function taskStats(jobs) {
  const count = (pred) => jobs.filter(pred).length;
  const stat = (k, v) => h("div.card.stat", h("div.k", k), h("div.v", String(v)));
  return h(
    "div.stats-row",
    stat("Tasks", jobs.length),
    stat("Running", count((j) => j.status === "running")),
    stat("Queued", count((j) => j.status === "queued" || j.status === "validating_files")),
    stat("Succeeded", count((j) => j.status === "succeeded")),
  );
}

function taskTable(jobs) {
  if (!jobs.length) {
    return h(
      "div.card",
      empty(
        "No fine-tuning tasks yet",
        "Create a task: pick a base model, upload a JSONL dataset of conversations, and start training.",
        h("a.btn.btn-primary", { href: "#/new" }, svgIcon("plus"), "New task"),
      ),
    );
  }
  const rows = jobs.map((j) => {
    const p = jobProgress(j);
    const open = () => navigate(`#/tasks/${encodeURIComponent(j.id)}`);
    return h(
      "tr.clickable",
      { dataset: { job: j.id }, onclick: open, tabindex: "0", onkeydown: (e) => e.key === "Enter" && open() },
      h("td.col-name", h("a.task-name", { href: `#/tasks/${encodeURIComponent(j.id)}` }, jobName(j)), h("div.task-id", j.id)),
      h("td.col-model", { "data-label": "Model" }, j.model),
      h("td.col-method", { "data-label": "Method" }, jobMethod(j)),
      h("td.col-status", statusBadge(j.status, statusExtra(j))),
      h(
        "td.col-progress",
        h("div.cell-progress", progressBar(p.fraction, `${jobName(j)} progress`), h("span", `${Math.round(p.fraction * 100)}%`)),
      ),
      h("td.col-created.nowrap", { "data-label": "Created" }, fmtDate(j.created_at)),
      h("td.col-duration.nowrap", { "data-label": "Duration" }, fmtDuration(jobDuration(j))),
    );
  });
  return h(
    "div.card",
    h(
      "table.table",
      { id: "tasks" },
      h(
        "thead",
        h("tr", ["Name", "Base model", "Method", "Status", "Progress", "Created", "Duration"].map((c) => h("th", c))),
      ),
      h("tbody", rows),
    ),
  );
}

// ---- page: new task ------------------------------------------------------------------------

/**
 * Training parameters shown in step 2: one line of explanation and the default each. `path` is
 * where the value goes in the job request; `show` limits a field to one method.
 */
const PARAMS = [
  {
    group: "Training",
    fields: [
      { id: "n_epochs", label: "Epochs", path: "hp.n_epochs", type: "int", min: 1, max: 50, placeholder: "auto", def: "auto (3; more for small sets)", help: "Passes over the training data. More epochs fit the data more closely; too many over-fit." },
      { id: "learning_rate", label: "Learning rate", path: "tuna.learning_rate", type: "float", min: 0, max: 1, placeholder: "auto", def: "1e-4 LoRA, 1e-5 full", help: "Peak step size of the optimizer. Too high diverges, too low learns slowly." },
      { id: "batch_size", label: "Batch size", path: "hp.batch_size", type: "int", min: 1, max: 256, placeholder: "auto", def: "auto (0.2% of examples)", help: "Examples per optimizer step. Larger batches give smoother, fewer steps." },
      { id: "max_steps", label: "Max steps", path: "tuna.max_steps", type: "int", min: 1, placeholder: "none", def: "none", help: "Stop after this many optimizer steps, whatever the epochs." },
      { id: "warmup_ratio", label: "Warmup ratio", path: "tuna.warmup_ratio", type: "float", min: 0, max: 0.99, placeholder: "0.03", def: "0.03", help: "Share of the steps over which the learning rate rises from zero." },
      { id: "seed", label: "Seed", path: "seed", type: "int", min: 0, placeholder: "random", def: "random", help: "Seeds shuffling, the validation split and initialisation; the same seed repeats a run." },
    ],
  },
  {
    group: "LoRA",
    show: "lora",
    fields: [
      { id: "lora_rank", label: "LoRA rank", path: "tuna.lora.rank", type: "int", min: 1, max: 1024, placeholder: "16", def: "16", help: "Width of the low-rank update. Higher ranks learn more and cost more memory." },
      { id: "lora_alpha", label: "LoRA alpha", path: "tuna.lora.alpha", type: "float", min: 0, placeholder: "2 × rank", def: "2 × rank", help: "Scale of the update (alpha / rank). Usually twice the rank." },
      { id: "lora_dropout", label: "LoRA dropout", path: "tuna.lora.dropout", type: "float", min: 0, max: 0.99, placeholder: "0.05", def: "0.05", help: "Drops inputs of the adapter during training to reduce over-fitting." },
    ],
  },
  {
    group: "Data and checkpoints",
    fields: [
      { id: "max_seq_len", label: "Max sequence length", path: "tuna.max_seq_len", type: "int", min: 16, placeholder: "2048", def: "2048", help: "Longest example in tokens; longer ones are truncated." },
      { id: "checkpoint_interval", label: "Checkpoint interval", path: "tuna.checkpoint_interval", type: "int", min: 1, placeholder: "each epoch", def: "every epoch", help: "Save a checkpoint (with a sample answer) every this many steps." },
      { id: "eval_interval", label: "Evaluation interval", path: "tuna.eval_interval", type: "int", min: 1, placeholder: "each checkpoint", def: "every checkpoint", help: "Compute the validation loss every this many steps." },
      { id: "validation_fraction", label: "Validation share", path: "tuna.validation_fraction", type: "float", min: 0, max: 0.99, placeholder: "auto", def: "5% from 50 examples", help: "Share of the examples held out to measure validation loss." },
      { id: "sample_max_tokens", label: "Sample length", path: "tuna.sample_max_tokens", type: "int", min: 1, max: 4096, placeholder: "64", def: "64", help: "Longest automatic sample answer written at each checkpoint, in tokens." },
    ],
  },
];

function pageNewTask(main) {
  const state = {
    step: 1,
    name: "",
    method: "lora",
    model: "",
    models: null,
    training: null, // the uploaded file object (with `check`)
    validation: null,
    params: {},
  };
  const stepper = h("ol.stepper");
  const body = h("div");
  mount(
    main,
    h(
      "div.page-head",
      h(
        "div",
        h("a.crumb", { href: "#/" }, svgIcon("back"), "Tasks"),
        h("h1", "New fine-tuning task"),
        h("p.sub", "Name the task, choose a base model and upload a dataset; then set the parameters and start."),
      ),
    ),
    stepper,
    body,
  );

  const draw = () => {
    mount(
      stepper,
      ["Task and dataset", "Training parameters", "Compute and start"].map((label, i) =>
        h("li", { class: i + 1 === state.step ? "active" : i + 1 < state.step ? "done" : "" }, label),
      ),
    );
    if (state.step === 1) stepBasics(body, state, draw);
    else if (state.step === 2) stepParams(body, state, draw);
    else stepCompute(body, state, draw);
  };

  api
    .listModels()
    .then((list) => {
      state.models = (list.data || []).filter((m) => !m.tuna || m.tuna.kind === "base");
      if (!state.model && state.models.length) state.model = state.models[0].id;
      if (state.step === 1) draw();
    })
    .catch((e) => {
      state.models = [];
      state.modelError = e.message;
      if (state.step === 1) draw();
    });
  draw();
}

function stepBasics(body, state, draw) {
  const name = h("input", {
    type: "text",
    id: "task-name",
    value: state.name,
    maxlength: "64",
    placeholder: "e.g. support-bot-v1",
    oninput: (e) => {
      state.name = e.target.value;
      update();
    },
  });
  const radio = (group, value, title, text, checked, disabled) =>
    h(
      "label.choice",
      h("input", {
        type: "radio",
        name: group,
        value,
        checked,
        disabled,
        onchange: () => {
          if (group === "method") state.method = value;
          update();
        },
      }),
      h("strong", title),
      h("span", text),
    );
  let modelField;
  if (state.models === null) modelField = h("div.muted", h("span.spinner"), " Loading models…");
  else if (!state.models.length)
    modelField = errorBox(state.modelError || "The server has no base models. Add one with `tuna models add`.", "No base model available");
  else
    modelField = h(
      "select",
      {
        id: "base-model",
        onchange: (e) => {
          state.model = e.target.value;
          update();
        },
      },
      state.models.map((m) => h("option", { value: m.id, selected: m.id === state.model }, m.id)),
    );

  const trainingBox = h("div");
  const validationBox = h("div");
  const next = h("button.btn.btn-primary", { type: "button", id: "next-1", onclick: () => ((state.step = 2), draw()) }, "Next: training parameters");
  const hint = h("span.muted.small");
  const update = () => {
    const ok = state.name.trim() && state.model && state.training && state.training.check && state.training.check.ok !== false && (!state.validation || state.validation.check?.ok !== false);
    next.disabled = !ok;
    hint.textContent = ok
      ? ""
      : !state.name.trim()
        ? "Give the task a name."
        : !state.model
          ? "Choose a base model."
          : !state.training
            ? "Upload a training dataset."
            : "Fix the dataset's errors and upload it again.";
  };

  mount(
    body,
    h(
      "div.form-sections",
      h(
        "section.card.card-pad",
        h("div.section-title", h("h2", "Task")),
        h(
          "div.grid-2",
          h("div.field", h("label", { for: "task-name" }, "Task name"), name, h("span.help", "A distinctive name to find the task again.")),
          h("div.field", h("label", { for: "base-model" }, "Base model"), modelField, h("span.help", "The model to fine-tune. Only base models are listed.")),
        ),
        h(
          "div.field",
          { style: { marginTop: "16px" } },
          h("span.field-label", h("label", "Task type")),
          h("div.choices", radio("task-type", "text-generation", "Text generation", "Chat models trained on conversations (OpenAI messages format).", true)),
        ),
        h(
          "div.field",
          { style: { marginTop: "16px" } },
          h("span.field-label", h("label", "Fine-tuning method")),
          h(
            "div.choices",
            radio("method", "lora", "LoRA", "Trains a small adapter over the frozen model. Fast, light, the usual choice.", state.method === "lora"),
            radio("method", "full", "Full fine-tuning", "Trains every weight. Needs much more memory; strongest effect.", state.method === "full"),
          ),
        ),
      ),
      h(
        "section.card.card-pad",
        h("div.section-title", h("h2", "Dataset"), h("span.hint", "JSONL, one {\"messages\": [...]} conversation per line.")),
        trainingBox,
        h("details.validation-upload", { style: { marginTop: "14px" }, open: !!state.validation }, h("summary.small", "Add a separate validation file (optional)"), validationBox),
      ),
    ),
    h("div.form-foot", h("a.btn", { href: "#/" }, "Cancel"), h("div", hint, " ", next)),
  );
  uploader(trainingBox, "training", state.training, (f) => {
    state.training = f;
    update();
  });
  uploader(validationBox, "validation", state.validation, (f) => {
    state.validation = f;
    update();
  });
  update();
}

/** A file drop zone that uploads at once and shows the check's report below it. */
function uploader(box, kind, current, onDone) {
  const input = h("input", { type: "file", accept: ".jsonl,.json,application/jsonl,application/x-ndjson,text/plain", id: `${kind}-file` });
  const zone = h(
    "label.dropzone",
    { for: `${kind}-file` },
    svgIcon("upload"),
    h("strong", kind === "training" ? "Upload the training dataset" : "Upload a validation dataset"),
    h("span.muted.small", "Drop a .jsonl file here or click to choose. It is checked as soon as it arrives."),
    input,
  );
  const report = h("div.check", { id: `${kind}-check` });
  mount(box, zone, report);
  if (current) mount(report, checkReport(current));

  const upload = async (file) => {
    if (!file) return;
    mount(report, h("div.muted", h("span.spinner"), ` Uploading and checking ${file.name} (${fmtBytes(file.size)})…`));
    onDone(null);
    try {
      const f = await api.uploadFile(file, "fine-tune");
      mount(report, checkReport(f));
      onDone(f);
    } catch (e) {
      mount(report, errorBox(e.message, "Upload refused"));
    }
  };
  input.addEventListener("change", () => upload(input.files[0]));
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("drag");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("drag"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("drag");
    upload(e.dataTransfer.files[0]);
  });
}

/** An issue's message, with the message it concerns when the text does not already name it. */
function issueText(i) {
  const idx = i.message_index;
  if (idx === null || idx === undefined || i.message.includes(`messages[${idx}]`)) return i.message;
  return `messages[${idx}]: ${i.message}`;
}

function checkReport(file) {
  const c = file.check || {};
  const stats = c.stats || {};
  const ok = c.ok !== false && file.status !== "error";
  const errorCount = stats.error_count ?? (c.errors || []).length;
  const warnCount = stats.warning_count ?? (c.warnings || []).length;
  const head = ok
    ? h(
        "div.alert.alert-ok",
        { dataset: { check: "ok" } },
        svgIcon("check"),
        h("div", h("strong", `${file.filename} passed the check`), h("p", `${fmtInt(stats.examples)} conversations ready for training${warnCount ? `, ${warnCount} warning${warnCount === 1 ? "" : "s"}` : ""}.`)),
      )
    : h(
        "div.alert.alert-error",
        { dataset: { check: "failed" } },
        svgIcon("alert"),
        h(
          "div",
          h("strong", `${file.filename} has ${errorCount} error${errorCount === 1 ? "" : "s"}`),
          // status_details repeats the first error, which the list below shows anyway.
          h("p", (c.errors || []).length ? "Fix the lines listed below and upload the file again." : file.status_details || "Fix the file and upload it again."),
        ),
      );
  const t = stats.tokens;
  const kv = (k, v) => h("div", h("dt", k), h("dd", v));
  const facts = h(
    "dl.kv",
    kv("Lines", fmtInt(stats.lines)),
    kv("Conversations", fmtInt(stats.examples)),
    kv("Invalid lines", fmtInt(stats.invalid_lines)),
    kv("With system prompt", fmtInt(stats.examples_with_system)),
    kv("Turns", fmtInt(stats.turns)),
    t ? kv("Tokens / epoch", fmtInt(t.epoch_tokens)) : null,
    t ? kv("Trained tokens / epoch", fmtInt(t.epoch_trained_tokens)) : null,
    t ? kv("Tokens per example", `${fmtInt(t.total.min)} – ${fmtInt(t.total.max)}`) : null,
    t ? kv("Mean / p95", `${fmtInt(t.total.mean)} / ${fmtInt(t.total.p95)}`) : null,
    t && t.over_max_seq_len ? kv(`Over ${t.max_seq_len} tokens`, fmtInt(t.over_max_seq_len)) : null,
  );
  const list = (title, items, cls, total) =>
    items && items.length
      ? h(
          "div.issues",
          { class: cls },
          h("div.issues-head", h("span", title), total > items.length ? h("span.muted", `first ${items.length} of ${total}`) : null),
          h(
            "ul.issue-list",
            items.map((i) =>
              h(
                "li.issue",
                { class: cls === "warnings" ? "warning" : "error", dataset: { line: String(i.line), code: i.code } },
                h("span.line", i.line ? `line ${i.line}` : "file"),
                h("div", h("div.issue-msg", issueText(i)), h("div.issue-code", i.code)),
              ),
            ),
          ),
        )
      : null;
  return h(
    "div.check",
    { dataset: { file: file.id } },
    head,
    list("Errors", c.errors, "errors", errorCount),
    list("Warnings", c.warnings, "warnings", warnCount),
    stats.lines !== undefined ? facts : null,
    t && t.histogram && t.histogram.length
      ? h("div.card.card-pad", h("div.section-title", h("h3", "Length distribution"), h("span.hint", `tokens per conversation; orange: over ${t.max_seq_len}`)), histogram(t.histogram, t.max_seq_len))
      : null,
  );
}

function stepParams(body, state, draw) {
  const inputs = {};
  const errs = {};
  const groups = PARAMS.filter((g) => !g.show || g.show === state.method).map((g) =>
    h(
      "div.param-group",
      h("h3", g.group),
      h(
        "div.param-grid",
        g.fields.map((f) => {
          const input = h("input", {
            type: "number",
            id: `p-${f.id}`,
            name: f.id,
            step: f.type === "int" ? "1" : "any",
            min: f.min,
            max: f.max,
            placeholder: f.placeholder,
            value: state.params[f.id] ?? "",
            inputmode: f.type === "int" ? "numeric" : "decimal",
          });
          inputs[f.id] = input;
          errs[f.id] = h("span.field-error");
          return h(
            "div.field",
            h("span.field-label", h("label", { for: `p-${f.id}` }, f.label), h("span.default", `default ${f.def}`)),
            input,
            h("span.help", f.help),
            errs[f.id],
          );
        }),
      ),
    ),
  );
  const collect = () => {
    let ok = true;
    for (const g of PARAMS) {
      for (const f of g.fields) {
        const input = inputs[f.id];
        if (!input) continue;
        const raw = input.value.trim();
        errs[f.id].textContent = "";
        input.removeAttribute("aria-invalid");
        if (raw === "") {
          delete state.params[f.id];
          continue;
        }
        const v = Number(raw);
        let msg = null;
        if (!Number.isFinite(v)) msg = "Enter a number.";
        else if (f.type === "int" && !Number.isInteger(v)) msg = "Enter a whole number.";
        else if (f.min !== undefined && v < f.min) msg = `At least ${f.min}.`;
        else if (f.max !== undefined && v > f.max) msg = `At most ${f.max}.`;
        if (msg) {
          ok = false;
          errs[f.id].textContent = msg;
          input.setAttribute("aria-invalid", "true");
        } else state.params[f.id] = v;
      }
    }
    return ok;
  };
  mount(
    body,
    h(
      "section.card.card-pad",
      h("div.section-title", h("h2", "Training parameters"), h("span.hint", "Leave a field empty to use its default.")),
      groups,
    ),
    h(
      "div.form-foot",
      h("button.btn", { type: "button", onclick: () => (collect(), (state.step = 1), draw()) }, "Back"),
      h("button.btn.btn-primary", { type: "button", id: "next-2", onclick: () => collect() && ((state.step = 3), draw()) }, "Next: compute"),
    ),
  );
}

/** The job request built from the wizard's state (also the estimate's body). */
function jobRequest(state) {
  const p = state.params;
  const tuna = compact({
    name: state.name.trim(),
    method: state.method,
    learning_rate: p.learning_rate,
    max_steps: p.max_steps,
    warmup_ratio: p.warmup_ratio,
    max_seq_len: p.max_seq_len,
    checkpoint_interval: p.checkpoint_interval,
    eval_interval: p.eval_interval,
    validation_fraction: p.validation_fraction,
    sample_max_tokens: p.sample_max_tokens,
  });
  if (state.method === "lora") {
    const lora = compact({ rank: p.lora_rank, alpha: p.lora_alpha, dropout: p.lora_dropout });
    if (Object.keys(lora).length) tuna.lora = lora;
  }
  const hyperparameters = compact({ n_epochs: p.n_epochs, batch_size: p.batch_size });
  const body = {
    model: state.model,
    training_file: state.training.id,
    method: { type: "supervised", supervised: { hyperparameters } },
    tuna,
  };
  if (state.validation) body.validation_file = state.validation.id;
  if (p.seed !== undefined) body.seed = p.seed;
  return body;
}

function stepCompute(body, state, draw) {
  const req = jobRequest(state);
  const estBox = h("div", h("div.muted", h("span.spinner"), " Estimating duration and cost…"));
  const err = h("div");
  const start = h("button.btn.btn-primary", { type: "button", id: "start-task", disabled: true }, svgIcon("play"), "Start training");
  const summary = h(
    "dl.summary-list",
    h("dt", "Name"),
    h("dd", state.name),
    h("dt", "Task type"),
    h("dd", "Text generation"),
    h("dt", "Method"),
    h("dd", state.method === "full" ? "Full fine-tuning" : "LoRA"),
    h("dt", "Base model"),
    h("dd", state.model),
    h("dt", "Training file"),
    h("dd", `${state.training.filename} (${state.training.id})`),
    state.validation ? [h("dt", "Validation file"), h("dd", `${state.validation.filename} (${state.validation.id})`)] : null,
    h("dt", "Parameters"),
    h("dd.mono", Object.keys(state.params).length ? Object.entries(state.params).map(([k, v]) => `${k}=${v}`).join("  ") : "all defaults"),
  );
  mount(
    body,
    h(
      "div.form-sections",
      h("section.card.card-pad", h("div.section-title", h("h2", "Compute"), h("span.hint", "Where and how long the task runs.")), estBox),
      h("section.card.card-pad", h("div.section-title", h("h2", "Summary")), summary),
    ),
    err,
    h(
      "div.form-foot",
      h("button.btn", { type: "button", onclick: () => ((state.step = 2), draw()) }, "Back"),
      start,
    ),
  );
  Promise.all([api.estimate(req), api.serverStatus().catch(() => null)])
    .then(([e, status]) => {
      mount(estBox, estimateView(e, status));
      start.disabled = false;
    })
    .catch((e) => {
      mount(estBox, errorBox(e.message, "The server cannot run these settings"));
      // The estimate is advice: let the user try anyway; the job request will say what is wrong.
      start.disabled = false;
    });
  start.addEventListener("click", async () => {
    start.disabled = true;
    mount(start, h("span.spinner"), "Starting…");
    mount(err);
    try {
      const job = await api.createJob(req);
      toast(`Task “${jobName(job)}” created`, "ok");
      navigate(`#/tasks/${encodeURIComponent(job.id)}`);
    } catch (e) {
      mount(err, errorBox(e.message, "The task was not created"));
      start.disabled = false;
      mount(start, svgIcon("play"), "Start training");
    }
  });
}

function estimateView(e, status) {
  const est = e.estimate || {};
  const stat = (k, v, sub) => h("div.stat", h("div.k", k), h("div.v", v), sub ? h("div.muted.small", sub) : null);
  const slotCounts = status && status.slots ? Object.values(status.slots).filter(Number.isFinite) : [];
  const slots = slotCounts.length ? slotCounts.reduce((a, b) => a + b, 0) : null;
  const busy = status ? `${status.running} running, ${status.queued} queued` : null;
  const cost = fmtCost(est.cost, est.currency);
  return h(
    "div",
    { id: "estimate" },
    h(
      "div.estimate",
      stat("Device", est.device || "—", slots !== null ? `${slots} device slot${slots === 1 ? "" : "s"}` : null),
      stat(
        "Queue",
        e.queue_position > 1 ? `#${e.queue_position}` : "Starts now",
        [e.queue_position > 1 ? `${e.queue_position - 1} task${e.queue_position === 2 ? "" : "s"} ahead` : null, busy].filter(Boolean).join(" · ") || null,
      ),
      stat("Estimated duration", fmtDuration(est.duration_seconds), `${fmtInt(est.total_steps)} steps · ${fmtNum(est.tokens_per_second, 3)} tokens/s (${est.throughput_source || "estimate"})`),
      stat("Estimated cost", cost, est.price_per_million_tokens ? `${fmtInt(est.total_tokens)} tokens at ${fmtNum(est.price_per_million_tokens)} ${est.currency || ""} / M` : `${fmtInt(est.total_tokens)} tokens; no price configured`),
    ),
    h(
      "p.muted.small",
      { style: { marginTop: "10px" } },
      `${fmtInt(est.examples)} examples, ${fmtInt(est.tokens_per_epoch)} tokens per epoch, ${est.n_epochs} epoch${est.n_epochs === 1 ? "" : "s"}, batch ${est.batch_size}.`,
      e.estimated_start ? ` Expected start: ${fmtDate(e.estimated_start)}.` : "",
    ),
  );
}

function fmtCost(cost, currency) {
  if (!Number.isFinite(cost)) return "—";
  return `${cost.toFixed(cost > 0 && cost < 0.01 ? 4 : 2)} ${currency || ""}`.trim();
}

// ---- page: task ----------------------------------------------------------------------------

function pageTask(main, id) {
  mount(main, h("div.loading", h("span.spinner"), " Loading task…"));
  let alive = true;
  let timer = null;
  const charts = {
    loss: new LineChart("Loss", [
      { name: "training", color: "#1c79b0" },
      { name: "validation", color: "#e8833a", dashed: true },
    ]),
    lr: new LineChart("Learning rate", [{ name: "lr", color: "#7c3aed" }], { yFormat: (v) => (v === 0 ? "0" : v.toExponential(1)) }),
    grad: new LineChart("Gradient norm", [{ name: "grad norm", color: "#0f9d76" }]),
    tps: new LineChart("Tokens / s", [{ name: "tokens/s", color: "#c2410c" }], { zeroBased: true, yFormat: (v) => fmtNum(v, 3) }),
    acc: new LineChart("Token accuracy", [{ name: "accuracy", color: "#0e7490" }], { percent: true }),
  };
  charts.loss.el.classList.add("wide");
  onLeave(() => {
    alive = false;
    clearTimeout(timer);
    Object.values(charts).forEach((c) => c.destroy());
  });

  const view = {
    head: h("div.page-head"),
    progress: h("section.card.card-pad", { id: "progress" }),
    error: h("div"),
    charts: h("div.charts", Object.values(charts).map((c) => c.el)),
    checkpoints: h("div.ckpt-list", { id: "checkpoints" }),
    ckptHint: h("span.hint"),
    metricsHint: h("span.hint"),
    events: h("ul.events", { id: "events" }),
    details: h("dl.summary-list"),
  };
  let job = null;
  let ckptKey = "";
  let metricsSignature = "";
  let checkpointsChanged = false;
  let checkpoints = [];

  const layout = () =>
    mount(
      main,
      view.head,
      h("div.task-top", view.progress, view.error),
      h(
        "div.task-grid",
        h(
          "div.side-stack",
          h("section.card.sec-metrics", h("div.card-head", h("h2", "Training metrics"), view.metricsHint), view.charts),
          h("section.card.sec-events", h("div.card-head", h("h2", "Events")), view.events),
        ),
        h(
          "div.side-stack",
          h("section.card.sec-checkpoints", h("div.card-head", h("h2", "Checkpoints"), view.ckptHint), view.checkpoints),
          h("section.card.sec-settings", h("div.card-head", h("h2", "Settings")), h("div.card-body", view.details)),
        ),
      ),
    );

  const act = async (action, btn) => {
    btn.disabled = true;
    try {
      job = await api.jobAction(id, action);
      toast(`${action[0].toUpperCase()}${action.slice(1)} requested`, "ok");
      drawJob();
      schedule(300);
    } catch (e) {
      mount(view.error, errorBox(e.message, `Cannot ${action} this task`));
      btn.disabled = false;
    }
  };

  const drawJob = () => {
    const j = job;
    const p = jobProgress(j);
    const t = j.tuna || {};
    const actions = [];
    // A queued job leaves the queue at once; a running one stops after its step, saving a checkpoint.
    if ((j.status === "running" && !t.pause_requested) || j.status === "queued")
      actions.push(h("button.btn", { type: "button", id: "pause", onclick: (e) => act("pause", e.currentTarget) }, svgIcon("pause"), "Pause"));
    if (j.status === "paused") actions.push(h("button.btn", { type: "button", id: "resume", onclick: (e) => act("resume", e.currentTarget) }, svgIcon("play"), "Resume"));
    if (!TERMINAL.has(j.status))
      actions.push(
        h(
          "button.btn.btn-danger",
          {
            type: "button",
            id: "cancel",
            onclick: (e) => {
              if (confirm(`Cancel “${jobName(j)}”? Checkpoints written so far are kept.`)) act("cancel", e.currentTarget);
            },
          },
          svgIcon("stop"),
          "Cancel",
        ),
      );
    mount(
      view.head,
      h(
        "div",
        h("a.crumb", { href: "#/" }, svgIcon("back"), "Tasks"),
        h("h1", { id: "task-title" }, jobName(j)),
        h("p.sub", h("span.mono", j.id), " · ", j.model, " · ", jobMethod(j), " · created ", fmtDate(j.created_at)),
      ),
      h("div.actions", actions),
    );
    document.title = `${jobName(j)} · Tuna`;
    view.metricsHint.textContent = TERMINAL.has(j.status) ? "Whole run · hover for values" : "Updates live · hover for values";
    const eta = j.status === "running" ? t.eta_seconds : j.status === "queued" && t.estimated_start ? Math.max(0, t.estimated_start - Date.now() / 1000) : null;
    const item = (k, v, idAttr) => h("div", h("div.k", k), h("div.v", { id: idAttr }, v));
    mount(
      view.progress,
      h(
        "div.task-progress",
        h(
          "div.bar-wrap",
          h("div.bar-line", h("span", { id: "task-status" }, statusBadge(j.status, statusExtra(j))), h("span.muted", { id: "task-steps" }, p.total ? `step ${p.step} / ${p.total}` : `step ${p.step}`)),
          h("div.progress-lg", progressBar(p.fraction, "training progress")),
        ),
        item("Progress", `${Math.round(p.fraction * 100)}%`, "task-percent"),
        item("Epoch", p.totalEpochs ? `${fmtNum(p.epoch, 3)} / ${p.totalEpochs}` : fmtNum(p.epoch, 3)),
        item("Elapsed", fmtDuration(jobDuration(j)), "task-elapsed"),
        item(j.status === "queued" ? "Starts in" : "Remaining", eta !== null && eta !== undefined ? fmtDuration(eta) : "—", "task-eta"),
      ),
    );
    if (j.error && j.error.message) mount(view.error, errorBox(j.error.message, "Training failed"));
    else if (!view.error.dataset.sticky) mount(view.error);

    const d = (k, v) => (v === null || v === undefined || v === "" ? null : [h("dt", k), h("dd", String(v))]);
    const hp = j.hyperparameters || {};
    const est = t.estimate || {};
    mount(
      view.details,
      d("Base model", j.model),
      d("Method", t.method === "full" ? "Full fine-tuning" : "LoRA"),
      t.lora ? d("LoRA", `rank ${t.lora.rank}, alpha ${t.lora.alpha}, dropout ${t.lora.dropout}`) : null,
      d("Epochs", hp.n_epochs),
      d("Batch size", hp.batch_size),
      d("Learning rate", t.learning_rate !== undefined ? fmtNum(t.learning_rate) : null),
      d("Max sequence length", t.max_seq_len),
      d("Checkpoint interval", t.checkpoint_interval ? `${t.checkpoint_interval} steps` : "every epoch"),
      d("Seed", j.seed),
      d("Training file", j.training_file),
      d("Validation file", j.validation_file),
      d("Device", t.device),
      d("Estimate", est.duration_seconds !== undefined ? `${fmtDuration(est.duration_seconds)}, ${fmtCost(est.cost, est.currency)}` : null),
      d("Fine-tuned model", j.fine_tuned_model),
      d("Trained tokens", j.trained_tokens !== null && j.trained_tokens !== undefined ? fmtInt(j.trained_tokens) : null),
    );
  };

  const loadMetrics = async () => {
    let m;
    try {
      m = await api.listMetrics(id);
    } catch {
      return; // charts keep their last data; the job poll shows real failures
    }
    const rows = Array.isArray(m) ? m : m.data || [];
    // Redraw when a step arrives or the last step gains its validation loss.
    const signature = `${rows.length}:${JSON.stringify(rows[rows.length - 1] || null)}`;
    if (signature === metricsSignature && !checkpointsChanged) return;
    metricsSignature = signature;
    checkpointsChanged = false;
    // The trainer's rows, oldest first: `train` per optimizer step (`loss`, `lr`, `grad_norm`,
    // `tokens_per_sec`, `token_accuracy`), `eval` per validation pass (`loss`).
    const series = (type, key) =>
      rows.filter((r) => r.type === type && Number.isFinite(r[key])).map((r) => ({ x: r.step, y: r[key] }));
    charts.loss.setData([series("train", "loss"), series("eval", "loss")]);
    charts.lr.setData([series("train", "lr")]);
    charts.grad.setData([series("train", "grad_norm")]);
    charts.tps.setData([series("train", "tokens_per_sec")]);
    charts.acc.setData([series("train", "token_accuracy")]);
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
    view.ckptHint.textContent = checkpoints.length ? `${checkpoints.length} saved` : "";
    if (!checkpoints.length) {
      mount(view.checkpoints, empty("No checkpoint yet", TERMINAL.has(job.status) ? "This task wrote no checkpoint." : "Each checkpoint appears here with its metrics and a sample answer."));
      return;
    }
    const finalStep = job.status === "succeeded" ? checkpoints[0].step_number : null;
    mount(view.checkpoints, checkpoints.map((c) => checkpointCard(c, job, c.step_number === finalStep)));
    checkpointsChanged = true; // validation points may come from checkpoints
  };

  const loadEvents = async () => {
    try {
      const list = await api.listEvents(id, 50);
      const evs = list.data || [];
      mount(
        view.events,
        evs.length
          ? evs.map((e) => h("li", h("time", fmtTime(e.created_at)), h("span", { class: `level-${e.level}` }, e.message)))
          : h("li", h("span.muted", "No events yet.")),
      );
    } catch {
      /* keep the old list */
    }
  };

  const poll = async () => {
    if (!alive) return;
    try {
      job = await api.getJob(id);
    } catch (e) {
      if (!alive) return;
      if (!job) {
        mount(main, h("div.page-head", h("div", h("a.crumb", { href: "#/" }, svgIcon("back"), "Tasks"), h("h1", "Task not available"))), errorBox(e.message, e.status === 404 ? "No such task" : "Cannot load the task"));
        return;
      }
      schedule(5000);
      return;
    }
    if (!alive) return;
    if (!view.head.isConnected) layout();
    drawJob();
    await Promise.all([loadCheckpoints(), loadEvents()]);
    await loadMetrics();
    if (!alive) return;
    if (!TERMINAL.has(job.status)) schedule(job.status === "running" ? 1500 : 3000);
  };
  const schedule = (ms) => {
    clearTimeout(timer);
    timer = setTimeout(poll, ms);
  };
  poll();
}

function checkpointCard(c, job, isFinal) {
  const m = c.metrics || {};
  const t = c.tuna || {};
  const samples = t.samples || [];
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
    t.kind === "full" ? "Download model" : "Download adapter",
  );
  const test = h(
    "button.btn.btn-sm.btn-primary",
    { type: "button", dataset: { action: "effect-test" }, onclick: () => openEffectTest({ job, checkpoint: c }) },
    svgIcon("flask"),
    "Effect test",
  );
  return h(
    "article.ckpt",
    { dataset: { step: String(c.step_number), checkpoint: c.id } },
    h(
      "div.ckpt-head",
      h("div.ckpt-title", `Step ${c.step_number}`, t.epoch !== null && t.epoch !== undefined ? h("span.muted.small", `epoch ${fmtNum(t.epoch, 3)}`) : null, isFinal ? h("span.tag", "final") : null),
      h("div.ckpt-actions", download, test),
    ),
    h(
      "div.ckpt-metrics",
      metric("train loss", m.train_loss),
      metric("valid loss", m.valid_loss ?? m.full_valid_loss),
      metric("token acc.", m.train_mean_token_accuracy, true),
      metric("valid acc.", m.valid_mean_token_accuracy ?? m.full_valid_mean_token_accuracy, true),
    ),
    samples.map((s, i) => sampleView(s, i, samples.length)),
    h("div.task-id", { title: "Model id for chat completions" }, c.fine_tuned_model_checkpoint),
  );
}

function contentText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => p.text || "").join("");
  return content === null || content === undefined ? "" : String(content);
}

function sampleView(s, i, n) {
  const msgs = s.messages || [];
  const lastUser = [...msgs].reverse().find((m) => m.role === "user");
  return h(
    "details.sample",
    h("summary", n > 1 ? `Sample ${i + 1}` : "Auto-generated sample", s.held_out === false ? h("span.muted.small", " (training example)") : null),
    h(
      "div.sample-body",
      lastUser ? h("div.sample-prompt", h("b", "Prompt: "), contentText(lastUser.content)) : null,
      h(
        "div.compare",
        h("div.sample-generated", h("span.label", "Model output"), (s.generated || "").trim() || h("span.muted", "(empty)")),
        h("div.sample-reference", h("span.label", "Reference answer"), (s.reference || "").trim()),
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

render();
