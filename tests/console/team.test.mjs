// What a team expects of the console beyond one task (issue 12): the task list filtered by status
// and searched by name, a task cloned with its settings, a cancelled one retried, live updates from
// the event stream, a CSV upload named once (defect 8), and the files page (list, first lines,
// check report, delete). Screenshots: test-output/console/team-*.png.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import {
  BASE,
  DESKTOP,
  FIXTURES,
  KEY,
  WIDTHS,
  apiCall,
  assertNoHorizontalScroll,
  close,
  createJob,
  launch,
  openPage,
  shot,
  uploadFixture,
  waitForJob,
} from "./lib.mjs";

/** A finished job and a cancelled one, with distinct names. */
let done = null;
let cancelled = null;

before(async () => {
  await launch();
  const file = await uploadFixture("identity.jsonl");
  const small = { max_seq_len: 64, sample_max_tokens: 8 };
  const doneId = await createJob({ model: "demo", training_file: file.id, seed: 11, tuna: { name: "team-finished", max_steps: 2, lora: { rank: 8 }, ...small } });
  done = await waitForJob(doneId, "succeeded");
  const cancelId = await createJob({ model: "demo", training_file: file.id, tuna: { name: "team-stopped", max_steps: 100000, ...small } });
  const c = await apiCall("POST", `/v1/fine_tuning/jobs/${cancelId}/cancel`);
  assert.equal(c.status, 200, JSON.stringify(c.json));
  cancelled = await waitForJob(cancelId, "cancelled");
});

after(close);

/** Confirms every dialog, remembering its message. */
function acceptDialogs(page) {
  const seen = [];
  page.on("dialog", (d) => {
    seen.push(d.message());
    d.accept();
  });
  return seen;
}

