// What the pages say about a job: its name, method, progress and duration, from the API's job
// object (Tuna's extras are under `tuna`, see docs/api.md).

import { t } from "./i18n.js";

export const ACTIVE = new Set(["validating_files", "queued", "running", "paused"]);
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function jobName(j) {
  return (j.tuna && j.tuna.name) || j.user_provided_suffix || j.id;
}

export function jobMethod(j) {
  const m = (j.tuna && j.tuna.method) || "lora";
  const weights = m === "full" ? t("Full") : "LoRA";
  // A preference run says so: the same weights, another objective.
  return j.method && j.method.type === "dpo" ? `${weights} · DPO` : weights;
}

/**
 * Step, total and epochs. Until the trainer reports its own total (the first step), the total is
 * the estimate's, marked `estimated`: the trainer's count can differ (held-out validation
 * examples, over-long examples). A job with `max_steps` runs a fraction of an epoch or more than
 * `n_epochs`: its total in epochs follows from the steps, not from `n_epochs`.
 */
export function jobProgress(j) {
  const tu = j.tuna || {};
  const p = tu.progress || {};
  const step = p.step || 0;
  const est = tu.estimate || {};
  const total = p.total_steps || est.total_steps || 0;
  const estimated = step === 0 && !TERMINAL.has(j.status) && total > 0 && total === est.total_steps;
  let fraction = total ? step / total : 0;
  if (j.status === "succeeded") fraction = 1;
  const epoch = p.epoch || 0;
  let totalEpochs = p.total_epochs || j.hyperparameters?.n_epochs || null;
  if (tu.max_steps) totalEpochs = step > 0 && epoch > 0 && total ? (epoch * total) / step : null;
  return { step, total, estimated, fraction: Math.min(1, fraction), epoch, totalEpochs };
}

export function jobDuration(j) {
  if (j.tuna && Number.isFinite(j.tuna.elapsed_seconds) && j.tuna.elapsed_seconds > 0) return j.tuna.elapsed_seconds;
  if (j.finished_at && j.created_at) return j.finished_at - j.created_at;
  return null;
}

export function statusExtra(j) {
  if (j.status === "queued" && j.tuna && j.tuna.queue_position) return t("#{n} in queue", { n: j.tuna.queue_position });
  if (j.status === "running" && j.tuna && j.tuna.pause_requested) return t("pausing…");
  return null;
}

export function fmtCost(cost, currency) {
  if (!Number.isFinite(cost)) return "—";
  return `${cost.toFixed(cost > 0 && cost < 0.01 ? 4 : 2)} ${currency || ""}`.trim();
}
