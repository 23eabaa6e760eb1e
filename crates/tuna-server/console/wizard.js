// The new-task wizard: 1 task and dataset, 2 training parameters, 3 compute and start. The step is
// in the address (#/new/1, #/new/2, #/new/3), so Back, Forward and reload keep it; everything the
// user entered is kept as a draft in this browser (localStorage) until the task starts or the
// user discards it — after being asked.

import * as api from "./api.js";
import { histogram, isOver } from "./charts.js";
import { plural, t } from "./i18n.js";
import { fmtCost, jobName } from "./jobs.js";
import { navigate, onLeave, redirect, currentRoute } from "./router.js";
import { compact, errorBox, fmtBytes, fmtDate, fmtDuration, fmtInt, fmtNum, h, mount, svgIcon, toast } from "./ui.js";

// ---- the draft -----------------------------------------------------------------------------

const DRAFT_STORAGE = "tuna.draft";

/** A short fingerprint of the signed-in key: a draft belongs to the account that made it. */
function owner() {
  const key = api.getKey() || "";
  let x = 5381;
  for (let i = 0; i < key.length; i++) x = ((x * 33) ^ key.charCodeAt(i)) >>> 0;
  return x.toString(36);
}

function emptyDraft() {
  return { v: 1, owner: owner(), step: 1, name: "", method: "lora", model: "", training: null, validation: null, params: {} };
}

export function loadDraft() {
  try {
    const d = JSON.parse(localStorage.getItem(DRAFT_STORAGE) || "null");
    if (d && d.v === 1 && d.owner === owner()) return { ...emptyDraft(), ...d, params: d.params || {} };
  } catch {
    /* unreadable: start afresh */
  }
  return emptyDraft();
}

function saveDraft(d) {
  try {
    localStorage.setItem(DRAFT_STORAGE, JSON.stringify({ ...d, updated: Date.now() }));
  } catch {
    /* storage full or disabled: the draft then lives as long as the page */
  }
}

function clearDraft() {
  try {
    localStorage.removeItem(DRAFT_STORAGE);
  } catch {
    /* nothing to clear */
  }
}

/** Whether the draft holds anything the user would miss. */
function hasContent(d) {
  return Boolean(d.name.trim() || d.training || d.validation || Object.keys(d.params).length || d.method !== "lora");
}

/** The draft of this browser for the task list's banner, or null. */
export function draftSummary() {
  const d = loadDraft();
  return hasContent(d) ? { name: d.name.trim(), step: d.step } : null;
}

/** Asks, then forgets the draft. True when it was discarded. */
export function discardDraft() {
  if (!confirm(t("Discard this unfinished task? Its name, dataset choice and parameters are forgotten; uploaded files stay on the server."))) return false;
  clearDraft();
  return true;
}

/**
 * A new draft from an existing job: its base model, method, files and the settings it ran with
 * (as resolved by the server). A clone is named "… (copy)" and opens on step 1; a retry keeps the
 * name and opens on the last step, ready to start. Asks before replacing an unfinished draft.
 * False when the user kept the old draft.
 */
export async function draftFromJob(job, { retry = false } = {}) {
  if (hasContent(loadDraft()) && !confirm(t("Replace your unfinished new task with this task's settings?"))) return false;
  const tu = job.tuna || {};
  const hp = (job.method && job.method.supervised && job.method.supervised.hyperparameters) || job.hyperparameters || {};
  const lora = tu.lora || {};
  const values = {
    n_epochs: hp.n_epochs,
    batch_size: hp.batch_size,
    learning_rate: tu.learning_rate,
    max_steps: tu.max_steps,
    warmup_ratio: tu.warmup_ratio,
    seed: job.seed,
    lora_rank: lora.rank,
    lora_alpha: lora.alpha,
    lora_dropout: lora.dropout,
    max_seq_len: tu.max_seq_len,
    checkpoint_interval: tu.checkpoint_interval,
    eval_interval: tu.eval_interval,
    validation_fraction: tu.validation_fraction,
    sample_max_tokens: tu.sample_max_tokens,
  };
  const params = {};
  for (const [k, v] of Object.entries(values)) if (typeof v === "number" && Number.isFinite(v)) params[k] = String(v);
  // A dataset deleted since is left empty: step 1 asks for it again.
  const file = (id) => (id ? api.getFile(id).then(fileForDraft, () => null) : Promise.resolve(null));
  const [training, validation] = await Promise.all([file(job.training_file), file(job.validation_file)]);
  const name = retry ? jobName(job) : t("{name} (copy)", { name: jobName(job) });
  const d = {
    ...emptyDraft(),
    name: name.slice(0, 64),
    method: tu.method === "full" ? "full" : "lora",
    model: job.model,
    training,
    validation,
    params,
    step: retry && training ? 3 : 1,
  };
  saveDraft(d);
  navigate(`#/new/${d.step}`);
  return true;
}

