// Preference fine-tuning (DPO, issue 11) from the console: a short SFT run on the demo model
// (through the API: it is only the starting point), then the wizard makes a DPO task from that
// fine-tuned model — the objective and beta chosen, a broken preference file reported by line, a
// chat file refused for DPO — and the task page shows the reward charts and each checkpoint's
// answer beside the preferred and the non-preferred one. Then the task's checkpoints and model
// are deleted from the page, after a confirmation. Screenshots: test-output/console/dpo-*.png.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { BASE, DESKTOP, FIXTURES, KEY, PHONE, apiCall, assertNoHorizontalScroll, close, createJob, launch, openPage, shot, stepper, uploadFixture, waitForJob } from "./lib.mjs";

/** The SFT run the DPO task starts from. */
let sft = null;

before(async () => {
  await launch();
  const file = await uploadFixture("identity.jsonl");
  const id = await createJob({ model: "demo", training_file: file.id, tuna: { name: "dpo-parent", max_steps: 3, max_seq_len: 64, sample_max_tokens: 4 } });
  sft = await waitForJob(id, "succeeded");
});

after(close);

test("DPO from the console: objective, beta, preference checks, reward charts, three-answer samples, delete", async (t) => {
  const { ctx, page, problems } = await openPage(DESKTOP, { key: KEY, expect: [/status of 404/] });
  const step = stepper(t);
  let jobId = null;
  try {
    await step("step 1: the objective, a fine-tuned model as the base, preference files checked by line", async () => {
      await page.goto(`${BASE}/#/new`);
      await page.locator("#base-model").waitFor();
      await page.fill("#task-name", "identity-dpo");
      await page.check('input[name="objective"][value="dpo"]');
      assert.match(await page.locator("#dataset-format").innerText(), /preferred_output/);
      // The SFT model is offered among "your fine-tuned models".
      await page.selectOption("#base-model", sft.fine_tuned_model);
      assert.match(await page.locator("#model-card").innerText(), new RegExp(sft.id));
      // A broken preference file: its errors by line, with their codes.
      await page.setInputFiles("#training-file", path.join(FIXTURES, "bad-pref.jsonl"));
      await page.locator('#training-check [data-check="failed"]').waitFor();
      assert.equal(await page.locator('#training-check .issue[data-line="1"]').getAttribute("data-code"), "identical_outputs");
      assert.equal(await page.locator('#training-check .issue[data-line="2"]').getAttribute("data-code"), "invalid_output");
      assert.equal(await page.locator('#training-check .issue[data-line="3"]').count(), 0);
      await page.locator("#training-check").scrollIntoViewIfNeeded();
      await shot(page, "dpo-bad-file", false);
      // Conversations are no preference pairs: DPO cannot start from them.
      await page.setInputFiles("#training-file", path.join(FIXTURES, "identity.jsonl"));
      await page.locator('#training-check [data-check="ok"]').waitFor();
      assert.match(await page.locator("#step1-hint").innerText(), /needs preference pairs/);
      assert.equal(await page.locator("#next-1").isDisabled(), true);
      await page.setInputFiles("#training-file", path.join(FIXTURES, "identity-pref-8.jsonl"));
      await page.locator('#training-check [data-check="ok"]').waitFor();
      assert.match(await page.locator("#training-check .alert-ok").innerText(), /8 preference pairs ready/);
      assert.match(await page.locator('#training-check dl.kv[data-format="preference"]').innerText(), /Preferred answer tokens/);
      await shot(page, "dpo-step1");
      await page.click("#next-1");
    });

    await step("step 2: beta among the parameters, with the server's default; step 3 names the objective", async () => {
      await page.locator("#p-beta").waitFor();
      assert.match(await page.locator('.field[data-param="beta"] .default').innerText(), /auto \(0\.1\)/);
      // Token-level SFT fields stay; beta's limit (0, 2] is the server's.
      await page.fill("#p-beta", "0");
      await page.click("#next-2");
      await page.waitForFunction(() => document.querySelector("#p-beta-error")?.textContent.includes("More than 0"));
      await page.fill("#p-beta", "0.2");
      await page.fill("#p-max_steps", "4");
      await page.fill("#p-checkpoint_interval", "2");
      await page.fill("#p-max_seq_len", "64");
      await page.fill("#p-sample_max_tokens", "8");
      await page.click("#next-2");
      await page.locator("#estimate").waitFor();
      assert.equal(await page.locator("#summary-objective").innerText(), "Preference (DPO)");
      await page.click("#start-task");
      await page.waitForURL(/#\/tasks\/ftjob-/);
      jobId = decodeURIComponent(page.url().split("#/tasks/")[1]);
      const job = (await apiCall("GET", `/v1/fine_tuning/jobs/${jobId}`)).json;
      assert.equal(job.method.type, "dpo");
      assert.equal(job.method.dpo.hyperparameters.beta, 0.2);
      assert.equal(job.model, sft.fine_tuned_model);
    });

    await step("the task page: reward charts and each sample beside both answers of its pair", async () => {
      await page.locator('#task-status [data-status="succeeded"]').waitFor({ timeout: 180_000 });
      for (const chart of ["Rewards", "Reward margin", "Reward accuracy", "Log-probabilities"])
        await page.waitForFunction((c) => Number(document.querySelector(`[data-chart="${c}"]`)?.dataset.points) >= 4, chart);
      // Two series each: preferred and non-preferred, 4 steps each.
      assert.equal(await page.locator('[data-chart="Rewards"]').getAttribute("data-points"), "8");
      assert.equal(await page.locator('[data-chart="Log-probabilities"]').getAttribute("data-points"), "8");
      assert.equal(await page.locator('[data-chart="Token accuracy"]').count(), 0);
      const ckpts = (await apiCall("GET", `/v1/fine_tuning/jobs/${jobId}/checkpoints`)).json.data;
      assert.equal(ckpts.length, 2);
      for (const c of ckpts) {
        const s = c.tuna.samples[0];
        assert.equal(typeof s.non_preferred, "string");
        const card = page.locator(`#checkpoints .ckpt[data-step="${c.step_number}"]`);
        assert.equal((await card.locator(".sample-reference").innerText()).replace(/^Preferred answer\s*/i, ""), s.reference.trim());
        assert.equal((await card.locator(".sample-rejected").innerText()).replace(/^Non-preferred answer\s*/i, ""), s.non_preferred.trim());
        assert.match(await card.locator(".sample-generated .label").innerText(), /Model output/i);
      }
      await shot(page, "dpo-task");
      assert.deepEqual(problems, []);
    });

    await step("phone width, in Chinese: the charts and the three answers stack", async () => {
      const phone = await openPage(PHONE, { key: KEY, lang: "zh" });
      try {
        await phone.page.goto(`${BASE}/#/tasks/${jobId}`);
        await phone.page.waitForFunction(() => Number(document.querySelector('[data-chart="Rewards"]')?.dataset.points) >= 4);
        await phone.page.locator(".sample-rejected").first().waitFor();
        assert.equal(await phone.page.locator('[data-chart="Rewards"] .chart-title').innerText(), "奖励");
        assert.match(await phone.page.locator(".sample-rejected .label").first().innerText(), /非偏好回答/);
        assert.match(await phone.page.locator("#settings").innerText(), /偏好训练（DPO），beta 0.2/);
        await assertNoHorizontalScroll(phone.page, "DPO task page");
        await shot(phone.page, "dpo-task-phone");
        assert.deepEqual(phone.problems, []);
      } finally {
        await phone.ctx.close();
      }
    });

    await step("delete the task's checkpoints and model, after a confirmation", async () => {
      const messages = [];
      let answer = false;
      page.on("dialog", (d) => {
        messages.push(d.message());
        answer ? d.accept() : d.dismiss();
      });
      const job = (await apiCall("GET", `/v1/fine_tuning/jobs/${jobId}`)).json;
      await page.click("#delete-artifacts");
      assert.match(messages[0], new RegExp(`${job.fine_tuned_model.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}[\\s\\S]*2 checkpoints`));
      // Declined: nothing goes.
      assert.equal((await apiCall("GET", `/v1/models/${encodeURIComponent(job.fine_tuned_model)}`)).status, 200);
      answer = true;
      await page.click("#delete-artifacts");
      await page.locator("#checkpoints .empty").waitFor();
      assert.equal(await page.locator("#artifacts").isHidden(), true);
      assert.equal((await apiCall("GET", `/v1/models/${encodeURIComponent(job.fine_tuned_model)}`)).status, 404);
      assert.equal((await apiCall("GET", `/v1/fine_tuning/jobs/${jobId}/checkpoints`)).json.data.length, 0);
      await page.locator("#events li", { hasText: /checkpoints deleted/ }).waitFor();
      // The task, its metrics and charts stay.
      assert.equal(await page.locator('[data-chart="Rewards"]').getAttribute("data-points"), "8");
      await shot(page, "dpo-deleted", false);
      assert.deepEqual(problems, []);
    });
  } finally {
    await ctx.close();
  }
});
