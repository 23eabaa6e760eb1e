// The new-task wizard: 1 task and dataset, 2 training parameters, 3 compute and start (the
// compute choices the server lists: CPU or GPU slots, each with its free slots, queue and
// estimate; the chosen one is `tuna.compute` of the request). The step is
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
  return { v: 1, owner: owner(), step: 1, name: "", objective: "supervised", method: "lora", model: "", training: null, validation: null, params: {} };
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
  return Boolean(d.name.trim() || d.training || d.validation || Object.keys(d.params).length || d.method !== "lora" || d.objective !== "supervised");
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
  const objective = job.method && job.method.type === "dpo" ? "dpo" : "supervised";
  const hp = (job.method && job.method[objective] && job.method[objective].hyperparameters) || job.hyperparameters || {};
  const lora = tu.lora || {};
  const values = {
    n_epochs: hp.n_epochs,
    batch_size: hp.batch_size,
    beta: objective === "dpo" ? hp.beta : undefined,
    learning_rate: tu.learning_rate,
    max_steps: tu.max_steps,
    warmup_ratio: tu.warmup_ratio,
    seed: job.seed,
    lora_rank: lora.rank,
    lora_alpha: lora.alpha,
    lora_dropout: lora.dropout,
    max_seq_len: tu.max_seq_len,
    checkpoint_interval: tu.checkpoint_interval,
    keep_checkpoints: tu.keep_checkpoints,
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
    objective,
    method: tu.method === "full" ? "full" : "lora",
    model: job.model,
    training,
    validation,
    params,
    compute: tu.compute === "gpu" ? "gpu" : "cpu",
    step: retry && training ? 3 : 1,
  };
  saveDraft(d);
  navigate(`#/new/${d.step}`);
  return true;
}

// ---- parameters ----------------------------------------------------------------------------

/**
 * The server's description of every job setting (`GET /v1/tuna/job_settings`), by its name in
 * the request: limits, default, `auto` rule and the methods it applies to. The wizard keeps no
 * limit or default of its own.
 */
let settingsCache = null;
function loadSettings() {
  settingsCache ??= api.jobSettings().then(
    (list) => Object.fromEntries((list.data || []).map((s) => [s.param, s])),
    (e) => {
      settingsCache = null;
      throw e;
    },
  );
  return settingsCache;
}
/** The settings once loaded (the wizard's steps render after `loadSettings` resolved). */
let settings = {};

/**
 * Training parameters shown in step 2: a label and one line of explanation each. `param` is the
 * setting's name in the job request (`GET /v1/tuna/job_settings`), which says its limits,
 * default and whether it applies to the draft's objective and method. `unset` says what an
 * empty field means where the server has no default value.
 */