// ---- parameters ----------------------------------------------------------------------------

/**
 * Training parameters shown in step 2: one line of explanation and the default each. `path` is
 * where the value goes in the job request; `show` limits a group to one method.
 */
function paramGroups() {
  return [
    {
      group: t("Training"),
      fields: [
        { id: "n_epochs", label: t("Epochs"), type: "int", min: 1, max: 50, placeholder: t("auto"), def: t("auto (3; more for small sets)"), help: t("Passes over the training data. More epochs fit the data more closely; too many over-fit.") },
        { id: "learning_rate", label: t("Learning rate"), type: "float", min: 0, minExclusive: true, max: 1, placeholder: t("auto"), def: t("the model's recommendation, else 1e-4 LoRA, 1e-5 full"), help: t("Peak step size of the optimizer. Too high diverges, too low learns slowly.") },
        { id: "batch_size", label: t("Batch size"), type: "int", min: 1, max: 256, placeholder: t("auto"), def: t("auto (0.2% of examples)"), help: t("Examples per optimizer step. Larger batches give smoother, fewer steps.") },
        { id: "max_steps", label: t("Max steps"), type: "int", min: 1, max: 10_000_000, placeholder: t("none"), def: t("none"), help: t("Stop after this many optimizer steps, whatever the epochs.") },
        { id: "warmup_ratio", label: t("Warmup ratio"), type: "float", min: 0, max: 0.99, placeholder: "0.03", def: "0.03", help: t("Share of the steps over which the learning rate rises from zero.") },
        { id: "seed", label: t("Seed"), type: "int", min: 0, placeholder: t("random"), def: t("random"), help: t("Seeds shuffling, the validation split and initialisation; the same seed repeats a run.") },
      ],
    },
    {
      group: "LoRA",
      show: "lora",
      fields: [
        { id: "lora_rank", label: t("LoRA rank"), type: "int", min: 1, max: 1024, placeholder: "16", def: "16", help: t("Width of the low-rank update. Higher ranks learn more and cost more memory.") },
        { id: "lora_alpha", label: t("LoRA alpha"), type: "float", min: 0, minExclusive: true, placeholder: t("2 × rank"), def: t("2 × rank"), help: t("Scale of the update (alpha / rank). Usually twice the rank.") },
        { id: "lora_dropout", label: t("LoRA dropout"), type: "float", min: 0, max: 0.99, placeholder: "0.05", def: "0.05", help: t("Drops inputs of the adapter during training to reduce over-fitting.") },
      ],
    },
    {
      group: t("Data and checkpoints"),
      fields: [
        { id: "max_seq_len", label: t("Max sequence length"), type: "int", min: 16, max: 131072, placeholder: "2048", def: "2048", help: t("Longest example in tokens; longer ones are truncated.") },
        { id: "checkpoint_interval", label: t("Checkpoint interval"), type: "int", min: 1, max: 10_000_000, placeholder: t("each epoch"), def: t("every epoch"), help: t("Save a checkpoint (with a sample answer) every this many steps.") },
        { id: "eval_interval", label: t("Evaluation interval"), type: "int", min: 1, max: 10_000_000, placeholder: t("each checkpoint"), def: t("every checkpoint"), help: t("Compute the validation loss every this many steps.") },
        { id: "validation_fraction", label: t("Validation share"), type: "float", min: 0, max: 0.99, placeholder: t("auto"), def: t("5% from 50 examples"), help: t("Share of the examples held out to measure validation loss.") },
        { id: "sample_max_tokens", label: t("Sample length"), type: "int", min: 1, max: 4096, placeholder: "64", def: "64", help: t("Longest automatic sample answer written at each checkpoint, in tokens.") },
      ],
    },
  ];
}

