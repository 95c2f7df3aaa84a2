// The websocket to GET /v1/ws: requests with acknowledgements, reconnects with backoff, staleness.
//
// Every message (heartbeats too: the server sends one each second on an idle socket) counts as
// a sign of life. With none for more than `staleMs` the feed is "stale"; with none for more than
// `deadMs` the socket is given up (a half-open connection never reports its close) and a new one
// is opened. After any close the next attempt waits 250 ms, doubling up to `maxBackoffMs`, with
// jitter; a connection that delivers a message resets the backoff. `onOpen(feed)` runs on every
// connect (log in, subscribe); `onMessage(msg)` gets every push that is not an acknowledgement.

export class Feed {
  constructor({ path = "/v1/ws", staleMs = 3000, deadMs = 6000, maxBackoffMs = 5000, onOpen, onMessage, onState } = {}) {
    Object.assign(this, { path, staleMs, deadMs, maxBackoffMs, onOpen, onMessage, onState });
    this.ws = null;
    this.open = false;
    this.attempts = 0;
    this.lastMessage = null; // performance.now() of the last message on any connection
    this.connectedAt = null;
    this.nextId = 1;
    this.pending = new Map(); // request id -> {resolve, reject}
    this.state = "connecting";
    this.stopped = false;
    this.retry = null;
    this.stats = { messages: 0, connects: 0, closes: 0 };
  }

  start() {
    this.startedAt = performance.now();
    this.connect();
    this.ticker = setInterval(() => this.check(), 250);
    return this;
  }

  /** Close for good: no reconnect, no more callbacks. */
  stop() {
    this.stopped = true;
    clearInterval(this.ticker);
    clearTimeout(this.retry);
    const ws = this.ws;
    this.ws = null;
    this.open = false;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close();
    }
    for (const waiter of this.pending.values()) waiter.reject(Object.assign(new Error("stopped"), { code: "stopped" }));
    this.pending.clear();
  }

  url() {
    const url = new URL(this.path, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  connect() {
    this.retry = null;
    if (this.stopped) return;
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.connectedAt = performance.now();
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.open = true;
      this.stats.connects += 1;
      Promise.resolve()
        .then(() => this.onOpen && this.onOpen(this))
        .catch((err) => console.warn("feed: setting up the connection failed", err));
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this.lastMessage = performance.now();
      this.attempts = 0;
      this.stats.messages += 1;
      const msg = JSON.parse(event.data);
      if (msg.op !== undefined && msg.id !== undefined && msg.ok !== undefined) {
        const waiter = this.pending.get(msg.id);
        if (waiter) {
          this.pending.delete(msg.id);
          if (msg.ok) waiter.resolve(msg.result);
          else waiter.reject(Object.assign(new Error(msg.error.message), { code: msg.error.code }));
        }
        return;
      }
      if (this.onMessage) this.onMessage(msg);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.dropped();
    };
    ws.onerror = () => {}; // a close event follows
  }

  dropped() {
    const ws = this.ws;
    this.ws = null;
    this.open = false;
    this.stats.closes += 1;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch {
        /* already closed */
      }
    }
    for (const waiter of this.pending.values()) waiter.reject(Object.assign(new Error("disconnected"), { code: "disconnected" }));
    this.pending.clear();
    this.check();
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.stopped || this.retry !== null) return;
    const base = Math.min(this.maxBackoffMs, 250 * 2 ** this.attempts);
    this.attempts += 1;
    this.retry = setTimeout(() => this.connect(), base * (0.75 + Math.random() * 0.5));
  }

  /** Reconnect now (a client that lost track, or the user asked). */
  reconnect() {
    if (this.ws) this.dropped();
  }

  /** Send one request; resolves with its result, rejects with its error (`code`) or on a close. */
  send(op, args) {
    const ws = this.ws;
    if (!ws || !this.open) return Promise.reject(Object.assign(new Error("not connected"), { code: "disconnected" }));
    const id = "r" + this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ op, id, args }));
    });
  }

  ageMs() {
    return this.lastMessage === null ? null : performance.now() - this.lastMessage;
  }

  check() {
    if (this.stopped) return;
    const now = performance.now();
    const silentFor = now - (this.lastMessage ?? this.startedAt);
    const live = this.open && this.lastMessage !== null && this.lastMessage >= this.connectedAt
      && silentFor <= this.staleMs;
    this.state = live ? "live" : silentFor > this.staleMs ? "stale" : "connecting";
    // Nothing on this socket for too long (never opened, or half-open): give it up.
    if (this.ws && now - Math.max(this.lastMessage ?? 0, this.connectedAt) > this.deadMs) this.dropped();
    if (this.onState) this.onState(this.state, this.ageMs());
  }
}
