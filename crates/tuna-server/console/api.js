// The console's only door to the server: Tuna's OpenAI-compatible API, called with the signed-in
// user's API key. Every failure becomes an ApiError whose message is the server's own
// (`{"error": {"message", ...}}`), so pages can show it as is.

const KEY_STORAGE = "tuna.apiKey";
const USER_STORAGE = "tuna.userName";

export class ApiError extends Error {
  constructor(message, { status = 0, type = null, code = null, param = null, errors = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
    // Every invalid field of a refused request, `[{param, message}]` (a job's settings).
    this.errors = Array.isArray(errors) ? errors : param ? [{ param, message }] : [];
  }
}

export function getKey() {
  try {
    return localStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

export function setKey(key) {
  localStorage.setItem(KEY_STORAGE, key);
}

export function clearKey() {
  localStorage.removeItem(KEY_STORAGE);
  localStorage.removeItem(USER_STORAGE);
}

/** The signed-in user's name, remembered for the sidebar. */
export function getUserName() {
  try {
    return localStorage.getItem(USER_STORAGE);
  } catch {
    return null;
  }
}

export function setUserName(name) {
  if (name) localStorage.setItem(USER_STORAGE, name);
}

/** Listeners told when the server answers 401 (the key was revoked or is wrong): the app signs out. */
const unauthorizedListeners = new Set();
export function onUnauthorized(fn) {
  unauthorizedListeners.add(fn);
}

function headers(extra = {}, key = getKey()) {
  const h = { ...extra };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

/** Turns a non-2xx response into an ApiError carrying the OpenAI error message. */
async function errorFrom(resp) {
  let body = null;
  const text = await resp.text().catch(() => "");
  try {
    body = JSON.parse(text);
  } catch {
    /* not JSON: a proxy page or plain text */
  }
  const e = body && body.error;
  const message =
    (e && typeof e.message === "string" && e.message) ||
    (typeof e === "string" && e) ||
    (text && text.length < 300 ? text.trim() : "") ||
    `${resp.status} ${resp.statusText || "error"}`;
  return new ApiError(message, {
    status: resp.status,
    type: e && e.type,
    code: e && e.code,
    param: e && e.param,
    errors: e && e.errors,
  });
}

async function send(path, { method = "GET", json, form, signal, key } = {}) {
  const init = { method, signal, headers: headers({}, key) };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Cannot reach the Tuna server. Check that `tuna serve` is running.", { status: 0 });
  }
  if (!resp.ok) {
    const e = await errorFrom(resp);
    if (resp.status === 401 && key === undefined) unauthorizedListeners.forEach((fn) => fn(e));
    throw e;
  }
  return resp;
}

/** JSON request → parsed JSON answer (null for an empty body). */
export async function request(path, opts = {}) {
  const resp = await send(path, opts);
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

/** A request answered with bytes (a download): the response, already checked. */
export function download(path, opts = {}) {
  return send(path, opts);
}

/**
 * POSTs `json` and yields each `data:` payload of the server-sent-event answer, parsed as JSON,
 * until `[DONE]`. An `{"error": ...}` event (a failure mid-stream) is thrown as an ApiError.
 */
export async function* streamEvents(path, json, { signal, method = "POST" } = {}) {
  const resp = await send(path, { method, json, signal });
  if (!resp.body) throw new ApiError("This browser cannot read streamed answers.");
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          // An empty line ends one event.
          if (data.length) {
            const payload = data.join("\n");
            data = [];
            if (payload === "[DONE]") return;
            let obj;
            try {
              obj = JSON.parse(payload);
            } catch {
              continue;
            }
            if (obj && obj.error) {
              const e = obj.error;
              throw new ApiError(e.message || String(e), { type: e.type, code: e.code, param: e.param });
            }
            yield obj;
          }
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }
        // `event:`, `id:` and `:` comment lines carry nothing the console needs.
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---- OpenAI routes -------------------------------------------------------------------------

export const listModels = () => request("/v1/models");
export const getModel = (id) => request(`/v1/models/${encodeURIComponent(id)}`);

/** Verifies a key without storing it; answers the key's user (`{id, name, ...}`). */
export const checkKey = (key) => request("/v1/tuna/me", { key });
export const me = () => request("/v1/tuna/me");
/** Device slots and queue length of the server (Tuna's extension). */
export const serverStatus = () => request("/v1/tuna/status");
export const listWorkers = () => request("/v1/tuna/workers");
/** Every setting of a job request: its limits, default and the methods it applies to. */
export const jobSettings = () => request("/v1/tuna/job_settings");
export const estimate = (body) => request("/v1/tuna/estimates", { method: "POST", json: body });
/**
 * The metrics rows of a job (the trainer's rows) after step `after` (all of them by default),
 * page after page; a page holds whole steps.
 */
export async function listMetrics(id, after = "") {
  const rows = [];
  after = after === null || after === undefined ? "" : String(after);
  for (;;) {
    const q = after ? `?limit=10000&after=${encodeURIComponent(after)}` : "?limit=10000";
    const page = await request(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/metrics${q}`);
    rows.push(...(page.data || []));
    if (!page.has_more || !page.last_id) return { object: "list", data: rows, has_more: false };
    after = page.last_id;
  }
}

export function uploadFile(file, purpose = "fine-tune") {
  const form = new FormData();
  form.append("purpose", purpose);
  form.append("file", file, file.name);
  return request("/v1/files", { method: "POST", form });
}

export const getFile = (id) => request(`/v1/files/${encodeURIComponent(id)}`);
export const deleteFile = (id) => request(`/v1/files/${encodeURIComponent(id)}`, { method: "DELETE" });
/** The user's files, newest first (one page of up to 1,000; the list trims each check report). */
export const listFiles = () => request("/v1/files?limit=1000");

/** The first `maxBytes` of a file's content as text (the rest is not downloaded). */
export async function fileHead(id, maxBytes = 16_384) {
  const resp = await send(`/v1/files/${encodeURIComponent(id)}/content`);
  const reader = resp.body.getReader();
  const parts = [];
  let size = 0;
  while (size < maxBytes) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    size += value.length;
  }
  await reader.cancel().catch(() => {});
  const bytes = new Uint8Array(Math.min(size, maxBytes));
  let at = 0;
  for (const p of parts) {
    const n = Math.min(p.length, bytes.length - at);
    bytes.set(p.subarray(0, n), at);
    at += n;
  }
  return { text: new TextDecoder("utf-8", { fatal: false }).decode(bytes), truncated: size >= maxBytes };
}

export const listJobs = (limit = 100, after = null) =>
  request(`/v1/fine_tuning/jobs?limit=${limit}${after ? `&after=${encodeURIComponent(after)}` : ""}`);

/** Every job of the user (pages of 100, newest first), up to `max`. */
export async function listAllJobs(max = 1000) {
  const all = [];
  let after = null;
  for (;;) {
    const page = await listJobs(100, after);
    all.push(...(page.data || []));
    if (!page.has_more || !page.data || !page.data.length || all.length >= max) return all;
    after = page.data[page.data.length - 1].id;
  }
}
export const createJob = (body) => request("/v1/fine_tuning/jobs", { method: "POST", json: body });
export const getJob = (id) => request(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`);
export const jobAction = (id, action) =>
  request(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/${action}`, { method: "POST" });
export const listEvents = (id, limit = 100) =>
  request(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?limit=${limit}`);
/** Deletes every checkpoint of a finished job and its fine-tuned model (the job stays listed). */
export const deleteJobArtifacts = (id) => request(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints`, { method: "DELETE" });
export const listCheckpoints = (id, limit = 100) =>
  request(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints?limit=${limit}`);

export const chatStream = (body, signal) =>
  streamEvents("/v1/chat/completions", { ...body, stream: true }, { signal });
