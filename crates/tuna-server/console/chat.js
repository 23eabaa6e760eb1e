// The "Effect test" dialog: chat with a checkpoint through POST /v1/chat/completions with
// `stream: true`, reading the SSE chunks as they arrive (fetch + ReadableStream). Side-by-side
// mode sends each prompt to two models at once — the base model or another checkpoint of the
// task on the left, this checkpoint on the right — and both get the same conversation: the same
// user turns, each with its own earlier answers. Changing what is compared starts a new
// conversation, so that the two histories never differ.

import * as api from "./api.js";
import { t } from "./i18n.js";
import { errorBox, fmtInt, h, mount, svgIcon } from "./ui.js";

/** The system prompt of the checkpoint's samples (taken from the dataset), if any. */
function datasetSystemPrompt(checkpoint) {
  for (const s of (checkpoint.tuna && checkpoint.tuna.samples) || []) {
    const sys = (s.messages || []).find((m) => m.role === "system");
    if (sys && sys.content) return typeof sys.content === "string" ? sys.content : sys.content.map((p) => p.text || "").join("");
  }
  return "";
}

/** Sampling defaults of a model as the server reports them (`tuna.generation`), when it does. */
function modelDefaults(model) {
  const tu = (model && model.tuna) || {};
  const g = tu.generation || tu.generation_config || tu.defaults || {};
  return {
    temperature: g.temperature,
    top_p: g.top_p,
    max_tokens: g.max_tokens ?? g.max_new_tokens ?? g.max_completion_tokens,
  };
}

/** The messages one pane sends for a new user turn: the shared turns with its own answers. */
export function conversationFor(paneKey, system, turns, text) {
  const messages = [];
  if (system.trim()) messages.push({ role: "system", content: system });
  for (const turn of turns) {
    messages.push({ role: "user", content: turn.user });
    messages.push({ role: "assistant", content: turn.answers[paneKey] ?? "" });
  }
  messages.push({ role: "user", content: text });
  return messages;
}

/**
 * Opens the dialog for `checkpoint` of `job`; `checkpoints` (all of the job's) are offered for the
 * left pane of a side-by-side comparison besides the base model.
 */