describe("task management and files", { concurrency: false }, () => {
  test("the task list filters by status and searches by name", async () => {
    const { ctx, page, problems } = await openPage(DESKTOP, { key: KEY });
    try {
      await page.goto(`${BASE}/#/`);
      await page.locator(`#tasks tr[data-job="${cancelled.id}"]`).waitFor();
      const ids = () => page.locator("#tasks tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.job));
      await page.selectOption("#task-filter", "cancelled");
      await page.waitForFunction(() => [...document.querySelectorAll("#tasks tbody tr [data-status]")].every((b) => b.dataset.status === "cancelled"));
      assert.ok((await ids()).includes(cancelled.id));
      assert.ok(!(await ids()).includes(done.id));
      await page.selectOption("#task-filter", "all");
      await page.fill("#task-search", "team-fini");
      await page.waitForFunction(() => document.querySelectorAll("#tasks tbody tr").length >= 1 && [...document.querySelectorAll("#tasks tbody tr .task-name")].every((a) => /team-fini/.test(a.textContent)));
      assert.deepEqual(await ids(), [done.id]);
      await shot(page, "team-01-search");
      // Nothing matches: the page says so and offers to show everything.
      await page.fill("#task-search", "no-such-task-anywhere");
      await page.locator("#tasks-none").waitFor();
      await page.click("#clear-filter");
      await page.locator(`#tasks tr[data-job="${done.id}"]`).waitFor();
      assert.equal(await page.inputValue("#task-search"), "");
      // The filter stays while the console is open: a task page and back keep it.
      await page.selectOption("#task-filter", "succeeded");
      await page.click(`#tasks tr[data-job="${done.id}"] a.task-name`);
      await page.locator("#task-title").waitFor();
      await page.goBack();
      await page.locator(`#tasks tr[data-job="${done.id}"]`).waitFor();
      assert.equal(await page.inputValue("#task-filter"), "succeeded");
      assert.deepEqual(problems, []);
    } finally {
      await ctx.close();
    }
  });

  test("clone: a new task with the same settings and data, named as a copy", async () => {
    const { ctx, page, problems } = await openPage(DESKTOP, { key: KEY });
    acceptDialogs(page);
    try {
      await page.goto(`${BASE}/#/tasks/${done.id}`);
      await page.click("#clone");
      await page.waitForURL(/#\/new\/1$/);
      await page.locator('#training-check [data-check="ok"]').waitFor();
      assert.equal(await page.inputValue("#task-name"), "team-finished (copy)");
      assert.equal(await page.inputValue("#base-model"), "demo");
      await page.click("#next-1");
      await page.locator("#p-max_steps").waitFor();
      // The settings the job ran with, as the server recorded them.
      assert.equal(await page.inputValue("#p-max_steps"), "2");
      assert.equal(await page.inputValue("#p-lora_rank"), "8");
      assert.equal(await page.inputValue("#p-max_seq_len"), "64");
      assert.equal(await page.inputValue("#p-seed"), "11");
      assert.equal(Number(await page.inputValue("#p-learning_rate")), done.tuna.learning_rate);
      await shot(page, "team-02-clone-parameters");
      await page.evaluate(() => localStorage.removeItem("tuna.draft"));
      assert.deepEqual(problems, []);
    } finally {
      await ctx.close();
    }
  });

  test("retry: a cancelled task starts again from its last step, under its name", async () => {
    const { ctx, page, problems } = await openPage(DESKTOP, { key: KEY });
    acceptDialogs(page);
    try {
      await page.goto(`${BASE}/#/tasks/${cancelled.id}`);
      await page.locator("#retry").waitFor();
      // A finished task offers no retry, only a clone.
      await page.click("#retry");
      await page.waitForURL(/#\/new\/3$/);
      await page.locator("#estimate").waitFor();
      assert.match(await page.locator(".summary-list").innerText(), /team-stopped/);
      await page.click("#start-task");
      await page.waitForURL(/#\/tasks\/ftjob-/);
      const id = decodeURIComponent(page.url().split("#/tasks/")[1]);
      assert.notEqual(id, cancelled.id);
      const job = (await apiCall("GET", `/v1/fine_tuning/jobs/${id}`)).json;
      assert.equal(job.tuna.name, "team-stopped");
      assert.equal(job.tuna.max_steps, 100000);
      assert.equal(job.training_file, cancelled.training_file);
      await apiCall("POST", `/v1/fine_tuning/jobs/${id}/cancel`);
      await waitForJob(id, "cancelled");
      await page.goto(`${BASE}/#/tasks/${done.id}`);
      await page.locator("#clone").waitFor();
      assert.equal(await page.locator("#retry").count(), 0);
      assert.deepEqual(problems, []);
    } finally {
      await ctx.close();
    }
  });

  test("live: a running task's page follows its event stream; only the job itself is polled", async () => {
    const id = await createJob({
      model: "demo",
      training_file: done.training_file,
      tuna: { name: "team-live", max_steps: 240, checkpoint_interval: 80, max_seq_len: 64, sample_max_tokens: 4 },
    });
    const { ctx, page, problems } = await openPage(DESKTOP, { key: KEY });
    const seen = [];
    page.on("request", (r) => {
      const u = new URL(r.url());
      if (u.pathname.startsWith(`/v1/fine_tuning/jobs/${id}/`)) seen.push(u.pathname.slice(`/v1/fine_tuning/jobs/${id}`.length) + u.search);
    });
    try {
      await page.goto(`${BASE}/#/tasks/${id}`);
      // Checkpoints appear as the stream announces them, while the job still runs.
      await page.locator("#checkpoints .ckpt").first().waitFor({ timeout: 120_000 });
      const running = (await apiCall("GET", `/v1/fine_tuning/jobs/${id}`)).json.status;
      await page.locator('#task-status [data-status="succeeded"]').waitFor({ timeout: 120_000 });
      await page.locator('#checkpoints .ckpt').nth(2).waitFor();
      assert.ok(seen.some((p) => p === "/events?stream=true"), `no event stream: ${seen.join(" ")}`);
      const polls = (what) => seen.filter((p) => p.startsWith(what)).length;
      // Metrics load when the stream's per-step events say so (once a second at most);
      // checkpoints and the event list at the start, once per burst of other events (started,
      // 3 checkpoints, finished) and at the end — not every 1.5 s as before.
      const metrics = polls("/metrics");
      assert.ok(metrics >= 3, `metrics loaded ${metrics} times: ${seen.join(" ")}`);
      // (Not compared with the metrics count: a job that finishes in a few seconds loads its
      // metrics only a few times, which is not a poll.)
      // Incremental: once the page holds rows, each read asks only for the steps after the last
      // one held (less one: its validation row may come later). The charts end with every row
      // once, neither gaps nor repeats.
      const reads = seen.filter((p) => p.startsWith("/metrics"));
      const firstIncremental = reads.findIndex((p) => /[?&]after=\d+/.test(p));
      assert.ok(firstIncremental > 0, `no incremental read: ${reads.join(" ")}`);
      assert.ok(reads.slice(firstIncremental).every((p) => /[?&]after=\d+/.test(p)), `a later read fetched every row again: ${reads.join(" ")}`);
      const rows = (await apiCall("GET", `/v1/fine_tuning/jobs/${id}/metrics?limit=10000`)).json.data;
      const losses = rows.filter((r) => Number.isFinite(r.loss)).length;
      await page.waitForFunction((n) => Number(document.querySelector('[data-chart="Loss"]')?.dataset.points) === n, losses);
      assert.equal(await page.locator('[data-chart="Learning rate"]').getAttribute("data-points"), String(rows.filter((r) => r.type === "train").length));
      assert.ok(polls("/checkpoints") <= 10, `checkpoints loaded ${polls("/checkpoints")} times, metrics ${metrics}: ${seen.join(" ")}`);
      assert.ok(polls("/events?limit") <= 10, `events loaded ${polls("/events?limit")} times: ${seen.join(" ")}`);
      // The first checkpoint was on the page before the job finished.
      assert.equal(running, "running");
      await shot(page, "team-04-live");
      assert.deepEqual(problems, []);
    } finally {
      await ctx.close();
    }
  });

  test("8: a CSV file is named once, with what was expected", async () => {
    const { ctx, page, problems } = await openPage(DESKTOP, { key: KEY });
    try {
      await page.goto(`${BASE}/#/new`);
      await page.locator("#training-file").waitFor();
      await page.setInputFiles("#training-file", path.join(FIXTURES, "export.csv"));
      await page.locator('#training-check [data-check="failed"]').waitFor();
      const issues = await page.locator("#training-check .issue").evaluateAll((els) => els.map((e) => [e.dataset.code, e.innerText]));
      assert.equal(issues.length, 1, JSON.stringify(issues));
      assert.equal(issues[0][0], "not_jsonl");
      assert.match(issues[0][1], /CSV/);
      assert.match(issues[0][1], /"messages"/);
      await shot(page, "team-05-csv");
      await page.evaluate(() => localStorage.removeItem("tuna.draft"));
      assert.deepEqual(problems, []);
    } finally {
      await ctx.close();
    }
  });

  for (const [label, viewport] of WIDTHS) {
    test(`files page (${label}): list, first lines, check report, delete`, async () => {
      const bad = await uploadFixture("bad.jsonl");
      const { ctx, page, problems } = await openPage(viewport, { key: KEY });
      const dialogs = acceptDialogs(page);
      try {
        await page.goto(`${BASE}/#/files`);
        await page.locator(`#files tr[data-file="${bad.id}"]`).waitFor();
        assert.equal(await page.locator(`#files tr[data-file="${bad.id}"] [data-check]`).getAttribute("data-check"), "failed");
        assert.equal(await page.locator(`#files tr[data-file="${done.training_file}"] [data-check]`).getAttribute("data-check"), "ok");
        await page.click(`#files tr[data-file="${bad.id}"]`);
        await page.locator("#file-preview").waitFor();
        // The first lines as uploaded, and the check's errors with their line numbers.
        const preview = await page.locator("#file-preview").innerText();
        assert.match(preview, /"messages"/);
        const lines = await page.locator('#file-detail .issue[data-line]').evaluateAll((els) => els.map((e) => Number(e.dataset.line)));
        assert.deepEqual(lines, [2, 3, 4, 5]);
        await assertNoHorizontalScroll(page, "files page");
        await shot(page, `team-03-files-${label}`);
        await page.click("#delete-file");
        await page.locator(`#files tr[data-file="${bad.id}"]`).waitFor({ state: "detached" });
        assert.match(dialogs[0], /Delete “bad.jsonl”/);
        assert.equal((await apiCall("GET", `/v1/files/${bad.id}`)).status, 404);
        assert.deepEqual(problems, []);
      } finally {
        await ctx.close();
      }
    });
  }
});
