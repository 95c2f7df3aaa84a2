// The market page: book (depth chart and ladder), trades, ticker, the daily price P with its
// history, supply and the reserve, live from GET /v1/ws; REST for history and the figures the
// socket does not carry (24 h statistics, today's emission, the desk's budget).
//
// Messages are applied as they arrive (cheap: a Map per side); the screen is drawn at most once
// per animation frame, and the depth chart at most ten times a second, so thousands of book
// updates a second never queue up behind rendering.

import { LocalBook } from "./book.js";
import { Feed } from "./feed.js";
import {
  frameScheduler,
  $, el, FORMULAS, fillFields, getJSON, group, labelOf, setText, setValue, showFeedState, throttle, clockTime,
} from "./format.js";

const LADDER_ROWS = 15;
const DEPTH_LEVELS = 60;
const TAPE_ROWS = 30;
const BOOK_EVERY_MS = 50; // the ladder: twenty times a second is more than anyone reads
const DEPTH_EVERY_MS = 100;
const BLANK = "\u00a0"; // empty cells keep the height of full ones: the layout never moves
const REFRESH_MS = 15000; // REST figures nobody pushes (the desk's policy, today's emission)

const book = new LocalBook();
const view = {
  trades: [], // newest first, at most TAPE_ROWS
  lastTradeId: 0,
  last: null, // last trade price
  ticker: {}, // GET /v1/ticker
  price: null, // the `price` channel's body (GET /v1/price's fields)
  prices: [], // GET /v1/prices
  supplyRest: null, // GET /v1/supply
  supplyLive: null, // the `supply` channel's body
  desk: null, // GET /v1/desk
};
const dirty = { trades: true, ticker: true, price: true, supply: true, history: true };
const stats = { resyncs: 0, frames: 0, ladderDraws: 0, depthDraws: 0 };
let resyncAt = -Infinity;
let renderedVersion = -1;
let ladderDrawnAt = -Infinity;
let depthDrawnAt = -Infinity;
let depthPending = false;

// ------------------------------------------------------------------ the feed

const feed = new Feed({
  onOpen: subscribe,
  onMessage: receive,
  onState: (state, age) => showFeedState($("#feed-status"), state, age),
});

async function subscribe(f) {
  // The book resumes from where it was (the server replays what was missed, or sends a snapshot).
  const bookSub = book.synced ? { channel: "book", resume_from: book.seq } : { channel: "book" };
  await f.send("subscribe", [bookSub, { channel: "trades" }, { channel: "ticker" }, { channel: "price" }, { channel: "supply" }]);
  refreshTrades();
  refreshHistory();
  refreshSupply();
}

function receive(msg) {
  if (msg.type === "heartbeat") {
    heartbeat(msg);
    return;
  }
  switch (msg.ch) {
    case "book":
      if (msg.type === "snapshot") book.snapshot(msg);
      else if (!book.update(msg)) resync();
      break;
    case "trades":
      // One update per feed window: the window's trades, oldest first, in `trades`.
      if (msg.type === "update") {
        if (msg.prev_seq > view.lastTradeId) refreshTradesSoon(); // trades before these went missing
        addTrades(msg.trades || []);
      }
      break;
    case "ticker":
      // Snapshot and updates carry the fields of GET /v1/ticker.
      view.ticker = msg;
      if (msg.last !== null) view.last = msg.last;
      dirty.ticker = true;
      break;
    case "price":
      if (view.price && msg.type === "update") refreshHistory();
      view.price = msg;
      dirty.price = true;
      break;
    case "supply":
      view.supplyLive = msg;
      dirty.supply = true;
      refreshSupplySoon();
      break;
    default:
      break;
  }
  schedule();
}

/** A heartbeat comes when everything before it was sent: our seqs must be the server's. */
function heartbeat(msg) {
  const seqs = msg.seqs || {};
  if (book.synced && seqs.book !== undefined && seqs.book !== book.seq) resync();
  if (seqs.trades !== undefined && seqs.trades > view.lastTradeId) refreshTradesSoon();
}