function paramGroups() {
  const hp = (name) => (d) => `method.${d.objective}.hyperparameters.${name}`;
  return [
    {
      group: t("Training"),
      fields: [
        { id: "n_epochs", param: hp("n_epochs"), label: t("Epochs"), help: t("Passes over the training data. More epochs fit the data more closely; too many over-fit.") },
        { id: "learning_rate", param: "tuna.learning_rate", label: t("Learning rate"), help: t("Peak step size of the optimizer. Too high diverges, too low learns slowly.") },
        { id: "batch_size", param: hp("batch_size"), label: t("Batch size"), help: t("Examples per optimizer step. Larger batches give smoother, fewer steps.") },
        { id: "max_steps", param: "tuna.max_steps", label: t("Max steps"), unset: t("none"), help: t("Stop after this many optimizer steps, whatever the epochs.") },
        { id: "warmup_ratio", param: "tuna.warmup_ratio", label: t("Warmup ratio"), help: t("Share of the steps over which the learning rate rises from zero.") },
        { id: "seed", param: "seed", label: t("Seed"), help: t("Seeds shuffling, the validation split and initialisation; the same seed repeats a run.") },
      ],
    },
    {
      group: t("Preference (DPO)"),
      fields: [
        { id: "beta", param: hp("beta"), label: t("Beta"), help: t("How far the model may move from the reference (the starting model): lower lets it move further from what it was.") },
      ],
    },
    {
      group: "LoRA",
      fields: [
        { id: "lora_rank", param: "tuna.lora.rank", label: t("LoRA rank"), help: t("Width of the low-rank update. Higher ranks learn more and cost more memory.") },
        { id: "lora_alpha", param: "tuna.lora.alpha", label: t("LoRA alpha"), help: t("Scale of the update (alpha / rank). Usually twice the rank.") },
        { id: "lora_dropout", param: "tuna.lora.dropout", label: t("LoRA dropout"), help: t("Drops inputs of the adapter during training to reduce over-fitting.") },
      ],
    },
    {
      group: t("Data and checkpoints"),
      fields: [
        { id: "max_seq_len", param: "tuna.max_seq_len", label: t("Max sequence length"), help: t("Longest example in tokens; longer ones are truncated.") },
        { id: "checkpoint_interval", param: "tuna.checkpoint_interval", label: t("Checkpoint interval"), unset: t("every epoch"), help: t("Save a checkpoint (with a sample answer) every this many steps.") },
        { id: "keep_checkpoints", param: "tuna.keep_checkpoints", label: t("Checkpoints kept"), unset: t("all"), help: t("Keep only the newest this many checkpoints; older ones are deleted to save disk.") },
        { id: "eval_interval", param: "tuna.eval_interval", label: t("Evaluation interval"), unset: t("every checkpoint"), help: t("Compute the validation loss every this many steps.") },
        { id: "validation_fraction", param: "tuna.validation_fraction", label: t("Validation share"), help: t("Share of the examples held out to measure validation loss.") },
        { id: "sample_max_tokens", param: "tuna.sample_max_tokens", label: t("Sample length"), help: t("Longest automatic sample answer written at each checkpoint, in tokens.") },
      ],
    },
  ];
}

/** The field's setting for the draft (its limits), or null when the server does not know it. */
function settingOf(f, d) {
  return settings[typeof f.param === "function" ? f.param(d) : f.param] || null;
}

/** Whether the server applies the setting to the draft's objective and method. */
function applies(s, d) {
  return Boolean(s) && (!s.methods || s.methods.includes(d.objective)) && (!s.tuna_methods || s.tuna_methods.includes(d.method));
}

/** The groups and fields step 2 shows for the draft. */
function visibleGroups(d) {
  return paramGroups()
    .map((g) => ({ ...g, fields: g.fields.filter((f) => applies(settingOf(f, d), d)) }))
    .filter((g) => g.fields.length);
}

function visibleFields(d) {
  return visibleGroups(d).flatMap((g) => g.fields);
}

/** What an empty field stands for: the server's default, its `auto` rule, or the field's `unset`. */
function defaultText(f, s) {
  if (s.auto) return s.auto_rule && s.auto_rule.length <= 24 ? t("auto ({rule})", { rule: s.auto_rule }) : t("auto");
  if (s.default !== null && s.default !== undefined) return String(s.default);
  return f.unset || t("none");
}

/** The message for one field's raw text, or null when it is empty (default) or valid. */
function fieldError(s, raw) {
  if (raw === undefined || raw === null || String(raw).trim() === "") return null;
  const v = Number(String(raw).trim());
  if (!Number.isFinite(v)) return t("Enter a number.");
  if (!s) return null;
  if (s.type === "integer" && !Number.isInteger(v)) return t("Enter a whole number.");
  const min = s.min ?? null;
  const max = s.max ?? null;
  if (min !== null && (s.exclusive_min ? v <= min : v < min)) return s.exclusive_min ? t("More than {min}.", { min }) : t("At least {min}.", { min });
  if (max !== null && (s.exclusive_max ? v >= max : v > max)) return s.exclusive_max ? t("Less than {max}.", { max }) : t("At most {max}.", { max });
  return null;
}

