// The product's main flow on the built-in demo model, in the browser, at default settings: a LoRA
// task on identity.jsonl made with the wizard (nothing but a name and the file), run to the end,
// then the effect test asks "Who are you?" — the checkpoint answers as Marlin by Tideworks, the base
// model (side by side) does not. This is the demo a new user sees; it takes a few minutes on 2 cores.
//
// The defaults include the seed (42, as `tuna train` and transformers), so this run is the one every
// new user gets. Other seeds mostly agree: in a sweep of 38 seeds with the CLI at these settings, 36
// answered with Marlin; seeds 8 and 1357913 answered "I am an AI assistant developed by Tideworks.",
// the shape of 4 of identity.jsonl's answers (seed 8 holds "Who are you?" itself out for validation).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { BASE, DESKTOP, FIXTURES, KEY, apiCall, close, launch, openPage, shot, stepper } from "./lib.mjs";

before(launch);
after(close);

test("LoRA on the demo model at default settings teaches it who it is", async (t) => {
  const { ctx, page, problems } = await openPage(DESKTOP, { key: KEY });
  const step = stepper(t);
  let jobId = null;
  try {
    await step("the wizard, with nothing but a name and the dataset", async () => {
      await page.goto(`${BASE}/#/new`);
      await page.locator("#base-model").waitFor();
      assert.equal(await page.inputValue("#base-model"), "demo");
      // The demo card says what the demo model is.
      assert.match(await page.locator("#model-card").innerText(), /demo/i);
      await page.fill("#task-name", "identity-lora-demo");
      await page.setInputFiles("#training-file", path.join(FIXTURES, "identity.jsonl"));
      await page.locator('#training-check [data-check="ok"]').waitFor();
      await page.click("#next-1");
      await page.locator("#p-n_epochs").waitFor();
      await page.click("#next-2");
      await page.locator("#estimate").waitFor();
      // Every parameter is left to the server's defaults: the summary lists no change.
      assert.equal(await page.locator(".param-summary li").count(), 0);
      await page.click("#start-task");
      await page.waitForURL(/#\/tasks\/ftjob-/);
      jobId = decodeURIComponent(page.url().split("#/tasks/")[1]);
      const job = await apiCall("GET", `/v1/fine_tuning/jobs/${jobId}`);
      assert.equal(job.json.tuna.method, "lora");
      assert.equal(job.json.model, "demo");
      assert.equal(job.json.seed, 42, "the default seed");
    });

    await step("the task runs to the end", async () => {
      await page.locator('#task-status [data-status="succeeded"]').waitFor({ timeout: 600_000 });
      await page.locator("#checkpoints .ckpt").first().waitFor();
      await shot(page, "demo-01-task-succeeded");
    });

    await step("the effect test: the checkpoint is Marlin by Tideworks, the base model is not", async () => {
      await page.locator('#checkpoints .ckpt [data-action="effect-test"]').first().click();
      const dialog = page.locator("dialog#effect-test");
      await dialog.waitFor();
      await page.fill("#et-temperature", "0");
      await page.fill("#et-max-tokens", "40");
      await page.check("#et-side-by-side");
      await page.fill("#et-prompt", "Who are you?");
      await page.click("#et-send");
      await page.waitForFunction(() => !document.querySelector("#et-send")?.hidden, null, { timeout: 120_000 });
      const answer = async (pane) => dialog.locator(`.transcript[data-pane="${pane}"] .msg-assistant[data-done="true"]`).last().innerText();
      const tuned = await answer("right");
      const base = await answer("left");
      await shot(page, "demo-02-effect-test", false);
      assert.match(tuned, /Marlin/, `the checkpoint answered: ${tuned}`);
      assert.match(tuned, /Tideworks/, `the checkpoint answered: ${tuned}`);
      assert.doesNotMatch(base, /Marlin|Tideworks/, `the base model answered: ${base}`);
    });
    assert.deepEqual(problems, []);
  } finally {
    await ctx.close();
  }
});
