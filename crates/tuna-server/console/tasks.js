// The task list: counts by status, one row per job (newest first), refreshed while jobs run, the
// unfinished new-task draft of this browser, if any, and the workers (the machines that train:
// name, devices, current task, last heartbeat; other users' tasks are only counted).

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
  const statsBox = h("div");
  const filters = h("div");
  const tableBox = h("div");
  const workersBox = h("div");
  let current = [];
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
      current = jobs;
      // The filter is drawn once, so a refresh never takes the focus from the search field.
      if (!filters.firstChild && jobs.length) mount(filters, taskFilters(() => current, tableBox));
      if (!body.contains(tableBox)) mount(body, statsBox, filters, tableBox, workersBox);
      mount(statsBox, taskStats(jobs));
      drawTable(tableBox, jobs);
      await drawWorkers(workersBox, jobs);
      if (!alive) return;
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

/** The list's filter, kept while the console is open (back from a task finds it as it was). */
const filter = { status: "all", query: "" };

const FILTERS = {
  all: () => true,
  active: (j) => ACTIVE.has(j.status) || j.status === "paused",
  succeeded: (j) => j.status === "succeeded",
  failed: (j) => j.status === "failed",
  cancelled: (j) => j.status === "cancelled",
};

function matches(j) {
  const q = filter.query.trim().toLowerCase();
  return (FILTERS[filter.status] || FILTERS.all)(j) && (!q || jobName(j).toLowerCase().includes(q) || j.id.toLowerCase().includes(q) || String(j.fine_tuned_model || "").toLowerCase().includes(q));
}

/** Status filter and search by name (or id, or model id). */
function taskFilters(jobs, tableBox) {
  const redraw = () => drawTable(tableBox, jobs());
  const labels = { all: t("All statuses"), active: t("Running, queued or paused"), succeeded: t("Succeeded"), failed: t("Failed"), cancelled: t("Cancelled") };
  return h(
    "div.list-tools",
    h(
      "select",
      {
        id: "task-filter",
        "aria-label": t("Filter by status"),
        onchange: (e) => {
          filter.status = e.target.value;
          redraw();
        },
      },
      Object.entries(labels).map(([k, label]) => h("option", { value: k, selected: k === filter.status }, label)),
    ),
    h("input", {
      type: "search",
      id: "task-search",
      value: filter.query,
      placeholder: t("Search by name or id"),
      "aria-label": t("Search by name or id"),
      oninput: (e) => {
        filter.query = e.target.value;
        redraw();
      },
    }),
  );
}

function drawTable(box, jobs) {
  const shown = jobs.filter(matches);
  if (jobs.length && !shown.length) {
    return mount(
      box,
      h(
        "div.card",
        { id: "tasks-none" },
        empty(
          t("No task matches"),
          plural(jobs.length, "None of your {n} task matches this filter.", "None of your {n} tasks match this filter."),
          h(
            "button.btn",
            {
              type: "button",
              id: "clear-filter",
              onclick: () => {
                filter.status = "all";
                filter.query = "";
                navigate("#/");
              },
            },
            t("Show all tasks"),
          ),
        ),
      ),
    );
  }
  mount(box, taskTable(shown));
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

/** The workers that joined the server's database, below the tasks; a failure leaves the tasks be. */
async function drawWorkers(box, jobs) {
  let list;
  try {
    list = (await api.listWorkers()).data;
  } catch (e) {
    return mount(box, h("div.card.workers", { id: "workers" }, h("div.card-head", h("h2", t("Workers"))), h("div.card-body", errorBox(e.message, t("Cannot load the workers")))));
  }
  const names = new Map(jobs.map((j) => [j.id, jobName(j)]));
  const now = Date.now() / 1000;
  const rows = list.map((w) => {
    const others = w.running_jobs - w.your_jobs.length;
    const current = [
      ...w.your_jobs.map((id) => h("a.worker-job", { href: `#/tasks/${encodeURIComponent(id)}`, dataset: { job: id } }, names.get(id) || id)),
      others > 0 ? h("span.muted.worker-others", plural(others, "{n} task of other users", "{n} tasks of other users")) : null,
    ].filter(Boolean);
    const ago = Math.max(0, Math.round(now - w.last_heartbeat));
    return h(
      "tr",
      { dataset: { worker: w.name } },
      h("td.col-name", h("span.task-name", w.name), h("div.task-id", w.devices.join(", "))),
      h("td.col-status", h("span.badge", { class: w.alive ? "status-running" : "status-failed", dataset: { alive: String(w.alive) } }, h("span.dot"), w.alive ? t("Online") : t("Not answering"))),
      h("td.col-model", { "data-label": t("Current task") }, current.length ? current : h("span.muted", t("Idle"))),
      h("td.col-created.nowrap", { "data-label": t("Last heartbeat") }, t("{s} s ago", { s: ago })),
    );
  });
  mount(
    box,
    h(
      "div.card.workers",
      { id: "workers" },
      h("div.card-head", h("h2", t("Workers")), h("span.hint", t("The machines that train tasks. Other users' tasks are counted, not shown."))),
      list.length
        ? h("table.table", { "aria-label": t("Workers") }, h("thead", h("tr", [t("Worker"), t("Status"), t("Current task"), t("Last heartbeat")].map((c) => h("th", c)))), h("tbody", rows))
        : h("div.card-body", h("p.muted", t("No worker has joined yet: `tuna serve` and `tuna worker` nodes list themselves."))),
    ),
  );
}