function visibleFields(d) {
  return paramGroups()
    .filter((g) => !g.show || g.show === d.method)
    .flatMap((g) => g.fields);
}

/** The message for one field's raw text, or null when it is empty (default) or valid. */
function fieldError(f, raw) {
  if (raw === undefined || raw === null || String(raw).trim() === "") return null;
  const v = Number(String(raw).trim());
  if (!Number.isFinite(v)) return t("Enter a number.");
  if (f.type === "int" && !Number.isInteger(v)) return t("Enter a whole number.");
  if (f.min !== undefined && (f.minExclusive ? v <= f.min : v < f.min)) return f.minExclusive ? t("More than {min}.", { min: f.min }) : t("At least {min}.", { min: f.min });
  if (f.max !== undefined && v > f.max) return t("At most {max}.", { max: f.max });
  return null;
}

/** Every invalid parameter of the draft: `{id: message}`. */
function paramErrors(d) {
  const errs = {};
  for (const f of visibleFields(d)) {
    const msg = fieldError(f, d.params[f.id]);
    if (msg) errs[f.id] = msg;
  }
  return errs;
}

/** The parameters as numbers, empty ones left out. */
function paramValues(d) {
  const out = {};
  for (const f of visibleFields(d)) {
    const raw = d.params[f.id];
    if (raw !== undefined && String(raw).trim() !== "") out[f.id] = Number(String(raw).trim());
  }
  return out;
}

function step1Problem(d, models) {
  if (!d.name.trim()) return t("Give the task a name.");
  if (!d.model || (models && !models.some((m) => m.id === d.model))) return t("Choose a base model.");
  if (!d.training) return t("Upload a training dataset.");
  if (d.training.check?.ok === false || (d.validation && d.validation.check?.ok === false)) return t("Fix the dataset's errors and upload it again.");
  return null;
}

/** The furthest step the draft may show: a later step needs the earlier ones complete. */
function allowedStep(d, models) {
  if (step1Problem(d, models)) return 1;
  if (Object.keys(paramErrors(d)).length) return 2;
  return 3;
}

// ---- the page ------------------------------------------------------------------------------

/** Base models of the server, fetched once per visit of the wizard. */
let modelsCache = null;

export function pageNewTask(main, routeStep) {
  const draft = loadDraft();
  if (routeStep === null) {
    redirect(`#/new/${draft.step || 1}`);
    return;
  }
  // Leaving for another page keeps the draft, and says where to find it.
  onLeave(() => {
    if (currentRoute().page !== "new" && hasContent(loadDraft()) && api.getKey()) toast(t("Your unfinished task is kept in this browser: New task continues it."), "info");
  });
  const stepper = h("ol.stepper", { id: "wizard-steps" });
  const body = h("div");
  mount(
    main,
    h(
      "div.page-head",
      h("div", h("a.crumb", { href: "#/" }, svgIcon("back"), t("Tasks")), h("h1", t("New fine-tuning task")), h("p.sub", t("Name the task, choose a base model and upload a dataset; then set the parameters and start."))),
    ),
    stepper,
    body,
  );
  const show = (models) => {
    const allowed = allowedStep(draft, models);
    const step = Math.min(routeStep, allowed);
    if (step !== routeStep) {
      redirect(`#/new/${step}`);
      return;
    }
    draft.step = step;
    saveDraft(draft);
    mount(
      stepper,
      [t("Task and dataset"), t("Training parameters"), t("Compute and start")].map((label, i) =>
        h("li", { class: i + 1 === step ? "active" : i + 1 < step ? "done" : "", "aria-current": i + 1 === step ? "step" : null }, label),
      ),
    );
    main.dataset.step = String(step);
    if (step === 1) stepBasics(body, draft, models);
    else if (step === 2) stepParams(body, draft);
    else stepCompute(body, draft);
  };
  const withModels = modelsCache ? Promise.resolve(modelsCache) : api.listModels().then((list) => (list.data || []).filter((m) => !m.tuna || m.tuna.kind === "base"));
  withModels
    .then((models) => {
      modelsCache = models;
      setTimeout(() => (modelsCache = null), 30_000);
      if (!draft.model && models.length) draft.model = models[0].id;
      show(models);
    })
    .catch((e) => {
      // Without the model list only step 1 can be shown, with the reason.
      stepBasics(body, draft, [], e.message);
    });
  mount(body, h("div.loading", h("span.spinner"), ` ${t("Loading models…")}`));
}

