// Tuna console: the shell (sidebar, language switch), sign in, and the routing to the pages —
// the task list (tasks.js), the new-task wizard (wizard.js), the task page (task.js) and the
// files page (files.js). Every page is built from the API's objects; Tuna's extras sit in their
// `tuna` / `check` keys (see docs/api.md).

import * as api from "./api.js";
import { LANGUAGES, applyDocumentLang, lang, setLang, t } from "./i18n.js";
import { currentRoute, leavePage, setRenderer } from "./router.js";
import { pageFiles } from "./files.js";
import { pageTask } from "./task.js";
import { pageTasks } from "./tasks.js";
import { pageNewTask } from "./wizard.js";
import { errorBox, h, mount, svgIcon, toast } from "./ui.js";

const root = document.getElementById("app");

function render() {
  leavePage();
  applyDocumentLang();
  document.title = t("Tuna · Fine-tuning console");
  if (!api.getKey()) {
    renderSignIn();
    return;
  }
  const r = currentRoute();
  const main = h("main.main", { id: "main" });
  mount(root, shell(r.page, main));
  if (!api.getUserName()) {
    api
      .me()
      .then((u) => {
        api.setUserName(u && u.name);
        const el = document.getElementById("user-name");
        if (el && u && u.name) el.textContent = t("Signed in as {name}", { name: u.name });
      })
      .catch(() => {});
  }
  if (r.page === "new") pageNewTask(main, r.step);
  else if (r.page === "task") pageTask(main, r.id);
  else if (r.page === "tasks") pageTasks(main);
  else if (r.page === "files") pageFiles(main);
  else pageNotFound(main, r.address);
  window.scrollTo(0, 0);
}

setRenderer(render);
window.addEventListener("hashchange", render);
api.onUnauthorized(() => {
  if (!api.getKey()) return;
  api.clearKey();
  toast(t("Your API key was not accepted any more. Please sign in again."), "error");
  render();
});

// ---- shell, language, sign in --------------------------------------------------------------

/** English / 中文 buttons; the choice is kept in this browser and the page redrawn at once. */
function languageSwitch() {
  return h(
    "div.lang-switch",
    { role: "group", "aria-label": t("Language") },
    svgIcon("globe"),
    LANGUAGES.map((l) =>
      h(
        "button.lang",
        {
          type: "button",
          lang: l.code === "zh" ? "zh-CN" : "en",
          dataset: { lang: l.code },
          "aria-pressed": String(lang() === l.code),
          onclick: () => {
            if (lang() === l.code) return;
            setLang(l.code);
            render();
          },
        },
        l.label,
      ),
    ),
  );
}

function shell(page, main) {
  const key = api.getKey() || "";
  const masked = key.length > 14 ? `${key.slice(0, 12)}…${key.slice(-4)}` : "••••";
  const link = (href, icon, label, active) => h("a", { href, class: active ? "active" : "", title: label }, svgIcon(icon), h("span.nav-label", label));
  return h(
    "div.shell",
    h(
      "aside.sidebar",
      h("a.brand", { href: "#/" }, h("img", { src: "/assets/icon.svg", alt: "" }), h("span", "Tuna", h("small", t("Fine-tuning console")))),
      h(
        "nav.nav",
        { "aria-label": t("Main") },
        h("div.nav-section", t("Model fine-tuning")),
        link("#/", "list", t("Tasks"), page === "tasks" || page === "task"),
        link("#/new", "plus", t("New task"), page === "new"),
        link("#/files", "file", t("Files"), page === "files"),
      ),
      h(
        "div.user-box",
        languageSwitch(),
        h("div.who", { id: "user-name" }, api.getUserName() ? t("Signed in as {name}", { name: api.getUserName() }) : t("Signed in")),
        h("div.key", { title: t("API key in use") }, masked),
        h("button.btn.btn-sm", { type: "button", id: "sign-out", onclick: signOut, title: t("Sign out") }, svgIcon("logout"), h("span.label", t("Sign out"))),
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
  const err = h("div", { id: "sign-in-error" });
  const input = h("input", {
    type: "password",
    id: "api-key",
    name: "api-key",
    autocomplete: "current-password",
    placeholder: "sk-tuna-…",
    required: true,
    spellcheck: "false",
    // A new attempt makes the last refusal stale.
    oninput: () => {
      mount(err);
      input.removeAttribute("aria-invalid");
    },
  });
  const btn = h("button.btn.btn-primary", { type: "submit", id: "sign-in" }, t("Sign in"));
  const form = h(
    "form.card",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        btn.disabled = true;
        mount(btn, h("span.spinner"), t("Checking…"));
        mount(err);
        try {
          const user = await api.checkKey(key);
          api.setKey(key);
          api.setUserName(user && user.name);
          render();
        } catch (ex) {
          mount(err, errorBox(ex.message, ex.status === 401 ? t("This key was not accepted") : t("Cannot sign in")));
          input.setAttribute("aria-invalid", "true");
          btn.disabled = false;
          mount(btn, t("Sign in"));
        }
      },
    },
    h("div.signin-top", h("div.brand", h("img", { src: "/assets/icon.svg", alt: "" }), h("span", "Tuna", h("small", t("Fine-tuning console")))), languageSwitch()),
    h("div", h("h1", t("Sign in")), h("p.lead", t("Use the API key of your Tuna account. It stays in this browser."))),
    h("div.field", h("label", { for: "api-key" }, t("API key")), input),
    err,
    btn,
    h("p.muted.small", t("No key yet? An administrator creates one with"), " ", h("code", "tuna users create NAME"), t(".")),
  );
  mount(root, h("div.signin", form));
  input.focus();
}

/** An address the console does not know: say so, keep the address visible, offer the way back. */
function pageNotFound(main, address) {
  document.title = t("Page not found · Tuna");
  mount(
    main,
    h("div.page-head", h("div", h("h1", { id: "not-found" }, t("Page not found")), h("p.sub", t("The console has no page at {address}.", { address })))),
    h("div.card.card-pad", h("p", t("Check the address, or go to your tasks.")), h("a.btn.btn-primary", { href: "#/", id: "go-tasks" }, svgIcon("list"), t("Go to tasks"))),
  );
}

render();
