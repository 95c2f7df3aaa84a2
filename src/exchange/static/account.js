// The read-only account page: after an API key is given (kept in sessionStorage only), the
// account's balances, open orders and fills, live.
//
// On every (re)connect: `login`, subscribe to orders, fills and balances, then read the state
// from REST (GET /v1/balances, /v1/orders?status=open, /v1/fills). Private channels resume by
// snapshot, so pushes that arrive while the REST reads are in flight are held and applied after
// them, in order: their values are absolute (remaining quantity, status, whole balances), so the
// last one applied is the freshest whatever the REST answer saw.

import { Feed } from "./feed.js";
import {
  frameScheduler,
  $, clockTime, el, getJSON, group, labelOf, mulDecimal, setText, setValue, showFeedState, SIDES, STATUSES,
} from "./format.js";

const STORAGE_KEY = "hb.apiKey";
const FILL_ROWS = 50;
const TERMINAL = new Set(["filled", "canceled", "expired"]);
const REFRESH_MS = 30000; // 嗨值 and P: nothing pushes them to an account

const acct = {
  accountId: null,
  balances: null, // [{asset, available, held, total}]
  orders: new Map(), // open orders by id
  fills: [], // newest first
  points: null,
  price: null,
};
let feed = null;
let session = 0; // bumps with each key: late answers for an older key are dropped
let held = null; // pushes waiting for the REST reads, or null when applying directly

function currentKey() {
  return sessionStorage.getItem(STORAGE_KEY);
}

function start(key) {
  stop();
  const mine = ++session;
  showError(null);
  // REST first: a wrong key gets a clear message instead of a socket that keeps failing.
  getJSON("/v1/balances", key).then(() => {
    if (mine !== session) return;
    $("#account-panel").hidden = false;
    $("#key-panel").classList.add("compact");
    feed = new Feed({
      onOpen: (f) => setUp(f, key, mine),
      onMessage: receive,
      onState: (state, age) => showFeedState($("#feed-status"), state, age),
    }).start();
    refreshPublic(key, mine);
  }).catch((err) => {
    if (mine !== session) return;
    if (err.status === 401 || err.status === 403) {
      forget();
      showError(err.status === 401 ? "密钥无效 · This API key is not valid."
        : "此密钥没有交易账户 · This key has no trading account (an operator's key?).");
    } else {
      showError(`暂时无法读取 · Could not read the account now (${err.code || err.message}); retrying…`);
      setTimeout(() => { if (mine === session) start(key); }, 3000);
    }
  });
}

function stop() {
  session += 1;
  if (feed) feed.stop();
  feed = null;
  held = null;
  Object.assign(acct, { accountId: null, balances: null, orders: new Map(), fills: [], points: null });
  showFeedState($("#feed-status"), "idle", null);
}

async function setUp(f, key, mine) {
  const connection = f.stats.connects; // a later connection starts over
  held = [];
  try {
    const who = await f.send("login", { api_key: key });
    acct.accountId = who.account_id;
    await f.send("subscribe", [{ channel: "orders" }, { channel: "fills" }, { channel: "balances" }]);
    const [balances, open, fills] = await Promise.all([
      getJSON("/v1/balances", key),
      getJSON("/v1/orders?status=open&limit=1000", key),
      getJSON(`/v1/fills?limit=${FILL_ROWS}`, key),
    ]);
    if (mine !== session || f !== feed || f.stats.connects !== connection) return;
    acct.balances = balances;
    acct.orders = new Map(open.items.map((o) => [o.order_id, o]));
    acct.fills = [];
    addFills(fills.items);
    const queued = held;
    held = null;
    for (const msg of queued) apply(msg, key);
    schedule();
  } catch (err) {
    if (err.code === "unauthenticated" || err.status === 401) {
      forget();
      showError("密钥已失效 · This API key is no longer valid.");
      return;
    }
    throw err; // the feed logs it; the next connection tries again
  }
}

function receive(msg) {
  if (msg.type === "heartbeat" || msg.type === "subscribed") return;
  if (held !== null) held.push(msg);
  else apply(msg, currentKey());
  schedule();
}

function apply(msg, key) {
  switch (msg.ch) {
    case "balances":
      acct.balances = msg.balances;
      break;
    case "fills":
      addFills([msg]);
      break;
    case "orders":
      applyOrder(msg, key);
      break;
    default:
      break;
  }
}

function applyOrder(msg, key) {
  const id = msg.order_id;
  let order = acct.orders.get(id);
  if (msg.event === "accepted") {
    order = {
      order_id: id, client_order_id: msg.client_order_id, side: msg.side, type: msg.type, price: msg.price,
      qty: msg.qty, remaining_qty: msg.remaining_qty, status: msg.status || "new",
    };
  } else if (order) {
    order = { ...order, remaining_qty: msg.remaining_qty, status: msg.status || order.status };
  } else {
    if (!TERMINAL.has(msg.status) && key) fetchOrder(id, key); // open before we looked (or beyond the page)
    return;
  }
  if (TERMINAL.has(order.status)) acct.orders.delete(id);
  else acct.orders.set(id, order);
}