function resync() {
  book.synced = false;
  const now = performance.now();
  if (now - resyncAt < 1000) {
    setTimeout(() => { if (!book.synced) resync(); }, 1000);
    return;
  }
  resyncAt = now;
  stats.resyncs += 1;
  feed.send("subscribe", [{ channel: "book" }]).catch(() => {}); // a snapshot follows
}

// ------------------------------------------------------------------ REST

// Load something from REST into the view and redraw; a failure is logged and the next
// refresh (a feed event or the timer) tries again.
async function refresh(what, load) {
  try {
    await load();
    schedule();
  } catch (err) {
    console.warn(what, err);
  }
}

function refreshTrades() {
  return refresh("trades", async () => {
    addTrades((await getJSON(`/v1/trades?limit=${TAPE_ROWS}`)).items);
  });
}

function refreshTicker() {
  return refresh("ticker", async () => {
    view.ticker = await getJSON("/v1/ticker");
    if (view.ticker.last !== null && view.last === null) view.last = view.ticker.last;
    dirty.ticker = true;
  });
}

function refreshHistory() {
  return refresh("prices", async () => {
    view.prices = await getJSON("/v1/prices?limit=366");
    dirty.history = true;
  });
}

function refreshSupply() {
  return refresh("supply", async () => {
    const [supply, desk] = await Promise.all([getJSON("/v1/supply"), getJSON("/v1/desk")]);
    view.supplyRest = supply;
    view.desk = desk;
    dirty.supply = true;
  });
}

const refreshTradesSoon = throttle(refreshTrades, 2000);
const refreshSupplySoon = throttle(refreshSupply, 1000);

function addTrades(items) {
  let added = false;
  const known = new Set(view.trades.map((t) => t.trade_id));
  for (const t of items) {
    if (known.has(t.trade_id)) continue;
    known.add(t.trade_id);
    view.trades.push(t);
    added = true;
  }
  if (!added) return;
  view.trades.sort((a, b) => b.trade_id - a.trade_id);
  view.trades.length = Math.min(view.trades.length, TAPE_ROWS);
  const newest = view.trades[0];
  if (newest.trade_id > view.lastTradeId) {
    view.lastTradeId = newest.trade_id;
    view.last = newest.price;
  }
  dirty.trades = dirty.ticker = true;
}

// ------------------------------------------------------------------ rendering

const schedule = frameScheduler(render);

function render() {
  stats.frames += 1;
  if (book.synced && !book.verify()) resync();
  if (book.version !== renderedVersion && book.synced) {
    if (performance.now() - ladderDrawnAt >= BOOK_EVERY_MS) {
      ladderDrawnAt = performance.now();
      renderedVersion = book.version;
      stats.ladderDraws += 1;
      renderLadder();
      dirty.ticker = true;
      depthPending = true;
    } else {
      schedule(); // draw it in a later frame
    }
  }
  if (depthPending) {
    if (performance.now() - depthDrawnAt >= DEPTH_EVERY_MS) renderDepth();
    else schedule(); // draw it in a later frame
  }
  if (dirty.trades) renderTrades();
  if (dirty.ticker) renderTicker();
  if (dirty.price) renderPrice();
  if (dirty.history) renderHistory();
  if (dirty.supply) renderSupply();
  setText($("#book-seq"), book.seq === null ? "" : `seq ${book.seq}`);
}

const ladder = { asks: [], bids: [] };

function ladderRows(box, side) {
  for (let i = 0; i < LADDER_ROWS; i++) {
    const row = el("div", { className: "level empty" },
      el("span", { className: "p", text: BLANK }), el("span", { className: "q", text: BLANK }), el("span", { className: "t", text: BLANK }));
    ladder[side].push({ row, price: row.children[0], qty: row.children[1], total: row.children[2], depth: "" });
  }
  // Asks are shown best (lowest) at the bottom, next to the spread; bids best at the top.
  const rows = side === "asks" ? [...ladder[side]].reverse() : ladder[side];
  for (const r of rows) box.append(r.row);
}

