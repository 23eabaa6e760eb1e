// Hash routes (#/, #/new/2, #/tasks/<id>) so the server only serves `/`, and the lifecycle of a
// page: what it registers with `onLeave` (timers, charts, streams) runs when the next one renders.

/** Disposers of the current page; run on navigation. */
let disposers = [];

export function onLeave(fn) {
  disposers.push(fn);
}

export function leavePage() {
  for (const fn of disposers.splice(0)) {
    try {
      fn();
    } catch {
      /* a disposer must not stop navigation */
    }
  }
}

/**
 * The page the address names: `{page: "tasks" | "new" | "task" | "files" | "not-found", ...}`. The wizard's
 * step is part of the address (`#/new/2`), so Back, Forward and reload land on the same step.
 */
export function currentRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  if (parts.length === 0 || (parts.length === 1 && parts[0] === "tasks")) return { page: "tasks" };
  if (parts[0] === "new" && parts.length === 1) return { page: "new", step: null };
  if (parts[0] === "new" && parts.length === 2 && /^[123]$/.test(parts[1])) return { page: "new", step: Number(parts[1]) };
  if (parts[0] === "tasks" && parts.length === 2) return { page: "task", id: parts[1] };
  if (parts[0] === "files" && parts.length === 1) return { page: "files" };
  return { page: "not-found", address: `#/${hash}` };
}

let renderer = () => {};

/** The function that draws the current route (app.js's). */
export function setRenderer(fn) {
  renderer = fn;
}

/** Goes to `hash`, adding a history entry; draws again when the address is already `hash`. */
export function navigate(hash) {
  if (location.hash === hash) renderer();
  else location.hash = hash;
}

/** Replaces the current address without a new history entry, and draws it. */
export function redirect(hash) {
  history.replaceState(history.state, "", hash);
  renderer();
}
