// The task list: counts by status, one row per job (newest first), refreshed while jobs run, and
// the unfinished new-task draft of this browser, if any.

import * as api from "./api.js";
import { plural, t } from "./i18n.js";
import { ACTIVE, jobDuration, jobMethod, jobName, jobProgress, statusExtra } from "./jobs.js";
import { navigate, onLeave } from "./router.js";
import { draftSummary, discardDraft } from "./wizard.js";
import { empty, errorBox, fmtDate, fmtDuration, h, mount, progressBar, statusBadge, svgIcon } from "./ui.js";

export function pageTasks(main) {
  const body = h("div", h("div.loading", h("span.spinner"), ` ${t("Loading tasks…")}`));
  const draftBox = h("div");
  mount(
    main,
    h(
      "div.page-head",
      h("div", h("h1", t("Fine-tuning tasks")), h("p.sub", t("Your training tasks, newest first."))),
      h("div.actions", h("a.btn.btn-primary", { href: "#/new", id: "new-task" }, svgIcon("plus"), t("New task"))),
    ),
    draftBox,
    body,
  );
  drawDraft(draftBox);
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
      mount(body, errorBox(e.message, t("Cannot load your tasks")));
      timer = setTimeout(load, 8000);
    }
  };
  load();
}

/** "You have an unfinished task": continue it, or discard it after asking. */
function drawDraft(box) {
  const d = draftSummary();
  if (!d) return mount(box);
  mount(
    box,
    h(
      "div.alert.alert-info.draft-banner",
      { id: "draft-banner" },
      h(
        "div",
        h("strong", t("Unfinished new task")),
        h("p", d.name ? t("“{name}”, saved in this browser at step {step} of 3.", { name: d.name, step: d.step }) : t("A draft saved in this browser at step {step} of 3.", { step: d.step })),
      ),
      h(
        "div.actions",
        h("a.btn.btn-primary.btn-sm", { href: `#/new/${d.step}`, id: "draft-continue" }, t("Continue")),
        h(
          "button.btn.btn-sm",
          {
            type: "button",
            id: "draft-discard",
            onclick: () => {
              if (discardDraft()) drawDraft(box);
            },
          },
          t("Discard"),
        ),
      ),
    ),
  );
}

function taskStats(jobs) {
  const count = (pred) => jobs.filter(pred).length;
  const stat = (k, v) => h("div.card.stat", h("div.k", k), h("div.v", String(v)));
  return h(
    "div.stats-row",
    stat(t("Tasks"), jobs.length),
    stat(t("Running"), count((j) => j.status === "running")),
    stat(t("Queued"), count((j) => j.status === "queued" || j.status === "validating_files")),
    stat(t("Succeeded"), count((j) => j.status === "succeeded")),
  );
}

function taskTable(jobs) {
  if (!jobs.length) {
    return h(
      "div.card",
      empty(
        t("No fine-tuning tasks yet"),
        t("Create a task: pick a base model, upload a JSONL dataset of conversations, and start training."),
        h("a.btn.btn-primary", { href: "#/new" }, svgIcon("plus"), t("New task")),
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
      h("td.col-model", { "data-label": t("Model") }, j.model),
      h("td.col-method", { "data-label": t("Method") }, jobMethod(j)),
      h("td.col-status", statusBadge(j.status, statusExtra(j))),
      h("td.col-progress", h("div.cell-progress", progressBar(p.fraction, t("{name} progress", { name: jobName(j) })), h("span", `${Math.round(p.fraction * 100)}%`))),
      h("td.col-created.nowrap", { "data-label": t("Created") }, fmtDate(j.created_at)),
      h("td.col-duration.nowrap", { "data-label": t("Duration") }, fmtDuration(jobDuration(j))),
    );
  });
  return h(
    "div.card",
    h(
      "table.table",
      { id: "tasks", "aria-label": plural(jobs.length, "{n} task", "{n} tasks") },
      h("thead", h("tr", [t("Name"), t("Base model"), t("Method"), t("Status"), t("Progress"), t("Created"), t("Duration")].map((c) => h("th", c)))),
      h("tbody", rows),
    ),
  );
}