function cancelButton(draft) {
  return h(
    "button.btn",
    {
      type: "button",
      id: "wizard-cancel",
      onclick: () => {
        if (hasContent(draft) && !discardDraft()) return;
        if (!hasContent(draft)) clearDraft();
        navigate("#/");
      },
    },
    t("Cancel"),
  );
}

function stepBasics(body, draft, models, modelError) {
  const save = () => saveDraft(draft);
  const name = h("input", {
    type: "text",
    id: "task-name",
    value: draft.name,
    maxlength: "64",
    placeholder: t("e.g. support-bot-v1"),
    oninput: (e) => {
      draft.name = e.target.value;
      save();
      update();
    },
  });
  const radio = (group, value, title, text, checked) =>
    h(
      "label.choice",
      h("input", {
        type: "radio",
        name: group,
        value,
        checked,
        onchange: () => {
          if (group === "method") draft.method = value;
          save();
          update();
        },
      }),
      h("strong", title),
      h("span", text),
    );
  let modelField;
  if (!models.length) modelField = errorBox(modelError || t("The server has no base models. Add one with `tuna models add`."), t("No base model available"));
  else
    modelField = h(
      "select",
      {
        id: "base-model",
        onchange: (e) => {
          draft.model = e.target.value;
          save();
          update();
        },
      },
      models.map((m) => h("option", { value: m.id, selected: m.id === draft.model }, m.id)),
    );
  const chosen = models.find((m) => m.id === draft.model);
  const modelCard = h("div.model-card", { id: "model-card" });
  const drawModelCard = () => {
    const m = models.find((x) => x.id === draft.model);
    const desc = m && m.tuna && m.tuna.description;
    mount(modelCard, desc ? h("p.small.muted", desc) : null);
  };
  drawModelCard();

  const trainingBox = h("div");
  const validationBox = h("div");
  const next = h("button.btn.btn-primary", { type: "button", id: "next-1", onclick: () => navigate("#/new/2") }, t("Next: training parameters"));
  const hint = h("span.muted.small", { id: "step1-hint" });
  const update = () => {
    const problem = step1Problem(draft, models);
    next.disabled = Boolean(problem);
    hint.textContent = problem || "";
    drawModelCard();
  };

  const startOver = hasContent(draft)
    ? h(
        "button.btn.btn-sm.btn-ghost",
        {
          type: "button",
          id: "wizard-start-over",
          onclick: () => {
            if (!discardDraft()) return;
            redirect("#/new/1");
          },
        },
        t("Start over"),
      )
    : null;
  mount(
    body,
    h(
      "div.form-sections",
      startOver ? h("div.draft-note", { id: "draft-restored" }, h("span.muted.small", t("Restored from your draft in this browser.")), startOver) : null,
      h(
        "section.card.card-pad",
        h("div.section-title", h("h2", t("Task"))),
        h(
          "div.grid-2",
          h("div.field", h("label", { for: "task-name" }, t("Task name")), name, h("span.help", t("A distinctive name to find the task again."))),
          h("div.field", h("label", { for: "base-model" }, t("Base model")), modelField, chosen ? modelCard : null, h("span.help", t("The model to fine-tune. Only base models are listed."))),
        ),
        h(
          "div.field",
          { style: { marginTop: "16px" } },
          h("span.field-label", h("label", t("Task type"))),
          h("div.choices", radio("task-type", "text-generation", t("Text generation"), t("Chat models trained on conversations (OpenAI messages format)."), true)),
        ),
        h(
          "div.field",
          { style: { marginTop: "16px" } },
          h("span.field-label", h("label", t("Fine-tuning method"))),
          h(
            "div.choices",
            radio("method", "lora", "LoRA", t("Trains a small adapter over the frozen model. Fast, light, the usual choice."), draft.method === "lora"),
            radio("method", "full", t("Full fine-tuning"), t("Trains every weight. Needs much more memory; strongest effect."), draft.method === "full"),
          ),
        ),
      ),
      h(
        "section.card.card-pad",
        h("div.section-title", h("h2", t("Dataset")), h("span.hint", t('JSONL, one {"messages": [...]} conversation per line.'))),
        trainingBox,
        h("details.validation-upload", { style: { marginTop: "14px" }, open: !!draft.validation }, h("summary.small", t("Add a separate validation file (optional)")), validationBox),
      ),
    ),
    h("div.form-foot", cancelButton(draft), h("div", hint, " ", next)),
  );
  const setFile = (kind) => (f) => {
    draft[kind] = f;
    save();
    update();
  };
  uploader(trainingBox, "training", draft.training, setFile("training"));
  uploader(validationBox, "validation", draft.validation, setFile("validation"));
  update();
  // A restored draft names files uploaded earlier: make sure the server still has them.
  for (const kind of ["training", "validation"]) {
    const f = draft[kind];
    if (!f) continue;
    api.getFile(f.id).then(
      (fresh) => {
        if (draft[kind] && draft[kind].id === fresh.id && !fresh.check && f.check) fresh.check = f.check;
      },
      (e) => {
        if (e.status !== 404 || !draft[kind] || draft[kind].id !== f.id) return;
        draft[kind] = null;
        save();
        update();
        const box = kind === "training" ? trainingBox : validationBox;
        box.querySelector(".check")?.replaceChildren(errorBox(t("{file} is no longer on the server; upload it again.", { file: f.filename }), t("File missing")));
      },
    );
  }
}

