// End-to-end tests of Tuna's web console: headless Chromium (Debian's package, driven by
// playwright-core) against a real `tuna serve`. run.sh builds and starts the server, creates two
// users and passes:
//   TUNA_URL        the server's base URL (http://127.0.0.1:PORT)
//   TUNA_API_KEY    the first user's key; TUNA_API_KEY_2 a second user's (isolation check)
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
//   TUNA_TEST_OUT   where screenshots go (default test-output/console at the repo root)
//
// One test walks the whole product flow as a person would: sign in, upload a broken dataset and
// read its errors, upload a good one, set tiny training parameters, start, watch the run finish,
// open a checkpoint's sample, download the adapter, and chat with the checkpoint (streamed).
// Others cover pause / resume / cancel, the second user's view and phone widths. Every page is
// saved as a screenshot so a person can look at it.

// End-to-end tests of Tuna's web console: headless Chromium (Debian's package, driven by
// playwright-core) against a real `tuna serve` (run.sh starts it; lib.mjs has the shared pieces).
//
// One test walks the whole product flow as a person would: sign in, upload a broken dataset and
// read its errors, upload a good one, set tiny training parameters, start, watch the run finish,
// read a checkpoint's sample, download the adapter, and chat with the checkpoint (streamed).
// Others cover pause / resume / cancel, the second user's view and phone widths. Every page is
// saved as a screenshot so a person can look at it. defects.test.mjs covers issue 12's defects;
// demo.test.mjs the LoRA demo end to end.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import {
  BASE,
  DESKTOP,
  FIXTURES,
  KEY,
  KEY2,
  OUT,
  PHONE,
  apiCall,
  assertNoHorizontalScroll,
  close,
  launch,
  openPage,
  shot,
  stepper,
  uploadFixture,
} from "./lib.mjs";

/** The training dataset's assistant answers: the auto-sample's reference must be one of them. */
const identityAnswers = new Set(
  fs
    .readFileSync(path.join(FIXTURES, "identity.jsonl"), "utf8")
    .split("\n")
    .filter(Boolean)
    .flatMap((l) => JSON.parse(l).messages.filter((m) => m.role === "assistant").map((m) => m.content.trim())),
);

/** Shared across tests: the job the main flow created. */
let mainJobId = null;

before(launch);
after(close);