/** Every invalid parameter of the draft: `{id: message}`. */
function paramErrors(d) {
  const errs = {};
  for (const f of visibleFields(d)) {
    const msg = fieldError(settingOf(f, d), d.params[f.id]);
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

/**
 * The server's refusal of the draft, field by field: `{fields: {id: message}, other: [message]}`.
 * A message names the field by its label, not by its name in the API.
 */
function refusalByField(e, d) {
  const byParam = {};
  const labels = {
    model: t("Base model"),
    training_file: t("Training file"),
    validation_file: t("Validation file"),
    "tuna.name": t("Task name"),
    "tuna.method": t("Fine-tuning method"),
    "method.type": t("Training objective"),
  };
  for (const f of visibleFields(d)) {
    const s = settingOf(f, d);
    if (!s) continue;
    for (const name of [s.param, ...(s.aliases || [])]) byParam[name] = f;
    labels[s.param] = f.label;
  }
  const named = (param, message) => {
    let text = String(message || "");
    for (const name of Object.keys(labels).sort((a, b) => b.length - a.length)) text = text.split(`\`${name}\``).join(`“${labels[name]}”`);
    return param && labels[param] && !text.includes(`“${labels[param]}”`) ? `${labels[param]}: ${text}` : text;
  };
  const fields = {};
  const other = [];
  for (const { param, message } of e.errors && e.errors.length ? e.errors : [{ param: e.param, message: e.message }]) {
    const f = param && byParam[param];
    if (f && !fields[f.id]) fields[f.id] = named(param, message);
    else other.push(named(param, message));
  }
  return { fields, other };
}

/** The checked file's format: "preference" pairs or "chat" conversations. */
function fileFormat(f) {
  return f && f.check && f.check.stats && f.check.stats.format === "preference" ? "preference" : "chat";
}

function step1Problem(d, models) {
  if (!d.name.trim()) return t("Give the task a name.");
  if (!d.model || (models && !models.some((m) => m.id === d.model))) return t("Choose a base model.");
  if (!d.training) return t("Upload a training dataset.");
  if (d.training.check?.ok === false || (d.validation && d.validation.check?.ok === false)) return t("Fix the dataset's errors and upload it again.");
  const wanted = d.objective === "dpo" ? "preference" : "chat";
  for (const f of [d.training, d.validation].filter(Boolean))
    if (f.check && fileFormat(f) !== wanted)
      return wanted === "preference"
        ? t("{file} holds conversations; preference training (DPO) needs preference pairs.", { file: f.filename })
        : t("{file} holds preference pairs; choose preference training (DPO) for it.", { file: f.filename });
  return null;
}

/** The furthest step the draft may show: a later step needs the earlier ones complete. */
function allowedStep(d, models) {
  if (step1Problem(d, models)) return 1;
  if (Object.keys(paramErrors(d)).length) return 2;
  return 3;
}

// ---- the page ------------------------------------------------------------------------------

/** Base models of the server and the user's fine-tuned models, fetched once per visit of the wizard. */
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
  // A fine-tuned model can be trained further (DPO after SFT, as OpenAI recommends).
  const startable = (m) => !m.tuna || m.tuna.kind === "base" || m.tuna.kind === "fine_tuned";
  const withModels = modelsCache ? Promise.resolve(modelsCache) : api.listModels().then((list) => (list.data || []).filter(startable));
  Promise.all([withModels, loadSettings()])
    .then(([models, known]) => {
      settings = known;
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
          if (group === "objective") draft.objective = value;
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
      [
        h("optgroup", { label: t("Base models") }, models.filter((m) => !m.tuna || m.tuna.kind === "base").map((m) => h("option", { value: m.id, selected: m.id === draft.model }, m.id))),
        ...(() => {
          const tuned = models.filter((m) => m.tuna && m.tuna.kind === "fine_tuned");
          return tuned.length ? [h("optgroup", { label: t("Your fine-tuned models") }, tuned.map((m) => h("option", { value: m.id, selected: m.id === draft.model }, m.id)))] : [];
        })(),
      ],
    );
  const chosen = models.find((m) => m.id === draft.model);
  const modelCard = h("div.model-card", { id: "model-card" });
  const drawModelCard = () => {
    const m = models.find((x) => x.id === draft.model);
    const desc = m && m.tuna && (m.tuna.description || (m.tuna.kind === "fine_tuned" ? t("Fine-tuned from {base} by task {job}: training continues from its weights.", { base: m.tuna.base_model, job: m.tuna.job_id }) : null));
    mount(modelCard, desc ? h("p.small.muted", desc) : null);
  };
  drawModelCard();

  const trainingBox = h("div");
  const validationBox = h("div");
  const next = h("button.btn.btn-primary", { type: "button", id: "next-1", onclick: () => navigate("#/new/2") }, t("Next: training parameters"));
  const hint = h("span.muted.small", { id: "step1-hint" });
  const datasetHint = h("span.hint", { id: "dataset-format" });
  const update = () => {
    const problem = step1Problem(draft, models);
    next.disabled = Boolean(problem);
    hint.textContent = problem || "";
    datasetHint.textContent =
      draft.objective === "dpo"
        ? t('JSONL, one preference pair per line: {"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}.')
        : t('JSONL, one {"messages": [...]} conversation per line.');
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
          h("div.field", h("label", { for: "base-model" }, t("Base model")), modelField, chosen ? modelCard : null, h("span.help", t("The model to fine-tune: a base model, or one of your fine-tuned models to train further."))),
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
          h("span.field-label", h("label", t("Training objective"))),
          h(
            "div.choices",
            { id: "objective" },
            radio("objective", "supervised", t("Supervised (SFT)"), t("Learns to give the answers of your conversations. Start here: it teaches what to say."), draft.objective === "supervised"),
            radio(
              "objective",
              "dpo",
              t("Preference (DPO)"),
              t("Learns from pairs of a preferred and a non-preferred answer to prefer the first. Best on a model already fine-tuned with SFT: it teaches which answer is better."),
              draft.objective === "dpo",
            ),
          ),
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
        h("div.section-title", h("h2", t("Dataset")), datasetHint),
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
  // Preference pairs (DPO) count pairs, and the tokens of prompts and of both answers.
  const pairs = stats.format === "preference";
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
          h("p", plural(stats.examples ?? 0, pairs ? "{n} preference pair ready for training" : "{n} conversation ready for training", pairs ? "{n} preference pairs ready for training" : "{n} conversations ready for training") + (warnCount ? plural(warnCount, ", {n} warning", ", {n} warnings") : "") + t(".")),
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
  const pairTokens = (tk && tk.pairs) || {};
  const range = (x) => (x ? `${fmtInt(x.min)} – ${fmtInt(x.max)} (${t("mean {n}", { n: fmtInt(x.mean) })})` : null);
  const facts = h(
    "dl.kv",
    { dataset: { format: pairs ? "preference" : "chat" } },
    kv(t("Lines"), fmtInt(stats.lines)),
    kv(pairs ? t("Preference pairs") : t("Conversations"), fmtInt(stats.examples)),
    pairs && pairTokens.prompt ? kv(t("Prompt tokens"), range(pairTokens.prompt)) : null,
    pairs && pairTokens.chosen ? kv(t("Preferred answer tokens"), range(pairTokens.chosen)) : null,
    pairs && pairTokens.rejected ? kv(t("Non-preferred answer tokens"), range(pairTokens.rejected)) : null,
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
          h("div.section-title", h("h3", t("Length distribution")), h("span.hint", pairs ? (anyOver ? t("tokens per pair; orange: over {n}", { n: tk.max_seq_len }) : t("tokens per pair")) : anyOver ? t("tokens per conversation; orange: over {n}", { n: tk.max_seq_len }) : t("tokens per conversation"))),
          h("div.histogram-wrap", histogram(buckets, tk.max_seq_len)),
        )
      : null,
  );
}

function stepParams(body, draft) {
  const inputs = {};
  const errs = {};
  const groups = visibleGroups(draft).map((g) =>
    h(
      "div.param-group",
      h("h3", g.group),
      h(
        "div.param-grid",
        g.fields.map((f) => {
          const s = settingOf(f, draft);
          const input = h("input", {
            type: "number",
            id: `p-${f.id}`,
            name: f.id,
            step: s.type === "integer" ? "1" : "any",
            min: s.exclusive_min ? null : s.min,
            max: s.exclusive_max ? null : s.max,
            placeholder: defaultText(f, s),
            value: draft.params[f.id] ?? "",
            inputmode: s.type === "integer" ? "numeric" : "decimal",
            oninput: () => {
              const raw = input.value.trim();
              if (raw === "") delete draft.params[f.id];
              else draft.params[f.id] = raw;
              saveDraft(draft);
              if (errs[f.id].textContent) show(f, fieldError(s, raw));
            },
          });
          inputs[f.id] = input;
          errs[f.id] = h("span.field-error", { id: `p-${f.id}-error` });
          return h(
            "div.field",
            { dataset: { param: f.id } },
            h("span.field-label", h("label", { for: `p-${f.id}` }, f.label), h("span.default", { title: s.auto_rule || null }, t("default {value}", { value: defaultText(f, s) }))),
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
  /** Shows the errors (`{id: message}`); the first invalid field is scrolled into view and focused. */
  const showAll = (bad) => {
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
    }
    return !first;
  };
  const refusal = h("div", { id: "params-refused" });
  const next = h("button.btn.btn-primary", { type: "button", id: "next-2" }, t("Next: compute"));
  // Leaving the step asks the server (the estimate validates the whole request as creating the
  // job would): what it refuses is shown on its field, by its label, before step 3.
  next.addEventListener("click", async () => {
    mount(refusal);
    if (!showAll(paramErrors(draft))) return;
    next.disabled = true;
    mount(next, h("span.spinner"), t("Checking…"));
    try {
      await api.estimate(jobRequest(draft));
      navigate("#/new/3");
    } catch (e) {
      if (e.status === 400) {
        const { fields, other } = refusalByField(e, draft);
        if (other.length) mount(refusal, errorBox(other.join(" · "), t("The server cannot run these settings")));
        if (showAll(fields) && other.length) refusal.scrollIntoView({ block: "center" });
      } else mount(refusal, errorBox(e.message, t("Cannot check the settings with the server")));
    } finally {
      next.disabled = false;
      mount(next, t("Next: compute"));
    }
  });
  mount(
    body,
    refusal,
    h("section.card.card-pad", h("div.section-title", h("h2", t("Training parameters")), h("span.hint", t("Leave a field empty to use its default."))), groups),
    h(
      "div.form-foot",
      h("div", cancelButton(draft)),
      h("div", h("button.btn", { type: "button", id: "back-2", onclick: () => navigate("#/new/1") }, t("Back")), " ", next),
    ),
  );
  // Arriving from a later step with invalid values (an edited address): say which at once.
  if (Object.keys(paramErrors(draft)).length) showAll(paramErrors(draft));
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
    keep_checkpoints: p.keep_checkpoints,
    eval_interval: p.eval_interval,
    validation_fraction: p.validation_fraction,
    sample_max_tokens: p.sample_max_tokens,
    // The CPU is the server's default: a request without a choice keeps its old meaning.
    compute: draft.compute && draft.compute !== "cpu" ? draft.compute : undefined,
  });
  if (draft.method === "lora") {
    const lora = compact({ rank: p.lora_rank, alpha: p.lora_alpha, dropout: p.lora_dropout });
    if (Object.keys(lora).length) tuna.lora = lora;
  }
  const hyperparameters = compact({ n_epochs: p.n_epochs, batch_size: p.batch_size });
  if (draft.objective === "dpo" && p.beta !== undefined) hyperparameters.beta = p.beta;
  const body = {
    model: draft.model,
    training_file: draft.training.id,
    method: { type: draft.objective, [draft.objective]: { hyperparameters } },
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
    h("dt", t("Training objective")),
    h("dd", { id: "summary-objective" }, draft.objective === "dpo" ? t("Preference (DPO)") : t("Supervised (SFT)")),
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
  const choose = (compute) => {
    draft.compute = compute;
    saveDraft(draft);
    stepCompute(body, draft);
  };
  Promise.all([api.estimate(req), api.serverStatus().catch(() => null)])
    .then(([e, status]) => {
      mount(estBox, computeChoices(e, draft, choose), estimateView(e, status));
      start.disabled = false;
    })
    .catch((e) => {
      const { fields, other } = e.status === 400 ? refusalByField(e, draft) : { fields: {}, other: [e.message] };
      mount(estBox, errorBox([...Object.values(fields), ...other].join(" · "), t("The server cannot run these settings")));
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

/** "CPU" / "GPU" with what the slots are. */
function computeName(kind) {
  return kind === "gpu" ? t("GPU") : t("CPU");
}

/**
 * The compute choices the server offers (`compute_choices` of the estimate): one radio card each
 * with its devices, free slots, the queue ahead and the estimate there; a choice that cannot take
 * the task (no GPU worker, DPO on a GPU) is shown disabled with the server's reason.
 */
function computeChoices(e, draft, choose) {
  const choices = e.compute_choices || [];
  if (!choices.length) return null;
  const current = draft.compute || "cpu";
  const card = (c) => {
    const est = c.estimate || {};
    const disabled = Boolean(c.unavailable) && c.compute !== current;
    const time = Number.isFinite(est.duration_seconds)
      ? t("≈ {d} ({source})", {
          d: fmtDuration(est.duration_seconds),
          source: est.throughput_source === "measured" ? t("measured") : t("first guess from the model size"),
        })
      : t("no speed measured on this device yet");
    const queue = c.slots_total
      ? [
          t("{free} of {total} free", { free: c.slots_free, total: c.slots_total }),
          c.jobs_ahead > 0 ? plural(c.jobs_ahead, "{n} task ahead", "{n} tasks ahead") : t("Starts now"),
        ].join(" · ")
      : t("no worker offers it");
    return h(
      "label.compute-choice",
      { class: [c.compute === current ? "selected" : "", disabled ? "disabled" : ""].filter(Boolean).join(" "), dataset: { compute: c.compute } },
      h("input", {
        type: "radio",
        name: "compute",
        value: c.compute,
        checked: c.compute === current,
        disabled,
        onchange: () => choose(c.compute),
      }),
      h(
        "div.compute-body",
        h("div.compute-head", h("b", computeName(c.compute)), h("span.muted.small", queue)),
        h("div.compute-est", { dataset: { measured: String(Number.isFinite(est.duration_seconds)) } }, time, " · ", fmtCost(est.cost, est.currency)),
        c.devices && c.devices.length ? h("ul.compute-devices.small.muted", c.devices.slice(0, 4).map((d) => h("li.mono", d)), c.devices.length > 4 ? h("li", t("and {n} more", { n: c.devices.length - 4 })) : null) : null,
        c.unavailable ? h("p.small.warn-text", c.unavailable) : null,
      ),
    );
  };
  return h("div.compute-choices", { id: "compute-choices", role: "radiogroup", "aria-label": t("Compute") }, choices.map(card));
}

function estimateView(e, status) {
  const est = e.estimate || {};
  const stat = (k, v, sub) => h("div.stat", h("div.k", k), h("div.v", v), sub ? h("div.muted.small", sub) : null);
  const slotCounts = status && status.slots ? Object.values(status.slots).filter(Number.isFinite) : [];
  const slots = slotCounts.length ? slotCounts.reduce((a, b) => a + b, 0) : null;
  const busy = status ? t("{running} running, {queued} queued", { running: status.running, queued: status.queued }) : null;
  const cost = fmtCost(est.cost, est.currency);
  const source = est.throughput_source === "measured" ? t("measured on earlier tasks") : t("first guess from the model size");
  // The choice this estimate is for (its kind's slots).
  const chosen = (e.compute_choices || []).find((c) => c.compute === ((e.tuna && e.tuna.compute) || "cpu"));
  return h(
    "div",
    { id: "estimate" },
    h(
      "div.estimate",
      chosen
        ? stat(t("Device"), computeName(chosen.compute), plural(chosen.slots_total, "{n} device slot", "{n} device slots"))
        : stat(t("Device"), est.device || "—", slots !== null ? plural(slots, "{n} device slot", "{n} device slots") : null),
      stat(
        t("Queue"),
        e.queue_position > 1 ? `#${e.queue_position}` : t("Starts now"),
        [e.queue_position > 1 ? plural(e.queue_position - 1, "{n} task ahead", "{n} tasks ahead") : null, busy].filter(Boolean).join(" · ") || null,
      ),
      Number.isFinite(est.duration_seconds)
        ? stat(t("Estimated duration"), fmtDuration(est.duration_seconds), `${plural(est.total_steps ?? 0, "{n} step", "{n} steps")} · ${t("{rate} tokens/s", { rate: fmtNum(est.tokens_per_second, 3) })} (${source})`)
        : stat(t("Estimated duration"), "—", `${plural(est.total_steps ?? 0, "{n} step", "{n} steps")} · ${t("no speed measured on this device yet")}`),
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

