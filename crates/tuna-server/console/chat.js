// The "Effect test" dialog: chat with a checkpoint through POST /v1/chat/completions with
// `stream: true`, reading the SSE chunks as they arrive (fetch + ReadableStream). Side-by-side
// mode sends each prompt to the base model and to the checkpoint at once, each keeping its own
// conversation, so the effect of training is visible on the same questions.

import * as api from "./api.js";
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
  const t = (model && model.tuna) || {};
  const g = t.generation || t.generation_config || t.defaults || {};
  return {
    temperature: g.temperature,
    top_p: g.top_p,
    max_tokens: g.max_tokens ?? g.max_new_tokens ?? g.max_completion_tokens,
  };
}

export function openEffectTest({ job, checkpoint }) {
  const ckptModel = checkpoint.fine_tuned_model_checkpoint;
  const baseModel = job.model;
  let controllers = [];

  const numberField = (id, label, attrs, help) => {
    const input = h("input", { type: "number", id, ...attrs });
    return { input, el: h("div.field", h("span.field-label", h("label", { for: id }, label), h("span.default", { id: `${id}-default` })), input, help ? h("span.help", help) : null) };
  };
  const system = h("textarea", { id: "et-system", rows: "4", placeholder: "You are a helpful assistant." });
  system.value = datasetSystemPrompt(checkpoint);
  const temp = numberField("et-temperature", "Temperature", { min: "0", max: "2", step: "0.05" }, "Higher is more varied; 0 is greedy.");
  const topP = numberField("et-top-p", "Top-p", { min: "0", max: "1", step: "0.05" }, "Sample from the smallest set of tokens with this much probability.");
  const maxTok = numberField("et-max-tokens", "Max tokens", { min: "1", max: "8192", step: "1" }, "Longest answer, in tokens.");
  const sideBySide = h("input", { type: "checkbox", id: "et-side-by-side" });
  const settingsErr = h("div");

  const transcripts = h("div.transcripts");
  const panes = [];
  const makePane = (model, title) => {
    const messages = h("div.messages", { dataset: { model } }, h("p.chat-hint", "Send a message to see how this model answers."));
    const pane = { model, title, history: [], messages, el: h("div.transcript", { dataset: { model } }, h("div.transcript-head", { title: model }, title), messages) };
    return pane;
  };
  const ckptPane = makePane(ckptModel, `Checkpoint · step ${checkpoint.step_number}`);
  const basePane = makePane(baseModel, `Base model · ${baseModel}`);
  const layoutPanes = () => {
    panes.length = 0;
    if (sideBySide.checked) panes.push(basePane, ckptPane);
    else panes.push(ckptPane);
    transcripts.classList.toggle("side-by-side", sideBySide.checked);
    mount(transcripts, panes.map((p) => p.el));
  };
  sideBySide.addEventListener("change", layoutPanes);
  layoutPanes();

  const prompt = h("textarea", { id: "et-prompt", rows: "2", placeholder: "Ask something… (Enter to send, Shift+Enter for a new line)" });
  const send = h("button.btn.btn-primary", { type: "submit", id: "et-send" }, svgIcon("send"), "Send");
  const stop = h("button.btn", { type: "button", id: "et-stop", hidden: true }, "Stop");
  const clear = h("button.btn.btn-sm.btn-ghost", { type: "button", id: "et-clear" }, "Clear chat");
  const composer = h("form.composer", prompt, stop, send);

  const dialog = h(
    "dialog.modal",
    { id: "effect-test", "aria-labelledby": "et-title" },
    h(
      "div.modal-inner",
      h(
        "div.modal-head",
        h("div", h("h2", { id: "et-title" }, `Effect test · step ${checkpoint.step_number}`), h("div.sub", ckptModel)),
        h("button.btn.btn-sm.btn-ghost", { type: "button", id: "et-close", "aria-label": "Close", onclick: () => dialog.close() }, svgIcon("close")),
      ),
      h(
        "div.effect",
        h(
          "div.effect-settings",
          // On a phone the settings fold away so that the chat keeps the screen.
          h(
            "details.settings-fold",
            { open: !window.matchMedia("(max-width: 760px)").matches },
            h("summary", "System prompt and sampling"),
            h(
              "div.settings-body",
              h("div.field", h("label", { for: "et-system" }, "System prompt"), system, h("span.help", "Filled in from your dataset when it has one. Keep it as in training.")),
              temp.el,
              topP.el,
              maxTok.el,
            ),
          ),
          h("label.switch", sideBySide, "Side by side with the base model"),
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
          f.input.placeholder = "model default";
          return;
        }
        if (f.input.value === "") f.input.value = String(v);
        f.el.querySelector(".default").textContent = `default ${v}`;
      };
      fill(temp, d.temperature);
      fill(topP, d.top_p);
      fill(maxTok, d.max_tokens);
    })
    .catch(() => {
      for (const f of [temp, topP, maxTok]) f.input.placeholder = "model default";
    });

  clear.addEventListener("click", () => {
    for (const p of [ckptPane, basePane]) {
      p.history = [];
      mount(p.messages, h("p.chat-hint", "Send a message to see how this model answers."));
    }
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
        mount(settingsErr, errorBox(`${f.el.querySelector("label").textContent} must be a${int ? " whole" : ""} number.`, "Check the settings"));
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
    await Promise.all(panes.map((p) => ask(p, text, params)));
    send.hidden = false;
    stop.hidden = true;
    prompt.focus();
  });

  async function ask(pane, text, params) {
    if (!pane.history.length) pane.messages.replaceChildren();
    pane.history.push({ role: "user", content: text });
    pane.messages.append(h("div.msg.msg-user", text));
    const bubble = h("div.msg.msg-assistant.streaming", { dataset: { role: "assistant" } });
    const meta = h("div.msg-meta");
    pane.messages.append(bubble);
    scroll(pane);
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push(...pane.history);
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
      if (!answer.trim()) bubble.append(h("span.muted", "(empty answer)"));
      pane.history.push({ role: "assistant", content: answer });
      const secs = (performance.now() - started) / 1000;
      const parts = [];
      if (usage) parts.push(`${fmtInt(usage.completion_tokens)} tokens`, `${(usage.completion_tokens / Math.max(secs, 1e-3)).toFixed(1)} tokens/s`);
      if (finish === "length") parts.push("stopped at max tokens");
      meta.textContent = parts.join(" · ");
      if (parts.length) bubble.after(meta);
    } catch (err) {
      bubble.classList.remove("streaming");
      if (err.name === "AbortError") {
        bubble.dataset.done = "true";
        bubble.append(h("span.muted", " (stopped)"));
        pane.history.push({ role: "assistant", content: answer });
      } else {
        // The question stays out of the history so that it can be asked again.
        pane.history.pop();
        if (!answer) bubble.remove();
        pane.messages.append(h("div.msg.msg-error", { role: "alert" }, err.message));
      }
    }
    scroll(pane);
  }

  function scroll(pane) {
    pane.messages.scrollTop = pane.messages.scrollHeight;
  }

  return dialog;
}