function renderLadder() {
  const { bids, asks } = book.sorted();
  let maxTotal = 0;
  const totals = (levels) => {
    const out = [];
    let sum = 0;
    for (let i = 0; i < Math.min(levels.length, LADDER_ROWS); i++) {
      sum += levels[i][3];
      out.push(sum);
    }
    maxTotal = Math.max(maxTotal, sum);
    return out;
  };
  const bidTotals = totals(bids);
  const askTotals = totals(asks);
  fillLadder(ladder.bids, bids, bidTotals, maxTotal);
  fillLadder(ladder.asks, asks, askTotals, maxTotal);
  const spread = bids.length && asks.length ? (asks[0][2] - bids[0][2]) : null;
  setText($("#ladder-spread"), spread === null ? "—" : spread.toFixed(decimals(asks[0][0])));
}

function fillLadder(rows, levels, totals, maxTotal) {
  const scale = qtyDecimals(levels);
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    const level = levels[i];
    if (!level) {
      if (r.row.dataset.price !== "") {
        r.row.dataset.price = r.row.dataset.qty = "";
        r.row.classList.add("empty");
        setText(r.price, BLANK);
        setText(r.qty, BLANK);
        setText(r.total, BLANK);
        setDepth(r, "0%");
      }
      continue;
    }
    const [p, q] = level;
    r.row.classList.remove("empty");
    if (r.row.dataset.price !== p) r.row.dataset.price = p;
    if (r.row.dataset.qty !== q) r.row.dataset.qty = q;
    setText(r.price, p);
    setText(r.qty, group(q));
    setText(r.total, group(totals[i].toFixed(scale)));
    setDepth(r, `${maxTotal ? Math.round((1000 * totals[i]) / maxTotal) / 10 : 0}%`);
  }
}

/** The row's depth bar (a background drawn by the style sheet from --depth). */
function setDepth(r, width) {
  if (r.depth === width) return;
  r.depth = width;
  r.row.style.setProperty("--depth", width);
}

function decimals(text) {
  const dot = String(text).indexOf(".");
  return dot < 0 ? 0 : String(text).length - dot - 1;
}

function qtyDecimals(levels) {
  return levels.length ? decimals(levels[0][1]) : 2;
}

let depthChart = null;
let priceChart = null;

function makeCharts() {
  if (!window.uPlot) return; // the page works without charts
  const uPlot = window.uPlot;
  const axis = { stroke: "#9aa4b2", grid: { stroke: "#273142" }, ticks: { stroke: "#273142" } };
  const depthBox = $("#depth-chart");
  depthChart = new uPlot({
    ...sizeOf(depthBox),
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: false }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] } },
    axes: [
      { ...axis, incrs: PRICE_STEPS, values: (u, ticks) => ticks.map((v) => v.toFixed(2)) },
      { ...axis, size: 64 },
    ],
    series: [
      {},
      { label: "买盘 Bids", stroke: "#22c55e", width: 2, fill: "rgba(34,197,94,0.18)",
        paths: uPlot.paths.stepped({ align: -1 }), points: { show: false } },
      { label: "卖盘 Asks", stroke: "#ef4444", width: 2, fill: "rgba(239,68,68,0.18)",
        paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
    ],
  }, [[], [], []], depthBox);

  // P by day: x is the day's number since 1970-01-01 (no time of day, no time zone).
  const priceBox = $("#price-chart");
  priceChart = new uPlot({
    ...sizeOf(priceBox),
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: false, range: (u, min, max) => (min === max ? [min - 1, max + 1] : [min - 0.3, max + 0.3]) },
      y: { range: (u, min, max) => (min === max ? [min * 0.9, max * 1.1 || 1] : [min - (max - min) * 0.2, max + (max - min) * 0.2]) },
    },
    axes: [
      { ...axis, space: 90, incrs: [1, 2, 7, 14, 28, 91, 182, 364],
        values: (u, ticks) => ticks.map((d) => (Number.isInteger(d) ? dayText(d) : "")) },
      { ...axis, size: 64, values: (u, ticks) => ticks.map((v) => v.toFixed(2)) },
    ],
    series: [{}, { label: "P", stroke: "#f59e0b", width: 2, fill: "rgba(245,158,11,0.12)", points: { size: 7, fill: "#f59e0b" } }],
  }, [[], []], priceBox);

  // The boxes take their size from the layout; the charts follow them.
  const resize = new ResizeObserver(() => {
    for (const [chart, box] of [[depthChart, depthBox], [priceChart, priceBox]]) {
      const size = sizeOf(box);
      if (size.width !== chart.width || size.height !== chart.height) chart.setSize(size);
    }
  });
  resize.observe(depthBox);
  resize.observe(priceBox);
}

