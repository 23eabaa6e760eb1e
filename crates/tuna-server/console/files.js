// The files page: every dataset uploaded with this key, newest first; a file's first lines, its
// check report, and deleting it (the server refuses while a task that has not finished uses it).

import * as api from "./api.js";
import { plural, t } from "./i18n.js";
import { onLeave } from "./router.js";
import { checkReport } from "./wizard.js";
import { copyableId, empty, errorBox, fmtBytes, fmtDate, h, mount, svgIcon, toast } from "./ui.js";

/** Lines shown in a file's preview. */
const PREVIEW_LINES = 8;

export function pageFiles(main) {
  const list = h("div", h("div.loading", h("span.spinner"), ` ${t("Loading files…")}`));
  const detail = h("div", { id: "file-detail" });
  let alive = true;
  let selected = null;
  onLeave(() => (alive = false));
  mount(
    main,
    h(
      "div.page-head",
      h("div", h("h1", t("Files")), h("p.sub", t("Datasets uploaded with your key, newest first. Select one to see its first lines and its check."))),
      h("div.actions", h("a.btn.btn-primary", { href: "#/new", id: "files-new-task" }, svgIcon("plus"), t("New task"))),
    ),
    h("div.files-grid", list, detail),
  );

  const load = async () => {
    try {
      const files = (await api.listFiles()).data || [];
      if (!alive) return;
      if (!files.length) {
        mount(list, h("div.card", empty(t("No files yet"), t("Datasets you upload in a new task are kept here."), h("a.btn.btn-primary", { href: "#/new" }, svgIcon("plus"), t("New task")))));
        mount(detail);
        return;
      }
      mount(list, fileTable(files, (f) => select(f.id)));
      if (selected && !files.some((f) => f.id === selected)) selected = null;
      markSelected(list, selected);
    } catch (e) {
      if (alive) mount(list, errorBox(e.message, t("Cannot load your files")));
    }
  };

  const select = async (id) => {
    selected = id;
    markSelected(list, id);
    mount(detail, h("div.card.card-pad", h("span.spinner"), ` ${t("Loading…")}`));
    try {
      const [file, head] = await Promise.all([api.getFile(id), api.fileHead(id)]);
      if (!alive || selected !== id) return;
      mount(detail, fileDetail(file, head, () => remove(file)));
      detail.scrollIntoView({ block: "nearest" });
    } catch (e) {
      if (alive && selected === id) mount(detail, errorBox(e.message, t("Cannot load this file")));
    }
  };

  const remove = async (file) => {
    if (!confirm(t("Delete “{file}”? Tasks that used it keep their checkpoints, but cannot be retried with it.", { file: file.filename }))) return;
    try {
      await api.deleteFile(file.id);
      toast(t("“{file}” deleted", { file: file.filename }), "ok");
      selected = null;
      mount(detail);
      load();
    } catch (e) {
      mount(detail.querySelector(".file-error") || detail, errorBox(e.message, t("The file was not deleted")));
    }
  };
  load();
}

function markSelected(list, id) {
  for (const tr of list.querySelectorAll("tr[data-file]")) tr.classList.toggle("selected", tr.dataset.file === id);
}

function fileTable(files, onSelect) {
  const rows = files.map((f) => {
    const ok = f.status !== "error";
    const open = () => onSelect(f);
    return h(
      "tr.clickable",
      { dataset: { file: f.id }, onclick: open, tabindex: "0", onkeydown: (e) => e.key === "Enter" && open() },
      h("td.col-name", h("span.task-name", f.filename), h("div.task-id", f.id)),
      h("td", { "data-label": t("Purpose") }, f.purpose),
      h("td.nowrap", { "data-label": t("Size") }, fmtBytes(f.bytes)),
      h("td.nowrap", { "data-label": t("Uploaded") }, fmtDate(f.created_at)),
      h("td", h("span.badge", { class: ok ? "status-succeeded" : "status-failed", dataset: { check: ok ? "ok" : "failed" } }, h("span.dot"), ok ? t("Checked") : t("Has errors"))),
    );
  });
  return h(
    "div.card",
    h(
      "table.table",
      { id: "files", "aria-label": plural(files.length, "{n} file", "{n} files") },
      h("thead", h("tr", [t("File"), t("Purpose"), t("Size"), t("Uploaded"), t("Check")].map((c) => h("th", c)))),
      h("tbody", rows),
    ),
  );
}

function fileDetail(file, head, onDelete) {
  const lines = head.text.split("\n");
  // The last line of a cut download may be cut too: show only whole lines.
  if (head.truncated) lines.pop();
  const shown = lines.slice(0, PREVIEW_LINES);
  const more = head.truncated || lines.length > PREVIEW_LINES;
  return h(
    "section.card.card-pad",
    { dataset: { file: file.id } },
    h(
      "div.card-head",
      h("h2", file.filename),
      h("button.btn.btn-danger.btn-sm", { type: "button", id: "delete-file", onclick: onDelete }, svgIcon("trash"), t("Delete")),
    ),
    h("p.small.muted", copyableId(file.id), " · ", fmtBytes(file.bytes), " · ", t("uploaded {when}", { when: fmtDate(file.created_at) })),
    h("div.file-error"),
    h("h3", t("First lines")),
    h("pre.file-preview", { id: "file-preview" }, shown.map((l, i) => h("span.preview-line", h("span.line-no", String(i + 1)), l.length > 400 ? `${l.slice(0, 400)}…` : l, "\n"))),
    more ? h("p.small.muted", t("Only the first lines are shown.")) : null,
    h("h3", t("Check")),
    checkReport(file),
  );
}
