// The workers section of the task list (issue 10): every machine that trains, with its devices,
// whether it answers, its current task and its last heartbeat; another user's task on it is only
// counted, never named. English and 中文, desktop and phone. Screenshots:
// test-output/console/workers-*.png.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { BASE, DESKTOP, FIXTURES, KEY, KEY2, PHONE, apiCall, assertNoHorizontalScroll, close, launch, openPage, shot } from "./lib.mjs";

const long = { max_seq_len: 64, sample_max_tokens: 8, max_steps: 100000 };

async function upload(key) {
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", new Blob([fs.readFileSync(path.join(FIXTURES, "identity.jsonl"))]), "identity.jsonl");
  const resp = await fetch(`${BASE}/v1/files`, { method: "POST", headers: { Authorization: `Bearer ${key}` }, body: form });
  const file = await resp.json();
  assert.equal(resp.status, 200, JSON.stringify(file));
  return file.id;
}

/** A long job of `key`'s user, once a worker runs it. */
async function runningJob(key, name) {
  const created = await apiCall("POST", "/v1/fine_tuning/jobs", { model: "demo", training_file: await upload(key), tuna: { name, ...long } }, key);
  assert.equal(created.status, 200, JSON.stringify(created.json));
  const id = created.json.id;
  const end = Date.now() + 180_000;
  for (;;) {
    const j = await apiCall("GET", `/v1/fine_tuning/jobs/${id}`, null, key);
    if (j.json.status === "running") return id;
    assert.ok(Date.now() < end, `job ${id} is still ${j.json.status}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function cancel(id, key) {
  const c = await apiCall("POST", `/v1/fine_tuning/jobs/${id}/cancel`, {}, key);
  assert.equal(c.status, 200, JSON.stringify(c.json));
}

before(launch);
after(close);

test("the task list shows the workers, their tasks (others' only counted) and heartbeats", async () => {
  const { data: workers } = (await apiCall("GET", "/v1/tuna/workers")).json;
  assert.equal(workers.length, 1, JSON.stringify(workers));
  const name = workers[0].name;

  // Another user's task on the only worker: counted, not named.
  const theirs = await runningJob(KEY2, "someone-elses");
  const { ctx, page, problems } = await openPage(DESKTOP, { key: KEY });
  try {
    await page.goto(`${BASE}/#/`);
    const row = page.locator(`#workers tr[data-worker="${name}"]`);
    await row.waitFor();
    assert.match(await row.textContent(), /cpu:0/);
    assert.equal(await row.locator("[data-alive]").getAttribute("data-alive"), "true");
    assert.match(await row.locator(".worker-others").textContent(), /^1 task of other users$/);
    assert.equal(await row.locator("a.worker-job").count(), 0);
    assert.doesNotMatch(await page.locator("#workers").textContent(), new RegExp(`${theirs}|someone-elses`));
    assert.match(await row.textContent(), /\d+ s ago/);
    await cancel(theirs, KEY2);

    // One's own task: named, and a link to it.
    const mine = await runningJob(KEY, "my-running-task");
    await page.reload();
    const link = row.locator(`a.worker-job[data-job="${mine}"]`);
    await link.waitFor();
    assert.equal(await link.textContent(), "my-running-task");
    assert.equal(await row.locator(".worker-others").count(), 0);
    await shot(page, "workers-desktop");
    await link.click();
    await page.waitForURL(`**/#/tasks/${mine}`);

    // 中文, on a phone: the same rows, translated, without sideways scrolling.
    const phone = await openPage(PHONE, { key: KEY, lang: "zh" });
    try {
      await phone.page.goto(`${BASE}/#/`);
      const prow = phone.page.locator(`#workers tr[data-worker="${name}"]`);
      await prow.locator(`a.worker-job[data-job="${mine}"]`).waitFor();
      assert.match(await phone.page.locator("#workers .card-head h2").textContent(), /^训练节点$/);
      assert.match(await prow.textContent(), /在线/);
      assert.match(await prow.textContent(), /\d+ 秒前/);
      await assertNoHorizontalScroll(phone.page, "workers on a phone");
      await phone.page.locator("#workers").scrollIntoViewIfNeeded();
      await shot(phone.page, "workers-phone");
      assert.deepEqual(phone.problems, []);
    } finally {
      await phone.ctx.close();
    }
    await cancel(mine, KEY);
    assert.deepEqual(problems, []);
  } finally {
    await ctx.close();
  }
});