/** Only what the wizard and the summary need of a file object (the draft lives in localStorage). */
function fileForDraft(f) {
  return { id: f.id, filename: f.filename, bytes: f.bytes, status: f.status, status_details: f.status_details, check: f.check };
}

/** A file drop zone that uploads at once and shows the check's report below it. */
function uploader(box, kind, current, onDone) {
  const input = h("input", { type: "file", accept: ".jsonl,.json,application/jsonl,application/x-ndjson,text/plain", id: `${kind}-file` });
  const zone = h(
    "label.dropzone",
    { for: `${kind}-file` },
    svgIcon("upload"),
    h("strong", kind === "training" ? t("Upload the training dataset") : t("Upload a validation dataset")),
    h("span.muted.small", t("Drop a .jsonl file here or click to choose. It is checked as soon as it arrives.")),
    input,
  );
  const report = h("div.check", { id: `${kind}-check` });
  mount(box, zone, report);
  if (current) mount(report, checkReport(current));

  const upload = async (file) => {
    if (!file) return;
    mount(report, h("div.muted", h("span.spinner"), ` ${t("Uploading and checking {file} ({size})…", { file: file.name, size: fmtBytes(file.size) })}`));
    onDone(null);
    try {
      const f = await api.uploadFile(file, "fine-tune");
      mount(report, checkReport(f));
      onDone(fileForDraft(f));
    } catch (e) {
      mount(report, errorBox(e.message, t("Upload refused")));
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

export function checkReport(file) {
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
        h(
          "div",
          h("strong", t("{file} passed the check", { file: file.filename })),
          h("p", plural(stats.examples ?? 0, "{n} conversation ready for training", "{n} conversations ready for training") + (warnCount ? plural(warnCount, ", {n} warning", ", {n} warnings") : "") + t(".")),
        ),
      )
    : h(
        "div.alert.alert-error",
        { dataset: { check: "failed" } },
        svgIcon("alert"),
        h(
          "div",
          h("strong", plural(errorCount, "{file} has {n} error", "{file} has {n} errors", { file: file.filename })),
          // status_details repeats the first error, which the list below shows anyway.
          h("p", (c.errors || []).length ? t("Fix the lines listed below and upload the file again.") : file.status_details || t("Fix the file and upload it again.")),
        ),
      );
  const tk = stats.tokens;
  const kv = (k, v) => h("div", h("dt", k), h("dd", v));
  // Statistics describe conversations: a file without a single readable one has none to show.
  const hasExamples = Number(stats.examples) > 0;
  const facts = h(
    "dl.kv",
    kv(t("Lines"), fmtInt(stats.lines)),
    kv(t("Conversations"), fmtInt(stats.examples)),
    kv(t("Invalid lines"), fmtInt(stats.invalid_lines)),
    kv(t("With system prompt"), fmtInt(stats.examples_with_system)),
    kv(t("Turns"), fmtInt(stats.turns)),
    tk ? kv(t("Tokens / epoch"), fmtInt(tk.epoch_tokens)) : null,
    tk ? kv(t("Trained tokens / epoch"), fmtInt(tk.epoch_trained_tokens)) : null,
    tk ? kv(t("Tokens per example"), `${fmtInt(tk.total.min)} – ${fmtInt(tk.total.max)}`) : null,
    tk ? kv(t("Mean / p95"), `${fmtInt(tk.total.mean)} / ${fmtInt(tk.total.p95)}`) : null,
    tk && tk.over_max_seq_len ? kv(t("Over {n} tokens", { n: tk.max_seq_len }), fmtInt(tk.over_max_seq_len)) : null,
  );
  const list = (title, items, cls, total) =>
    items && items.length
      ? h(
          "div.issues",
          { class: cls },
          h("div.issues-head", h("span", title), total > items.length ? h("span.muted", t("first {shown} of {total}", { shown: items.length, total })) : null),
          h(
            "ul.issue-list",
            items.map((i) =>
              h(
                "li.issue",
                { class: cls === "warnings" ? "warning" : "error", dataset: { line: String(i.line), code: i.code } },
                h("span.line", i.line ? t("line {n}", { n: i.line }) : t("file")),
                h("div", h("div.issue-msg", issueText(i)), h("div.issue-code", i.code)),
              ),
            ),
          ),
        )
      : null;
  const buckets = (tk && tk.histogram) || [];
  const showHistogram = hasExamples && buckets.some((b) => b.count > 0);
  const anyOver = buckets.some((b) => isOver(b, tk && tk.max_seq_len));
  return h(
    "div.check",
    { dataset: { file: file.id } },
    head,
    list(t("Errors"), c.errors, "errors", errorCount),
    list(t("Warnings"), c.warnings, "warnings", warnCount),
    hasExamples ? facts : null,
    showHistogram
      ? h(
          "div.card.card-pad.histogram-card",
          h("div.section-title", h("h3", t("Length distribution")), h("span.hint", anyOver ? t("tokens per conversation; orange: over {n}", { n: tk.max_seq_len }) : t("tokens per conversation"))),
          h("div.histogram-wrap", histogram(buckets, tk.max_seq_len)),
        )
      : null,
  );
}

function stepParams(body, draft) {
  const inputs = {};
  const errs = {};
  const groups = paramGroups()
    .filter((g) => !g.show || g.show === draft.method)
    .map((g) =>
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
              min: f.minExclusive ? null : f.min,
              max: f.max,
              placeholder: f.placeholder,
              value: draft.params[f.id] ?? "",
              inputmode: f.type === "int" ? "numeric" : "decimal",
              oninput: () => {
                const raw = input.value.trim();
                if (raw === "") delete draft.params[f.id];
                else draft.params[f.id] = raw;
                saveDraft(draft);
                if (errs[f.id].textContent) show(f, fieldError(f, raw));
              },
            });
            inputs[f.id] = input;
            errs[f.id] = h("span.field-error", { id: `p-${f.id}-error` });
            return h(
              "div.field",
              { dataset: { param: f.id } },
              h("span.field-label", h("label", { for: `p-${f.id}` }, f.label), h("span.default", t("default {value}", { value: f.def }))),
              input,
              h("span.help", f.help),
              errs[f.id],
            );
          }),
        ),
      ),
    );
  const show = (f, msg) => {
    errs[f.id].textContent = msg || "";
    if (msg) {
      inputs[f.id].setAttribute("aria-invalid", "true");
      inputs[f.id].setAttribute("aria-describedby", `p-${f.id}-error`);
    } else inputs[f.id].removeAttribute("aria-invalid");
  };
  /** Shows every field's error; the first invalid field is scrolled into view and focused. */
  const check = () => {
    const bad = paramErrors(draft);
    let first = null;
    for (const f of visibleFields(draft)) {
      // A number input holding text reads as "" — its `validity` still knows.
      const msg = bad[f.id] || (inputs[f.id].validity.badInput ? t("Enter a number.") : null);
      show(f, msg);
      if (msg && !first) first = inputs[f.id];
    }
    if (first) {
      first.scrollIntoView({ block: "center" });
      first.focus({ preventScroll: true });
      return false;
    }
    return true;
  };
  mount(
    body,
    h("section.card.card-pad", h("div.section-title", h("h2", t("Training parameters")), h("span.hint", t("Leave a field empty to use its default."))), groups),
    h(
      "div.form-foot",
      h("div", cancelButton(draft)),
      h(
        "div",
        h("button.btn", { type: "button", id: "back-2", onclick: () => navigate("#/new/1") }, t("Back")),
        " ",
        h("button.btn.btn-primary", { type: "button", id: "next-2", onclick: () => check() && navigate("#/new/3") }, t("Next: compute")),
      ),
    ),
  );
  // Arriving from a later step with invalid values (an edited address): say which at once.
  if (Object.keys(paramErrors(draft)).length) check();
}