describe("console", { concurrency: false }, () => {
  test("serves the page and its assets with content types and revalidation", async () => {
    const index = await fetch(`${BASE}/`);
    assert.equal(index.status, 200);
    assert.match(index.headers.get("content-type"), /^text\/html/);
    assert.equal(index.headers.get("cache-control"), "no-cache");
    const etag = index.headers.get("etag");
    assert.ok(etag, "index has an ETag");
    const again = await fetch(`${BASE}/`, { headers: { "If-None-Match": etag } });
    assert.equal(again.status, 304);
    const js = await fetch(`${BASE}/assets/app.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get("content-type"), /^text\/javascript/);
    assert.equal((await fetch(`${BASE}/assets/missing.js`)).status, 404);
  });

  test("full flow: sign in, datasets, start a task, watch it, samples, effect test", async (t) => {
    const { ctx, page, problems } = await openPage(DESKTOP, { expect: [/status of 401/, /status of 400/] });
    // Each step needs the previous ones: after a failure the rest are skipped, not failed again.
    const step = stepper(t);
    try {
      await step("a wrong key is refused with the server's message", async () => {
        await page.goto(`${BASE}/`);
        await page.fill("#api-key", "sk-tuna-not-a-real-key");
        await page.click("#sign-in");
        const alert = page.locator(".signin .alert-error");
        await alert.waitFor();
        const text = await alert.innerText();
        assert.match(text, /not accepted/i);
        // The server's own message is shown, not a generic one.
        const err = await apiCall("GET", "/v1/models", null, "sk-tuna-not-a-real-key");
        assert.equal(err.status, 401);
        assert.ok(text.includes(err.json.error.message), `alert "${text}" lacks "${err.json.error.message}"`);
        await shot(page, "01-sign-in-refused", false);
      });

      await step("the right key signs in and shows the task list", async () => {
        await page.fill("#api-key", KEY);
        await page.click("#sign-in");
        await page.locator("h1", { hasText: "Fine-tuning tasks" }).waitFor();
        assert.equal(await page.evaluate(() => localStorage.getItem("tuna.apiKey")), KEY);
        await page.locator("#new-task").waitFor();
        await shot(page, "02-tasks-empty");
      });

      await step("new task: base models come from the server", async () => {
        await page.click("#new-task");
        await page.locator("#base-model").waitFor();
        const options = await page.locator("#base-model option").allInnerTexts();
        const models = await apiCall("GET", "/v1/models");
        const bases = models.json.data.filter((m) => m.tuna.kind === "base").map((m) => m.id);
        assert.deepEqual(options, bases);
        assert.ok(options.includes("demo"), `the demo model is offered: ${options}`);
        await page.selectOption("#base-model", "demo");
        await page.fill("#task-name", "identity-e2e");
        assert.ok(await page.locator('input[name="method"][value="lora"]').isChecked(), "LoRA is the default method");
        assert.ok(await page.locator("#next-1").isDisabled(), "Next waits for a dataset");
      });

      await step("a dataset with errors shows each error with its line number", async () => {
        await page.setInputFiles("#training-file", path.join(FIXTURES, "bad.jsonl"));
        await page.locator('#training-check [data-check="failed"]').waitFor();
        for (const line of [2, 3, 4, 5]) {
          const item = page.locator(`#training-check .issue.error[data-line="${line}"]`);
          assert.equal(await item.count(), 1, `line ${line} is reported once`);
          const text = await item.innerText();
          assert.match(text, new RegExp(`line ${line}\\b`));
        }
        const codes = await page.locator("#training-check .issue.error").evaluateAll((els) => els.map((e) => e.dataset.code));
        assert.ok(codes.includes("invalid_json"), codes.join());
        assert.ok(codes.includes("unknown_role"), codes.join());
        assert.equal(await page.locator('#training-check .issue.error[data-line="1"]').count(), 0, "line 1 is valid");
        assert.ok(await page.locator("#next-1").isDisabled(), "a failed check blocks Next");
        await shot(page, "03-new-task-dataset-errors");
      });

      await step("the good dataset passes with token statistics and a histogram", async () => {
        await page.setInputFiles("#training-file", path.join(FIXTURES, "identity.jsonl"));
        await page.locator('#training-check [data-check="ok"]').waitFor();
        const summary = await page.locator("#training-check .alert-ok").innerText();
        assert.match(summary, /\b91 conversations\b/);
        assert.equal(await page.locator("#training-check svg.histogram").count(), 1);
        const bars = await page.locator("#training-check svg.histogram rect").count();
        assert.ok(bars >= 1, "histogram has bars");
        assert.match(await page.locator("#training-check .kv").innerText(), /Tokens \/ epoch/);
        assert.ok(await page.locator("#next-1").isEnabled());
        await shot(page, "04-new-task-dataset-ok");
        await page.click("#next-1");
      });

      await step("training parameters explain themselves; values outside the limits are refused on their field", async () => {
        await page.locator("#p-n_epochs").waitFor();
        assert.match(page.url(), /#\/new\/2$/);
        for (const id of ["n_epochs", "learning_rate", "batch_size", "lora_rank", "lora_alpha", "lora_dropout", "max_seq_len", "checkpoint_interval", "seed"]) {
          const field = page.locator(`.field:has(#p-${id})`);
          assert.match(await field.locator(".default").innerText(), /^default /, `${id} shows its default`);
          assert.ok((await field.locator(".help").innerText()).length > 20, `${id} has an explanation`);
        }
        await shot(page, "05-new-task-parameters");
        // A sequence length no model takes: refused on its field, the wizard stays on step 2.
        await page.fill("#p-max_seq_len", "100000000");
        await page.click("#next-2");
        await page.locator("#p-max_seq_len-error", { hasText: "At most" }).waitFor();
        assert.match(page.url(), /#\/new\/2$/);
        await shot(page, "06-new-task-refused");
        await page.fill("#p-max_seq_len", "128");
        await page.fill("#p-max_steps", "6");
        await page.fill("#p-batch_size", "4");
        await page.fill("#p-checkpoint_interval", "3");
        await page.fill("#p-learning_rate", "0.001");
        await page.click("#next-2");
      });

      await step("compute shows the server's estimate; start creates the task", async () => {
        await page.locator("#estimate").waitFor();
        assert.match(page.url(), /#\/new\/3$/);
        const est = await page.locator("#estimate").innerText();
        assert.match(est, /Estimated duration/);
        assert.match(est, /Estimated cost/);
        assert.match(est, /Queue/);
        assert.match(est, /6 steps/);
        await shot(page, "07-new-task-compute");
        await page.click("#start-task");
        await page.waitForURL(/#\/tasks\/ftjob-/);
        mainJobId = decodeURIComponent(page.url().split("#/tasks/")[1]);
        await page.locator("#task-title", { hasText: "identity-e2e" }).waitFor();
        const job = await apiCall("GET", `/v1/fine_tuning/jobs/${mainJobId}`);
        assert.equal(job.status, 200);
        assert.equal(job.json.model, "demo");
        assert.equal(job.json.tuna.name, "identity-e2e");
        assert.equal(job.json.tuna.method, "lora");
        assert.equal(job.json.tuna.max_seq_len, 128);
        assert.equal(job.json.tuna.checkpoint_interval, 3);
        assert.equal(job.json.hyperparameters.batch_size, 4);
      });

      await step("the task page follows the run to the end with live charts", async () => {
        await page.locator('#task-status [data-status="running"], #task-status [data-status="succeeded"]').first().waitFor({ timeout: 90_000 });
        await shot(page, "08-task-running");
        await page.locator('#task-status [data-status="succeeded"]').waitFor({ timeout: 180_000 });
        // The final poll fills the charts and the checkpoints after the status flips.
        await page.waitForFunction(() => Number(document.querySelector('[data-chart="Loss"]')?.dataset.points) >= 6, null, { timeout: 20_000 });
        assert.equal(await page.locator("#task-percent").innerText(), "100%");
        assert.match(await page.locator("#task-steps").innerText(), /step 6 \/ 6/);
        for (const chart of ["Learning rate", "Gradient norm", "Tokens / s"]) {
          const n = Number(await page.locator(`[data-chart="${chart}"]`).getAttribute("data-points"));
          assert.equal(n, 6, `${chart} has one point per step`);
        }
        await page.locator("#checkpoints .ckpt").nth(1).waitFor();
        const steps = await page.locator("#checkpoints .ckpt").evaluateAll((els) => els.map((e) => Number(e.dataset.step)));
        assert.deepEqual(steps, [6, 3], "a checkpoint every 3 steps, newest first");
        const api = await apiCall("GET", `/v1/fine_tuning/jobs/${mainJobId}/checkpoints`);
        assert.deepEqual(api.json.data.map((c) => c.step_number).sort((a, b) => b - a), steps);
        await shot(page, "09-task-succeeded");
      });

      await step("a checkpoint shows its sample beside the dataset's reference answer", async () => {
        const ckpt = page.locator('#checkpoints .ckpt[data-step="6"]');
        assert.match(await ckpt.locator(".ckpt-metrics").innerText(), /train loss \d/);
        // Samples start open: the answer is what a person comes to see.
        assert.ok(await ckpt.locator(".sample-generated").isVisible());
        const reference = (await ckpt.locator(".sample-reference").innerText()).replace(/^Reference answer\s*/i, "").trim();
        assert.ok(identityAnswers.has(reference), `the reference "${reference}" is an answer of the dataset`);
        assert.equal(await ckpt.locator(".sample-generated").count(), 1);
        await shot(page, "10-checkpoint-sample");
      });

      await step("the adapter downloads", async () => {
        const ckpt = page.locator('#checkpoints .ckpt[data-step="6"]');
        const [download] = await Promise.all([page.waitForEvent("download"), ckpt.locator("button", { hasText: "Download adapter" }).click()]);
        const file = path.join(OUT, "downloaded-" + download.suggestedFilename());
        await download.saveAs(file);
        const size = fs.statSync(file).size;
        assert.ok(size > 1000, `the download has content (${size} bytes)`);
        fs.rmSync(file);
      });

      await step("effect test: a streamed answer from the checkpoint, then side by side", async () => {
        await page.locator('#checkpoints .ckpt[data-step="6"] [data-action="effect-test"]').click();
        const dialog = page.locator("dialog#effect-test");
        await dialog.waitFor();
        await page.fill("#et-max-tokens", "12");
        await page.fill("#et-temperature", "0");
        await page.fill("#et-prompt", "Who are you?");
        await page.click("#et-send");
        // The answer arrives in pieces: the bubble is marked streaming until [DONE].
        const answer = dialog.locator('.messages .msg-assistant[data-done="true"]');
        await answer.first().waitFor({ timeout: 60_000 });
        assert.equal(await dialog.locator(".msg-error").count(), 0, "no error bubble");
        const text = await answer.first().innerText();
        assert.ok(text.trim().length > 0, "the answer is not empty");
        // Same request through the API, without the console: greedy decoding gives the same text.
        const direct = await apiCall("POST", "/v1/chat/completions", {
          model: await dialog.locator(".transcript").first().getAttribute("data-model"),
          messages: [{ role: "user", content: "Who are you?" }],
          temperature: 0,
          max_tokens: 12,
        });
        assert.equal(direct.status, 200);
        assert.equal(text.trim(), direct.json.choices[0].message.content.trim() || "(empty answer)");
        await shot(page, "11-effect-test", false);

        await page.check("#et-side-by-side");
        await page.fill("#et-prompt", "hello");
        await page.click("#et-send");
        const panes = dialog.locator(".transcript");
        assert.equal(await panes.count(), 2);
        const models = await panes.evaluateAll((els) => els.map((e) => e.dataset.model));
        assert.equal(models[0], "demo", "the base model on the left");
        assert.match(models[1], /ckpt|step/i, "the checkpoint on the right");
        // Switching to side by side started a new conversation: each pane holds this turn only.
        for (let i = 0; i < 2; i++) assert.equal(await panes.nth(i).locator(".msg-user").count(), 1);
        for (let i = 0; i < 2; i++) await panes.nth(i).locator('.msg-assistant[data-done="true"]').last().waitFor({ timeout: 60_000 });
        await page.waitForFunction(() => !document.querySelector("#et-send")?.hidden);
        assert.equal(await dialog.locator(".msg-error").count(), 0);
        await shot(page, "12-effect-test-side-by-side", false);

        // A refused request shows the server's message in the chat.
        await page.fill("#et-temperature", "7");
        await page.fill("#et-prompt", "too hot");
        await page.click("#et-send");
        const err = dialog.locator(".msg-error").first();
        await err.waitFor({ timeout: 30_000 });
        assert.match(await err.innerText(), /temperature/);
        await page.click("#et-close");
        await dialog.waitFor({ state: "detached" });
      });

      await step("effect test: the model's defaults, arriving late, never overwrite a field being typed in", async () => {
        // The dialog asks for the model's defaults as it opens; hold that answer back until the
        // user is in the temperature field, as a slow server would.
        let release;
        const held = new Promise((resolve) => (release = resolve));
        await page.route("**/v1/models/**", async (route) => {
          await held;
          await route.continue();
        });
        await page.locator('#checkpoints .ckpt[data-step="6"] [data-action="effect-test"]').click();
        const dialog = page.locator("dialog#effect-test");
        await dialog.waitFor();
        await page.click("#et-temperature");
        release();
        await page.locator("#et-temperature-default", { hasText: "default" }).waitFor();
        await page.keyboard.type("0");
        assert.equal(await page.inputValue("#et-temperature"), "0", "what the user typed, alone");
        assert.notEqual(await page.inputValue("#et-top-p"), "", "untouched fields still get the defaults");
        await page.unroute("**/v1/models/**");
        await page.click("#et-close");
        await dialog.waitFor({ state: "detached" });
      });

      await step("the task list shows the finished task", async () => {
        await page.click("nav >> text=Tasks");
        const row = page.locator(`#tasks tr[data-job="${mainJobId}"]`);
        await row.waitFor();
        const text = await row.innerText();
        assert.match(text, /identity-e2e/);
        assert.match(text, /demo/);
        assert.match(text, /LoRA/);
        assert.match(text, /Succeeded/);
        assert.match(text, /100%/);
        await shot(page, "13-tasks");
      });

      await step("sign out forgets the key", async () => {
        await page.click("#sign-out");
        await page.locator("#api-key").waitFor();
        assert.equal(await page.evaluate(() => localStorage.getItem("tuna.apiKey")), null);
      });
      assert.deepEqual(problems, []);
    } finally {
      await ctx.close();
    }
  });

  test("pause, resume and cancel from the task page", async () => {
    // A long job made through the API; the console drives it.
    const file = await uploadFixture("identity.jsonl");
    const created = await apiCall("POST", "/v1/fine_tuning/jobs", {
      model: "demo",
      training_file: file.id,
      tuna: { name: "long-run", max_steps: 100000, max_seq_len: 64, checkpoint_interval: 100000 },
    });
    assert.equal(created.status, 200, JSON.stringify(created.json));
    const id = created.json.id;

    const { ctx, page, problems } = await openPage(DESKTOP, { key: KEY });
    page.on("dialog", (d) => d.accept()); // the cancel confirmation
    try {
      await page.goto(`${BASE}/#/tasks/${id}`);
      await page.locator('#task-status [data-status="running"]').waitFor({ timeout: 90_000 });
      await page.click("#pause");
      await page.locator('#task-status [data-status="paused"]').waitFor({ timeout: 90_000 });
      await page.locator("#resume").waitFor();
      await shot(page, "14-task-paused");
      await page.click("#resume");
      await page.locator('#task-status [data-status="running"], #task-status [data-status="queued"]').first().waitFor({ timeout: 30_000 });
      await page.click("#cancel");
      await page.locator('#task-status [data-status="cancelled"]').waitFor({ timeout: 60_000 });
      assert.equal(await page.locator("#cancel").count(), 0, "a cancelled task offers no cancel");
      const job = await apiCall("GET", `/v1/fine_tuning/jobs/${id}`);
      assert.equal(job.json.status, "cancelled");
      await shot(page, "15-task-cancelled");
      assert.deepEqual(problems, []);
    } finally {
      await ctx.close();
    }
  });

  test("the effect test starts from the dataset's system prompt", async () => {
    // The product's own example file: every conversation opens with a system prompt.
    const file = await uploadFixture("seed_example.jsonl");
    const created = await apiCall("POST", "/v1/fine_tuning/jobs", {
      model: "demo",
      training_file: file.id,
      tuna: { name: "with-system-prompt", max_steps: 1, max_seq_len: 128, sample_max_tokens: 4 },
    });
    assert.equal(created.status, 200, JSON.stringify(created.json));
    const id = created.json.id;
    const { ctx, page, problems } = await openPage(DESKTOP, { key: KEY });
    try {
      await page.goto(`${BASE}/#/tasks/${id}`);
      await page.locator('#task-status [data-status="succeeded"]').waitFor({ timeout: 120_000 });
      await page.locator('#checkpoints .ckpt [data-action="effect-test"]').first().click();
      await page.locator("dialog#effect-test").waitFor();
      const systems = fs
        .readFileSync(path.join(FIXTURES, "seed_example.jsonl"), "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l).messages[0].content);
      assert.equal(await page.inputValue("#et-system"), systems[0]);
      await shot(page, "16-effect-test-system-prompt", false);
      assert.deepEqual(problems, []);
    } finally {
      await ctx.close();
    }
  });

  test("another user sees none of the first user's tasks", { skip: !KEY2 && "TUNA_API_KEY_2 not set" }, async () => {
    const { ctx, page } = await openPage(DESKTOP, { key: KEY2 });
    try {
      await page.goto(`${BASE}/`);
      await page.locator(".empty-title", { hasText: "No fine-tuning tasks yet" }).waitFor();
      if (mainJobId) {
        await page.goto(`${BASE}/#/tasks/${mainJobId}`);
        const alert = page.locator(".alert-error");
        await alert.waitFor();
        assert.match(await alert.innerText(), /not found/i);
      }
    } finally {
      await ctx.close();
    }
  });

  test("phone width: every page fits and stays usable", async () => {
    const { ctx, page, problems } = await openPage(PHONE, { key: KEY });
    try {
      await page.goto(`${BASE}/`);
      await page.locator("#tasks").waitFor();
      await assertNoHorizontalScroll(page, "task list");
      // The table turns into cards: no header row, each task on its own block.
      assert.equal(await page.locator("#tasks thead").isVisible(), false);
      await shot(page, "phone-01-tasks");

      await page.goto(`${BASE}/#/new`);
      await page.locator("#base-model").waitFor();
      await page.fill("#task-name", "phone-task");
      await page.setInputFiles("#training-file", path.join(FIXTURES, "bad.jsonl"));
      await page.locator('#training-check [data-check="failed"]').waitFor();
      assert.ok(await page.locator('#training-check .issue[data-line="2"]').isVisible());
      await assertNoHorizontalScroll(page, "new task with errors");
      await shot(page, "phone-02-new-task-errors");
      await page.setInputFiles("#training-file", path.join(FIXTURES, "identity.jsonl"));
      await page.locator('#training-check [data-check="ok"]').waitFor();
      await assertNoHorizontalScroll(page, "new task ok");
      await page.click("#next-1");
      await page.locator("#p-n_epochs").waitFor();
      await assertNoHorizontalScroll(page, "parameters");
      await shot(page, "phone-03-parameters");
      await page.click("#next-2");
      await page.locator("#estimate").waitFor();
      await assertNoHorizontalScroll(page, "compute");
      await shot(page, "phone-04-compute");

      if (mainJobId) {
        await page.goto(`${BASE}/#/tasks/${mainJobId}`);
        await page.locator('#checkpoints .ckpt[data-step="6"]').waitFor();
        await page.waitForFunction(() => Number(document.querySelector('[data-chart="Loss"]')?.dataset.points) > 0);
        await assertNoHorizontalScroll(page, "task page");
        await shot(page, "phone-05-task");
        await page.locator('#checkpoints .ckpt[data-step="6"] [data-action="effect-test"]').click();
        await page.locator("dialog#effect-test").waitFor();
        const box = await page.locator("dialog#effect-test").boundingBox();
        assert.ok(box.width <= PHONE.width && box.x >= 0, `the dialog fits the screen (${JSON.stringify(box)})`);
        // The settings start folded on a phone, leaving the screen to the chat.
        assert.equal(await page.locator("#et-max-tokens").isVisible(), false);
        await page.click("dialog .settings-fold > summary");
        await page.fill("#et-max-tokens", "8");
        await page.click("dialog .settings-fold > summary");
        await page.fill("#et-prompt", "hi");
        await page.click("#et-send");
        await page.locator('dialog .msg-assistant[data-done="true"]').first().waitFor({ timeout: 60_000 });
        assert.ok(await page.locator("#et-send").isVisible(), "the send button is on screen");
        await shot(page, "phone-06-effect-test", false);
      }
      assert.deepEqual(problems, []);
    } finally {
      await ctx.close();
    }
  });
});
