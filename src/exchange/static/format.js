// Shared by the pages: bilingual labels, exact decimal formatting, DOM and REST helpers.
// Amounts arrive as decimal strings; they are shown as they are (with digit grouping), never
// through floating point, so what the page shows is what the API said.

export const $ = (selector, root = document) => root.querySelector(selector);

/** A new element: `attrs` may hold className, text, dataset and plain attributes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "className") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

/** Chinese and English side by side: <span class="zh">…</span><span class="en">…</span>. */
export function bilingual(zh, en) {
  const frag = document.createDocumentFragment();
  frag.append(el("span", { className: "zh", lang: "zh-CN", text: zh }), el("span", { className: "en", lang: "en", text: en }));
  return frag;
}

export function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

/** "1234567.50" -> "1,234,567.50"; exact (string based); null/undefined -> "—"; not a number: as it is. */
export function group(decimal) {
  if (decimal === null || decimal === undefined || decimal === "") return "—";
  const text = String(decimal);
  if (!/^-?\d+(\.\d+)?$/.test(text)) return text; // a date, a word: as it is
  const negative = text.startsWith("-");
  const [whole, frac] = (negative ? text.slice(1) : text).split(".");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return (negative ? "-" : "") + grouped + (frac !== undefined ? "." + frac : "");
}

/** Show a decimal string in `node`, keeping the exact value in data-value. */
export function setValue(node, decimal) {
  if (!node) return;
  const value = decimal === null || decimal === undefined ? "" : String(decimal);
  if (node.dataset.value !== value) node.dataset.value = value;
  setText(node, group(decimal));
}

/** Fill every [data-field] inside `root` from `obj` (decimal strings or plain values). */
export function fillFields(root, obj) {
  for (const node of root.querySelectorAll("[data-field]")) {
    const name = node.dataset.field;
    if (name in obj) setValue(node, obj[name]);
  }
}

export function clockTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString("zh-CN", { hour12: false });
}

export function dateTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleDateString("sv-SE") + " " + d.toLocaleTimeString("zh-CN", { hour12: false });
}

export const SIDES = { buy: ["买", "Buy"], sell: ["卖", "Sell"] };
export const STATUSES = {
  new: ["挂单中", "Open"],
  partially_filled: ["部分成交", "Partly filled"],
  filled: ["已成交", "Filled"],
  canceled: ["已撤销", "Canceled"],
  expired: ["已过期", "Expired"],
};
export const FORMULAS = {
  genesis: ["创世价", "Genesis price"],
  backing: ["托底金 ÷ 流通量", "Reserve ÷ circulating"],
  vwap: ["成交均价", "Day's VWAP"],
};

export function labelOf(table, key) {
  const pair = table[key];
  return pair ? `${pair[0]} ${pair[1]}` : String(key ?? "—");
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** GET a JSON route of this origin; `key` adds the bearer header (the account page). */
export async function getJSON(path, key = null) {
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const err = body && body.error ? body.error : { code: "http_" + response.status, message: response.statusText };
    throw new ApiError(response.status, err.code, err.message);
  }
  return body;
}

/** a × b for decimal strings, exactly, cut (not rounded) to `places` decimals. */
export function mulDecimal(a, b, places) {
  const parse = (text) => {
    const [whole, frac = ""] = String(text).split(".");
    return [BigInt(whole + frac), frac.length];
  };
  const [x, sx] = parse(a);
  const [y, sy] = parse(b);
  const scale = sx + sy;
  let product = x * y;
  if (scale > places) product /= 10n ** BigInt(scale - places);
  else product *= 10n ** BigInt(places - scale);
  const negative = product < 0n;
  const digits = (negative ? -product : product).toString().padStart(places + 1, "0");
  const text = places ? digits.slice(0, -places) + "." + digits.slice(-places) : digits;
  return (negative ? "-" : "") + text;
}

/** Run `fn` at most once per `ms`; calls in between are folded into one trailing call. */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return () => {
    const wait = last + ms - performance.now();
    if (wait <= 0 && timer === null) {
      last = performance.now();
      fn();
    } else if (timer === null) {
      timer = setTimeout(() => {
        timer = null;
        last = performance.now();
        fn();
      }, Math.max(wait, 0));
    }
  };
}

const FEED_STATES = {
  live: ["实时", "Live"],
  connecting: ["连接中", "Connecting"],
  stale: ["数据过期", "Stale"],
  idle: ["未连接", "Not connected"],
};

/** The feed indicator: data-state live | connecting | stale, with the age of the last message. */
export function showFeedState(node, state, ageMs) {
  if (!node) return;
  if (node.dataset.state !== state) {
    node.dataset.state = state;
    document.body.dataset.feed = state; // the page dims what may be out of date
    const [zh, en] = FEED_STATES[state];
    setText(node.querySelector(".zh"), zh);
    setText(node.querySelector(".en"), en);
  }
  const age = node.querySelector(".age");
  setText(age, state === "stale" && ageMs !== null ? `${Math.floor(ageMs / 1000)} s` : "");
}

// One draw per animation frame however many updates arrive: `schedule()` asks for `render`.
export function frameScheduler(render) {
  let requested = false;
  const run = (time) => {
    requested = false;
    render(time);
  };
  return () => {
    if (requested) return;
    requested = true;
    requestAnimationFrame(run);
  };
}