/** The job request built from the draft (also the estimate's body). */
function jobRequest(draft) {
  const p = paramValues(draft);
  const tuna = compact({
    name: draft.name.trim(),
    method: draft.method,
    learning_rate: p.learning_rate,
    max_steps: p.max_steps,
    warmup_ratio: p.warmup_ratio,
    max_seq_len: p.max_seq_len,
    checkpoint_interval: p.checkpoint_interval,
    eval_interval: p.eval_interval,
    validation_fraction: p.validation_fraction,
    sample_max_tokens: p.sample_max_tokens,
  });
  if (draft.method === "lora") {
    const lora = compact({ rank: p.lora_rank, alpha: p.lora_alpha, dropout: p.lora_dropout });
    if (Object.keys(lora).length) tuna.lora = lora;
  }
  const hyperparameters = compact({ n_epochs: p.n_epochs, batch_size: p.batch_size });
  const body = {
    model: draft.model,
    training_file: draft.training.id,
    method: { type: "supervised", supervised: { hyperparameters } },
    tuna,
  };
  if (draft.validation) body.validation_file = draft.validation.id;
  if (p.seed !== undefined) body.seed = p.seed;
  return body;
}

function stepCompute(body, draft) {
  const req = jobRequest(draft);
  const values = paramValues(draft);
  const labels = Object.fromEntries(visibleFields(draft).map((f) => [f.id, f.label]));
  const estBox = h("div", h("div.muted", h("span.spinner"), ` ${t("Estimating duration and cost…")}`));
  const err = h("div");
  const start = h("button.btn.btn-primary", { type: "button", id: "start-task", disabled: true }, svgIcon("play"), t("Start training"));
  const fileText = (f) => `${f.filename} (${f.id})`;
  const summary = h(
    "dl.summary-list",
    h("dt", t("Name")),
    h("dd", draft.name),
    h("dt", t("Task type")),
    h("dd", t("Text generation")),
    h("dt", t("Method")),
    h("dd", draft.method === "full" ? t("Full fine-tuning") : "LoRA"),
    h("dt", t("Base model")),
    h("dd", draft.model),
    h("dt", t("Training file")),
    h("dd", fileText(draft.training)),
    draft.validation ? [h("dt", t("Validation file")), h("dd", fileText(draft.validation))] : null,
    h("dt", t("Parameters")),
    h(
      "dd",
      Object.keys(values).length
        ? h(
            "ul.param-summary",
            Object.entries(values).map(([k, v]) => h("li", h("span", labels[k] || k), " ", h("b.mono", String(v)))),
          )
        : t("all defaults"),
    ),
  );
  mount(
    body,
    h(
      "div.form-sections",
      h("section.card.card-pad", h("div.section-title", h("h2", t("Compute")), h("span.hint", t("Where and how long the task runs."))), estBox),
      h("section.card.card-pad", h("div.section-title", h("h2", t("Summary"))), summary),
    ),
    err,
    h("div.form-foot", h("div", cancelButton(draft)), h("div", h("button.btn", { type: "button", id: "back-3", onclick: () => navigate("#/new/2") }, t("Back")), " ", start)),
  );
  Promise.all([api.estimate(req), api.serverStatus().catch(() => null)])
    .then(([e, status]) => {
      mount(estBox, estimateView(e, status));
      start.disabled = false;
    })
    .catch((e) => {
      mount(estBox, errorBox(e.message, t("The server cannot run these settings")));
      // Settings the server refuses would be refused again by Start: go back and change them.
      // Any other failure (the server unreachable for a moment) leaves Start to try again.
      start.disabled = e.status === 400;
      if (start.disabled) estBox.append(h("p.small.muted", t("Go back to the parameters to change them.")));
    });
  start.addEventListener("click", async () => {
    start.disabled = true;
    mount(start, h("span.spinner"), t("Starting…"));
    mount(err);
    try {
      const job = await api.createJob(req);
      clearDraft();
      toast(t("Task “{name}” created", { name: jobName(job) }), "ok");
      navigate(`#/tasks/${encodeURIComponent(job.id)}`);
    } catch (e) {
      mount(err, errorBox(e.message, t("The task was not created")));
      start.disabled = false;
      mount(start, svgIcon("play"), t("Start training"));
    }
  });
}

