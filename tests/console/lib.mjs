// Shared by the console's browser tests: the browser, pages that collect every console error,
// screenshots, and direct API calls (to set up jobs and to compare with what the page shows).
// run.sh starts the server and passes:
//   TUNA_URL        the server's base URL (http://127.0.0.1:PORT)
//   TUNA_API_KEY    the first user's key; TUNA_API_KEY_2 a second user's (isolation check)
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
//   TUNA_TEST_OUT   where screenshots go (default test-output/console at the repo root)

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, "../..");
export const BASE = process.env.TUNA_URL;
export const KEY = process.env.TUNA_API_KEY;
export const KEY2 = process.env.TUNA_API_KEY_2;
export const OUT = process.env.TUNA_TEST_OUT || path.join(repo, "test-output/console");
export const FIXTURES = path.join(here, "fixtures");
export const DESKTOP = { width: 1440, height: 900 };
export const PHONE = { width: 390, height: 844 };
/** The two widths a test that depends on the layout runs at: `[label, viewport]`. */
export const WIDTHS = [
  ["desktop", DESKTOP],
  ["phone", PHONE],
];

if (!BASE || !KEY) {
  throw new Error("TUNA_URL and TUNA_API_KEY must be set: run tests/console/run.sh, which starts the server");
}
fs.mkdirSync(OUT, { recursive: true });

let browser = null;

export async function launch() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // Root in a container has no user namespaces for Chromium's sandbox.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  return browser;
}

export async function close() {
  await browser?.close();
  browser = null;
}

/**
 * A fresh browser context and page, signed in with `key` when given. Every console error,
 * uncaught exception and Content-Security-Policy refusal is collected in `problems`; errors a
 * test provokes on purpose (a refused key logs "Failed to load resource: … 401") are named in
 * `expect`, as regular expressions, and left out.
 */
export async function openPage(viewport, { key, lang, expect = [], permissions = [] } = {}) {
  const ctx = await browser.newContext({ viewport, acceptDownloads: true, permissions, locale: "en-US" });
  if (key) await ctx.addInitScript((k) => localStorage.getItem("tuna.apiKey") || localStorage.setItem("tuna.apiKey", k), key);
  if (lang) await ctx.addInitScript((l) => localStorage.getItem("tuna.lang") || localStorage.setItem("tuna.lang", l), lang);
  const page = await ctx.newPage();
  page.setDefaultTimeout(20_000);
  const problems = [];
  page.on("pageerror", (e) => problems.push(`exception: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const text = m.text();
    if (!expect.some((re) => re.test(text))) problems.push(`console error: ${text}`);
  });
  return { ctx, page, problems };
}

export async function shot(page, name, fullPage = true) {
  // From the top: a page scrolled by the last click would show its sticky sidebar mid-way.
  if (fullPage) await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(OUT, `${name}.png`), fullPage });
}

/** Asserts the page does not scroll sideways (what breaks a layout on a phone). */
export async function assertNoHorizontalScroll(page, what) {
  const { scroll, client } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    client: document.documentElement.clientWidth,
  }));
  assert.ok(scroll <= client + 1, `${what}: the page is ${scroll}px wide in a ${client}px viewport`);
}

export async function apiCall(method, url, body, key = KEY) {
  const resp = await fetch(BASE + url, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await resp.json().catch(() => null);
  return { status: resp.status, json };
}

/** Uploads a fixture through the API; the file object. */
export async function uploadFixture(name) {
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", new Blob([fs.readFileSync(path.join(FIXTURES, name))]), name);
  const resp = await fetch(`${BASE}/v1/files`, { method: "POST", headers: { Authorization: `Bearer ${KEY}` }, body: form });
  const file = await resp.json();
  assert.equal(resp.status, 200, JSON.stringify(file));
  return file;
}

/** Creates a job through the API; its id. */
export async function createJob(body) {
  const created = await apiCall("POST", "/v1/fine_tuning/jobs", body);
  assert.equal(created.status, 200, JSON.stringify(created.json));
  return created.json.id;
}

/** Polls the job until it reaches `status` (or a terminal one, which fails unless it is `status`). */
export async function waitForJob(id, status = "succeeded", timeoutMs = 180_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const job = await apiCall("GET", `/v1/fine_tuning/jobs/${id}`);
    if (job.json.status === status) return job.json;
    if (["succeeded", "failed", "cancelled"].includes(job.json.status))
      assert.fail(`job ${id} ended ${job.json.status}, expected ${status}: ${JSON.stringify(job.json.error)}`);
    if (Date.now() > end) assert.fail(`job ${id} is still ${job.json.status} after ${timeoutMs / 1000}s`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/**
 * Runs a step of a flow whose steps depend on each other: after a failure the remaining steps
 * are skipped, not failed again.
 */
export function stepper(t) {
  let failed = null;
  return (name, fn) =>
    t.test(name, async (st) => {
      if (failed) return st.skip(`"${failed}" failed`);
      try {
        await fn();
      } catch (e) {
        failed = name;
        throw e;
      }
    });
}

/** The `/v1/chat/completions` request bodies the page sends, in order. */
export function recordChatRequests(page) {
  const bodies = [];
  page.on("request", (r) => {
    if (r.url().endsWith("/v1/chat/completions") && r.method() === "POST") bodies.push(JSON.parse(r.postData() || "{}"));
  });
  return bodies;
}
