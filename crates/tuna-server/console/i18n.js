// The console's two languages. Every visible string goes through `t(english, vars)`: the English
// text is the key, `ZH` holds its Chinese translation. The choice is remembered per browser
// (localStorage); without one, the browser's own language decides. Placeholders are `{name}`.

import { ZH } from "./zh.js";

const LANG_STORAGE = "tuna.lang";
export const LANGUAGES = [
  { code: "en", label: "English" },
  { code: "zh", label: "中文" },
];

let current = null;

/** "en" or "zh". */
export function lang() {
  if (current) return current;
  let stored = null;
  try {
    stored = localStorage.getItem(LANG_STORAGE);
  } catch {
    /* storage disabled: fall back to the browser's language */
  }
  if (stored === "en" || stored === "zh") current = stored;
  else current = (navigator.language || "").toLowerCase().startsWith("zh") ? "zh" : "en";
  return current;
}

export function setLang(code) {
  current = code === "zh" ? "zh" : "en";
  try {
    localStorage.setItem(LANG_STORAGE, current);
  } catch {
    /* the choice then lasts until the page is closed */
  }
  applyDocumentLang();
}

/** Sets `<html lang>` so that the browser picks CJK fonts and screen readers the right voice. */
export function applyDocumentLang() {
  document.documentElement.lang = lang() === "zh" ? "zh-CN" : "en";
}

/** The text in the current language, with `{name}` replaced by `vars.name`. */
export function t(english, vars) {
  let s = lang() === "zh" && Object.hasOwn(ZH, english) ? ZH[english] : english;
  if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (Object.hasOwn(vars, k) ? String(vars[k]) : m));
  return s;
}

/** `t` of the singular or plural form: `plural(n, "{n} step", "{n} steps")`. */
export function plural(n, one, many, vars = {}) {
  return t(n === 1 ? one : many, { n: typeof n === "number" ? n.toLocaleString() : n, ...vars });
}