function estimateView(e, status) {
  const est = e.estimate || {};
  const stat = (k, v, sub) => h("div.stat", h("div.k", k), h("div.v", v), sub ? h("div.muted.small", sub) : null);
  const slotCounts = status && status.slots ? Object.values(status.slots).filter(Number.isFinite) : [];
  const slots = slotCounts.length ? slotCounts.reduce((a, b) => a + b, 0) : null;
  const busy = status ? t("{running} running, {queued} queued", { running: status.running, queued: status.queued }) : null;
  const cost = fmtCost(est.cost, est.currency);
  const source = est.throughput_source === "measured" ? t("measured on earlier tasks") : t("first guess from the model size");
  return h(
    "div",
    { id: "estimate" },
    h(
      "div.estimate",
      stat(t("Device"), est.device || "—", slots !== null ? plural(slots, "{n} device slot", "{n} device slots") : null),
      stat(
        t("Queue"),
        e.queue_position > 1 ? `#${e.queue_position}` : t("Starts now"),
        [e.queue_position > 1 ? plural(e.queue_position - 1, "{n} task ahead", "{n} tasks ahead") : null, busy].filter(Boolean).join(" · ") || null,
      ),
      stat(t("Estimated duration"), fmtDuration(est.duration_seconds), `${plural(est.total_steps ?? 0, "{n} step", "{n} steps")} · ${t("{rate} tokens/s", { rate: fmtNum(est.tokens_per_second, 3) })} (${source})`),
      stat(
        t("Estimated cost"),
        cost,
        est.price_per_million_tokens
          ? t("{tokens} tokens at {price} {currency} / M", { tokens: fmtInt(est.total_tokens), price: fmtNum(est.price_per_million_tokens), currency: est.currency || "" })
          : t("{tokens} tokens; no price configured", { tokens: fmtInt(est.total_tokens) }),
      ),
    ),
    h(
      "p.muted.small",
      { style: { marginTop: "10px" } },
      plural(est.examples ?? 0, "{n} example", "{n} examples"),
      t(", "),
      t("{n} tokens per epoch", { n: fmtInt(est.tokens_per_epoch) }),
      t(", "),
      plural(est.n_epochs ?? 0, "{n} epoch", "{n} epochs"),
      t(", "),
      t("batch {n}", { n: est.batch_size }),
      t("."),
      e.estimated_start ? ` ${t("Expected start: {when}.", { when: fmtDate(e.estimated_start) })}` : "",
    ),
  );
}