const PRICE_STEPS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]; // whole ticks
const DAY_MS = 86400000;
const dayNumber = (iso) => Date.parse(iso + "T00:00:00Z") / DAY_MS;
const dayText = (n) => new Date(n * DAY_MS).toISOString().slice(0, 10);

function sizeOf(box) {
  return { width: Math.max(box.clientWidth, 200), height: Math.max(box.clientHeight, 120) };
}

function renderDepth() {
  depthPending = false;
  depthDrawnAt = performance.now();
  if (!depthChart) return;
  stats.depthDraws += 1;
  const { bids, asks } = book.sorted();
  const xs = [];
  const bidY = [];
  const askY = [];
  const b = bids.slice(0, DEPTH_LEVELS);
  const a = asks.slice(0, DEPTH_LEVELS);
  const bidCum = [];
  let sum = 0;
  for (const level of b) bidCum.push((sum += level[3]));
  for (let i = b.length - 1; i >= 0; i--) {
    xs.push(b[i][2]);
    bidY.push(bidCum[i]);
    askY.push(null);
  }
  sum = 0;
  for (const level of a) {
    xs.push(level[2]);
    bidY.push(null);
    askY.push((sum += level[3]));
  }
  // Run each side's total out a little past its last level, so the last step shows.
  if (xs.length > 1) {
    const pad = (xs[xs.length - 1] - xs[0]) * 0.04;
    if (b.length) {
      xs.unshift(xs[0] - pad);
      bidY.unshift(bidY[0]);
      askY.unshift(null);
    }
    if (a.length) {
      xs.push(xs[xs.length - 1] + pad);
      bidY.push(null);
      askY.push(askY[askY.length - 1]);
    }
  }
  depthChart.setData([xs, bidY, askY]);
}

function renderTrades() {
  dirty.trades = false;
  const tape = $("#tape");
  while (tape.children.length < TAPE_ROWS) {
    tape.append(el("tr", { className: "empty" }, el("td", { className: "time", text: BLANK }),
      el("td", { className: "p", text: BLANK }), el("td", { className: "q", text: BLANK })));
  }
  for (let i = 0; i < TAPE_ROWS; i++) {
    const row = tape.children[i];
    const t = view.trades[i];
    if (!t) {
      row.className = "empty";
      continue;
    }
    const id = String(t.trade_id);
    if (row.dataset.tradeId === id) continue;
    row.dataset.tradeId = id;
    row.dataset.price = t.price;
    row.dataset.qty = t.qty;
    row.className = t.taker_side === "buy" ? "buy" : "sell";
    setText(row.children[0], clockTime(t.ts));
    setText(row.children[1], t.price);
    setText(row.children[2], group(t.qty));
  }
}