async function fetchOrder(id, key) {
  const mine = session;
  try {
    const order = await getJSON(`/v1/orders/${id}`, key);
    if (mine === session && !TERMINAL.has(order.status)) {
      acct.orders.set(id, order);
      schedule();
    }
  } catch (err) {
    console.warn("order", id, err);
  }
}

function addFills(items) {
  const known = new Set(acct.fills.map((f) => `${f.trade_id}:${f.order_id}`));
  for (const f of items) {
    const id = `${f.trade_id}:${f.order_id}`;
    if (!known.has(id)) {
      known.add(id);
      acct.fills.push(f);
    }
  }
  acct.fills.sort((a, b) => b.trade_id - a.trade_id || b.order_id - a.order_id);
  acct.fills.length = Math.min(acct.fills.length, FILL_ROWS);
}

async function refreshPublic(key, mine) {
  try {
    const [points, price] = await Promise.all([getJSON("/v1/points?limit=1", key), getJSON("/v1/price")]);
    if (mine !== session) return;
    acct.points = points.points;
    acct.price = price.price;
    schedule();
  } catch (err) {
    console.warn("points/price", err);
  }
}

// ------------------------------------------------------------------ rendering

const schedule = frameScheduler(render);

function render() {
  setText($("#account-id"), acct.accountId === null ? "" : `#${acct.accountId}`);
  for (const row of document.querySelectorAll("#balances tbody tr")) {
    const b = (acct.balances || []).find((x) => x.asset === row.dataset.asset);
    for (const cell of row.querySelectorAll("[data-field]")) setValue(cell, b ? b[cell.dataset.field] : null);
  }
  setValue($("#points"), acct.points);
  setValue($("#account-price"), acct.price);
  const hb = (acct.balances || []).find((x) => x.asset === "HB");
  setValue($("#hb-value"), hb && acct.price ? mulDecimal(hb.total, acct.price, 2) : null);
  renderOrders();
  renderFills();
}

function renderOrders() {
  const body = $("#open-orders tbody");
  const orders = [...acct.orders.values()].sort((a, b) => b.order_id - a.order_id);
  setText($("#open-count"), `(${orders.length})`);
  const rows = orders.map((o) => el("tr", { className: o.side, dataset: { orderId: String(o.order_id) } },
    el("td", { text: String(o.order_id) }),
    el("td", { className: "side", text: labelOf(SIDES, o.side) }),
    el("td", { text: o.price === null || o.price === undefined ? "市价 market" : o.price, dataset: { value: o.price ?? "" } }),
    el("td", { text: group(o.qty), dataset: { value: o.qty } }),
    el("td", { text: group(o.remaining_qty), dataset: { value: o.remaining_qty } }),
    el("td", { text: labelOf(STATUSES, o.status), dataset: { value: o.status } })));
  if (!rows.length) rows.push(el("tr", { className: "none" }, el("td", { colspan: "6", text: "没有挂单 · No open orders" })));
  body.replaceChildren(...rows);
}

function renderFills() {
  const body = $("#fills tbody");
  const rows = acct.fills.map((f) => el("tr", { className: f.side, dataset: { tradeId: String(f.trade_id), orderId: String(f.order_id) } },
    el("td", { text: clockTime(f.ts) }),
    el("td", { text: String(f.trade_id) }),
    el("td", { text: String(f.order_id) }),
    el("td", { className: "side", text: labelOf(SIDES, f.side) }),
    el("td", { text: f.price, dataset: { value: f.price } }),
    el("td", { text: group(f.qty), dataset: { value: f.qty } }),
    el("td", { text: f.liquidity === "maker" ? "挂单方 maker" : "吃单方 taker" })));
  if (!rows.length) rows.push(el("tr", { className: "none" }, el("td", { colspan: "7", text: "还没有成交 · No fills yet" })));
  body.replaceChildren(...rows);
}

function showError(text) {
  const box = $("#key-error");
  box.hidden = !text;
  setText(box, text || "");
}

function forget() {
  sessionStorage.removeItem(STORAGE_KEY);
  stop();
  $("#account-panel").hidden = true;
  $("#key-panel").classList.remove("compact");
}

function init() {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#api-key");
    const key = input.value.trim();
    input.value = "";
    if (!key) return;
    sessionStorage.setItem(STORAGE_KEY, key);
    start(key);
  });
  $("#forget").addEventListener("click", () => {
    forget();
    showError(null);
  });
  setInterval(() => {
    const key = currentKey();
    if (key && feed && feed.state === "live") refreshPublic(key, session);
  }, REFRESH_MS);
  const key = currentKey();
  if (key) start(key);
  window.hb = { get feed() { return feed; }, acct };
}

init();
