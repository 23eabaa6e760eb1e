// The wizard's compute step (issues 12 and 14): the choices come from the server's estimate
// (`compute_choices`): the CPU slot and the GPU slot run.sh's server offers (lavapipe, offered
// because run.sh passes --software-gpus), each with its devices, free slots, queue and estimate —
// the GPU's says no speed was measured yet instead of guessing. The user picks the GPU, the task
// is created with `tuna.compute: "gpu"`, and the task page shows the compute choice and, once
// training started, the device it ran on (gpu:0, llvmpipe). The task is then cancelled: lavapipe
// is far slower than the CPU. At desktop and phone widths; screenshots test-output/console/compute-*.png.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { BASE, FIXTURES, KEY, WIDTHS, apiCall, assertNoHorizontalScroll, close, launch, openPage, shot, stepper } from "./lib.mjs";

before(launch);
after(close);

for (const [label, viewport] of WIDTHS) {
  test(`compute step (${label}): choices with slots and estimates, a GPU task records its device`, async (t) => {
    const { ctx, page, problems } = await openPage(viewport, { key: KEY });
    const step = stepper(t);
    let jobId = null;
    try {
      await step("steps 1 and 2", async () => {
        await page.goto(`${BASE}/#/new`);
        await page.waitForURL(/#\/new\/1$/);
        await page.locator("#base-model").waitFor();
        await page.fill("#task-name", `compute-${label}`);
        await page.setInputFiles("#training-file", path.join(FIXTURES, "identity.jsonl"));
        await page.locator('#training-check [data-check="ok"]').waitFor();
        await page.click("#next-1");
        await page.locator("#p-max_steps").waitFor();
        await page.fill("#p-max_steps", "1");
        await page.fill("#p-max_seq_len", "32");
        await page.click("#next-2");
        await page.waitForURL(/#\/new\/3$/);
      });

      await step("step 3 lists the server's choices; CPU is chosen by default", async () => {
        await page.locator("#compute-choices").waitFor();
        const cpu = page.locator('.compute-choice[data-compute="cpu"]');
        const gpu = page.locator('.compute-choice[data-compute="gpu"]');
        assert.equal(await cpu.locator("input").isChecked(), true);
        assert.match(await cpu.innerText(), /cpu:0 on /);
        assert.match(await cpu.innerText(), /\d+ of \d+ free/);
        // What the server says about the GPU, shown as it is.
        const est = await apiCall("POST", "/v1/tuna/estimates", {
          model: "demo",
          training_file: (await apiCall("GET", "/v1/files?limit=1")).json.data[0].id,
          tuna: { compute: "gpu", max_steps: 1, max_seq_len: 32 },
        });
        assert.equal(est.status, 200, JSON.stringify(est.json));
        const g = est.json.compute_choices.find((c) => c.compute === "gpu");
        assert.equal(g.slots_total, 1, JSON.stringify(g));
        const text = await gpu.innerText();
        assert.match(text, /gpu:0 on .*llvmpipe/);
        if (g.estimate.duration_seconds === null) assert.match(text, /no speed measured on this device yet/);
        assert.equal(await gpu.locator("input").isDisabled(), false);
        await assertNoHorizontalScroll(page, "compute step");
        await shot(page, `compute-${label}-choices`);
      });

      await step("choosing the GPU asks again and starts a GPU task", async () => {
        const estimates = [];
        page.on("request", (r) => {
          if (r.url().endsWith("/v1/tuna/estimates")) estimates.push(JSON.parse(r.postData() || "{}"));
        });
        await page.locator('.compute-choice[data-compute="gpu"]').click();
        await page.locator('.compute-choice.selected[data-compute="gpu"]').waitFor();
        assert.equal(estimates.at(-1)?.tuna?.compute, "gpu", "the estimate is asked for the GPU");
        await shot(page, `compute-${label}-gpu-chosen`);
        const created = page.waitForResponse((r) => r.url().endsWith("/v1/fine_tuning/jobs") && r.request().method() === "POST");
        await page.click("#start-task");
        const resp = await created;
        const job = await resp.json();
        assert.equal(job.tuna.compute, "gpu", JSON.stringify(job));
        jobId = job.id;
        await page.waitForURL(new RegExp(`#/tasks/${jobId}`));
      });

      await step("the task page shows the choice, then the device that trains it", async () => {
        const details = page.locator("dl", { hasText: "Compute" }).first();
        await details.waitFor();
        assert.match(await details.innerText(), /Compute\s+GPU/);
        // The worker opens lavapipe, then reports it ("Training started on gpu:0 (llvmpipe …").
        await page.waitForFunction(() => /gpu:0 · llvmpipe/.test(document.body.innerText), null, { timeout: 180_000 });
        const job = (await apiCall("GET", `/v1/fine_tuning/jobs/${jobId}`)).json;
        assert.equal(job.tuna.ran_on.device, "gpu:0", JSON.stringify(job.tuna));
        assert.equal(job.tuna.ran_on.software, true);
        await assertNoHorizontalScroll(page, "task page");
        await shot(page, `compute-${label}-task`);
      });
    } finally {
      if (jobId) await apiCall("POST", `/v1/fine_tuning/jobs/${jobId}/cancel`);
      await ctx.close();
    }
    assert.deepEqual(problems, []);
  });
}