function renderTicker() {
  dirty.ticker = false;
  const t = view.ticker;
  setValue($("#last-price"), view.last);
  const lastBox = $("#last-price");
  const newest = view.trades[0];
  lastBox.classList.toggle("buy", !!newest && newest.taker_side === "buy");
  lastBox.classList.toggle("sell", !!newest && newest.taker_side === "sell");
  fillFields($("#ticker"), t);
  const { bids, asks } = book.synced ? book.sorted() : { bids: [], asks: [] };
  setValue($("#best-bid"), bids.length ? bids[0][0] : null);
  setValue($("#best-ask"), asks.length ? asks[0][0] : null);
  setText($("#spread"), bids.length && asks.length ? (asks[0][2] - bids[0][2]).toFixed(decimals(asks[0][0])) : "—");
  const change = $("#change-24h");
  if (view.last !== null && t.open_24h) {
    const pct = (100 * (Number(view.last) - Number(t.open_24h))) / Number(t.open_24h);
    setText(change, `${pct >= 0 ? "+" : ""}${pct.toFixed(2)}% 24h`);
    change.className = "change " + (pct >= 0 ? "up" : "down");
  } else {
    setText(change, "");
  }
}

function renderPrice() {
  dirty.price = false;
  const p = view.price;
  if (!p) return;
  fillFields($("#price"), p);
  setText($("#price-formula"), p.formula ? labelOf(FORMULAS, p.formula) : "—");
  const change = $("#price-change");
  if (p.previous_price && p.price) {
    const pct = (100 * (Number(p.price) - Number(p.previous_price))) / Number(p.previous_price);
    setText(change, `${pct >= 0 ? "+" : ""}${pct.toFixed(2)}%`);
    change.className = "change " + (pct >= 0 ? "up" : "down");
  } else {
    setText(change, "");
  }
  dirty.history = true;
}

function renderHistory() {
  dirty.history = false;
  if (!priceChart) return;
  const points = new Map(view.prices.map((p) => [p.day, Number(p.price)]));
  const p = view.price;
  if (p && p.day && p.price && p.formula !== "genesis") points.set(p.day, Number(p.price));
  const days = [...points.keys()].sort();
  priceChart.setData([days.map(dayNumber), days.map((d) => points.get(d))]);
  $("#price-chart").dataset.points = String(days.length);
  $("#price-chart").classList.toggle("empty", days.length === 0);
}

function renderSupply() {
  dirty.supply = false;
  const panel = $("#supply");
  // The socket's figures are the freshest; REST adds what it does not carry.
  const figures = { ...(view.supplyRest || {}), ...(view.supplyLive || {}), ...(view.desk ? deskFigures(view.desk) : {}) };
  fillFields(panel, figures);
  const desk = view.desk;
  setText($("#desk-enabled"), desk ? (desk.enabled ? "开启 On" : "关闭 Off") : "—");
  const meter = $("#minted-meter");
  if (figures.cap && figures.minted !== undefined) {
    meter.style.width = `${Math.min(100, (100 * Number(figures.minted)) / Number(figures.cap))}%`;
  }
}

function deskFigures(desk) {
  return { budget_left: desk.budget_left, daily_budget: desk.daily_budget, spent_today: desk.spent_today };
}

// ------------------------------------------------------------------ start

function start() {
  ladderRows($("#asks"), "asks");
  ladderRows($("#bids"), "bids");
  makeCharts();
  feed.start();
  setInterval(() => { if (feed.state === "live") refreshSupply(); }, REFRESH_MS);
  setInterval(() => { if (feed.state === "live") refreshTicker(); }, REFRESH_MS);
  // For operators and tests: the live objects, read-only by convention.
  window.hb = {
    feed, book, view, stats,
    charts: () => ({ depth: depthChart ? depthChart.data : null, price: priceChart ? priceChart.data : null }),
  };
  schedule();
}

start();