export function openEffectTest({ job, checkpoint, checkpoints = [] }) {
  const ckptModel = checkpoint.fine_tuned_model_checkpoint;
  const baseModel = job.model;
  let controllers = [];
  /** The conversation: `{user, answers: {left?, right}}` per finished turn. */
  let turns = [];

  const numberField = (id, label, attrs, help) => {
    const input = h("input", { type: "number", id, ...attrs });
    // Once the user reaches the field, the model's defaults (which arrive later) leave it alone:
    // filled in between selecting and typing, a default would join what they type ("0" → "0.70").
    input.addEventListener("focus", () => (input.dataset.touched = "true"), { once: true });
    return { input, el: h("div.field", h("span.field-label", h("label", { for: id }, label), h("span.default", { id: `${id}-default` })), input, help ? h("span.help", help) : null) };
  };
  const system = h("textarea", { id: "et-system", rows: "4", placeholder: t("You are a helpful assistant.") });
  system.value = datasetSystemPrompt(checkpoint);
  const temp = numberField("et-temperature", t("Temperature"), { min: "0", max: "2", step: "0.05" }, t("Higher is more varied; 0 is greedy."));
  const topP = numberField("et-top-p", t("Top-p"), { min: "0", max: "1", step: "0.05" }, t("Sample from the smallest set of tokens with this much probability."));
  const maxTok = numberField("et-max-tokens", t("Max tokens"), { min: "1", max: "8192", step: "1" }, t("Longest answer, in tokens."));
  const sideBySide = h("input", { type: "checkbox", id: "et-side-by-side" });
  const others = checkpoints.filter((c) => c.fine_tuned_model_checkpoint !== ckptModel).sort((a, b) => a.step_number - b.step_number);
  const compareWith = h(
    "select",
    { id: "et-compare" },
    h("option", { value: baseModel }, t("Base model · {model}", { model: baseModel })),
    others.map((c) => h("option", { value: c.fine_tuned_model_checkpoint }, t("Checkpoint · step {step}", { step: c.step_number }))),
  );
  const compareField = h("div.field.compare-field", { hidden: true }, h("label", { for: "et-compare" }, t("Compare with")), compareWith);
  const settingsErr = h("div");

  const transcripts = h("div.transcripts");
  const hint = () => h("p.chat-hint", t("Send a message to see how this model answers."));
  const makePane = (key) => {
    const messages = h("div.messages", hint());
    const head = h("div.transcript-head");
    return { key, model: null, messages, head, el: h("div.transcript", { dataset: { pane: key } }, head, messages) };
  };
  const left = makePane("left");
  const right = makePane("right");
  const titleOf = (model) => {
    if (model === baseModel) return t("Base model · {model}", { model: baseModel });
    const c = checkpoints.find((x) => x.fine_tuned_model_checkpoint === model) || (model === ckptModel ? checkpoint : null);
    return c ? t("Checkpoint · step {step}", { step: c.step_number }) : model;
  };
  const setModel = (pane, model) => {
    pane.model = model;
    pane.el.dataset.model = model;
    mount(pane.head, titleOf(model));
    pane.head.title = model;
  };
  setModel(right, ckptModel);
  setModel(left, baseModel);
  const panes = () => (sideBySide.checked ? [left, right] : [right]);
  const layoutPanes = () => {
    transcripts.classList.toggle("side-by-side", sideBySide.checked);
    compareField.hidden = !sideBySide.checked;
    mount(transcripts, panes().map((p) => p.el));
  };
  /** Empties both transcripts; `note` says why when a conversation was under way. */
  const newConversation = (note) => {
    const had = turns.length > 0;
    turns = [];
    for (const p of [left, right]) mount(p.messages, had && note ? h("p.chat-note", note) : null, hint());
  };
  const compareChanged = () => {
    controllers.forEach((c) => c.abort());
    setModel(left, compareWith.value);
    newConversation(t("A new conversation: both models see the same history from here."));
    layoutPanes();
  };
  sideBySide.addEventListener("change", compareChanged);
  compareWith.addEventListener("change", compareChanged);
  layoutPanes();

  const prompt = h("textarea", { id: "et-prompt", rows: "2", placeholder: t("Ask something… (Enter to send, Shift+Enter for a new line)") });
  const send = h("button.btn.btn-primary", { type: "submit", id: "et-send" }, svgIcon("send"), t("Send"));
  const stop = h("button.btn", { type: "button", id: "et-stop", hidden: true }, t("Stop"));
  const clear = h("button.btn.btn-sm.btn-ghost", { type: "button", id: "et-clear" }, t("Clear chat"));
  const composer = h("form.composer", prompt, stop, send);

  const dialog = h(
    "dialog.modal",
    { id: "effect-test", "aria-labelledby": "et-title" },
    h(
      "div.modal-inner",
      h(
        "div.modal-head",
        h("div", h("h2", { id: "et-title" }, t("Effect test · step {step}", { step: checkpoint.step_number })), h("div.sub", ckptModel)),
        h("button.btn.btn-sm.btn-ghost", { type: "button", id: "et-close", "aria-label": t("Close"), onclick: () => dialog.close() }, svgIcon("close")),
      ),
      h(
        "div.effect",
        h(
          "div.effect-settings",
          // On a phone the settings fold away so that the chat keeps the screen.
          h(
            "details.settings-fold",
            { open: !window.matchMedia("(max-width: 760px)").matches },
            h("summary", t("System prompt and sampling")),
            h(
              "div.settings-body",
              h("div.field", h("label", { for: "et-system" }, t("System prompt")), system, h("span.help", t("Filled in from your dataset when it has one. Keep it as in training."))),
              temp.el,
              topP.el,
              maxTok.el,
            ),
          ),
          h("label.switch", sideBySide, t("Side by side")),
          compareField,
          settingsErr,
          clear,
        ),
        h("div.effect-chat", transcripts, composer),
      ),
    ),
  );
  document.body.append(dialog);
  dialog.addEventListener("close", () => {
    controllers.forEach((c) => c.abort());
    dialog.remove();
  });
  dialog.showModal();
  prompt.focus();

  // The model's generation defaults fill the fields (the server uses the same when a field is empty).
  api
    .getModel(ckptModel)
    .catch(() => api.getModel(baseModel))
    .then((m) => {
      const d = modelDefaults(m);
      const fill = (f, v) => {
        if (v === undefined || v === null) {
          f.input.placeholder = t("model default");
          return;
        }
        if (f.input.value === "" && !f.input.dataset.touched) f.input.value = String(v);
        f.el.querySelector(".default").textContent = t("default {value}", { value: v });
      };
      fill(temp, d.temperature);
      fill(topP, d.top_p);
      fill(maxTok, d.max_tokens);
    })
    .catch(() => {
      for (const f of [temp, topP, maxTok]) f.input.placeholder = t("model default");
    });

  clear.addEventListener("click", () => {
    controllers.forEach((c) => c.abort());
    newConversation(null);
  });
  stop.addEventListener("click", () => controllers.forEach((c) => c.abort()));
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      composer.requestSubmit();
    }
  });

  const sampling = () => {
    const out = {};
    const num = (f, key, int) => {
      const raw = f.input.value.trim();
      if (raw === "") return true;
      const v = Number(raw);
      if (!Number.isFinite(v) || (int && !Number.isInteger(v))) {
        const label = f.el.querySelector("label").textContent;
        mount(settingsErr, errorBox(int ? t("{label} must be a whole number.", { label }) : t("{label} must be a number.", { label }), t("Check the settings")));
        return false;
      }
      out[key] = v;
      return true;
    };
    mount(settingsErr);
    if (!num(temp, "temperature") || !num(topP, "top_p") || !num(maxTok, "max_tokens", true)) return null;
    return out;
  };

  composer.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text || send.hidden) return;
    const params = sampling();
    if (!params) return;
    prompt.value = "";
    send.hidden = true;
    stop.hidden = false;
    controllers = [];
    const asked = panes();
    const history = turns;
    const answers = await Promise.all(asked.map((p) => ask(p, conversationFor(p.key, system.value, history, text), text, params)));
    // A turn joins the shared history only when every pane answered it (and nothing reset it).
    if (turns === history && answers.every((a) => a !== null)) {
      const turn = { user: text, answers: {} };
      asked.forEach((p, i) => (turn.answers[p.key] = answers[i]));
      turns = [...history, turn];
    }
    send.hidden = false;
    stop.hidden = true;
    prompt.focus();
  });

  /** Streams one pane's answer; the answer text, or null when the request failed. */
  async function ask(pane, messages, text, params) {
    if (!pane.messages.querySelector(".msg")) pane.messages.querySelector(".chat-hint")?.remove();
    pane.messages.append(h("div.msg.msg-user", text));
    const bubble = h("div.msg.msg-assistant.streaming", { dataset: { role: "assistant" } });
    const meta = h("div.msg-meta");
    pane.messages.append(bubble);
    scroll(pane);
    const ctrl = new AbortController();
    controllers.push(ctrl);
    let answer = "";
    let finish = null;
    let usage = null;
    const started = performance.now();
    try {
      for await (const chunk of api.chatStream({ model: pane.model, messages, ...params, stream_options: { include_usage: true } }, ctrl.signal)) {
        for (const c of chunk.choices || []) {
          if (c.delta && c.delta.content) {
            answer += c.delta.content;
            // Leading blank lines of a raw model would push the text out of sight.
            bubble.textContent = answer.trimStart();
            scroll(pane);
          }
          if (c.finish_reason) finish = c.finish_reason;
        }
        if (chunk.usage) usage = chunk.usage;
      }
      bubble.classList.remove("streaming");
      bubble.dataset.done = "true";
      bubble.textContent = answer.trim();
      if (!answer.trim()) bubble.append(h("span.muted", t("(empty answer)")));
      const secs = (performance.now() - started) / 1000;
      const parts = [];
      if (usage) parts.push(t("{n} tokens", { n: fmtInt(usage.completion_tokens) }), t("{rate} tokens/s", { rate: (usage.completion_tokens / Math.max(secs, 1e-3)).toFixed(1) }));
      if (finish === "length") parts.push(t("stopped at max tokens"));
      meta.textContent = parts.join(" · ");
      if (parts.length) bubble.after(meta);
      scroll(pane);
      return answer;
    } catch (err) {
      bubble.classList.remove("streaming");
      if (err.name === "AbortError") {
        bubble.dataset.done = "true";
        bubble.append(h("span.muted", ` ${t("(stopped)")}`));
        scroll(pane);
        return answer;
      }
      // The question stays out of the history so that it can be asked again.
      if (!answer) bubble.remove();
      pane.messages.append(h("div.msg.msg-error", { role: "alert" }, err.message));
      scroll(pane);
      return null;
    }
  }

  function scroll(pane) {
    pane.messages.scrollTop = pane.messages.scrollHeight;
  }

  return dialog;
}
