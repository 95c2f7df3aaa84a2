// The local order book: a `book` snapshot, then updates with absolute level quantities.
//
// API.md: every update carries `seq` and `prev_seq`; a client whose last seq is not the
// update's prev_seq has missed something and must take a new snapshot. Every message carries
// `checksum`, the CRC32 of the top 25 levels as `price:qty`, asks ascending then bids
// descending, joined by ":". Levels are absolute, so the book after a run of contiguous updates
// does not depend on the ones before: the checksum is verified once per run (the last one's),
// which keeps 5,000 updates a second cheap. Prices and quantities are kept as the strings the
// server sent (its canonical format), which is what the checksum is computed over.

const CHECKSUM_LEVELS = 25;
const MAX_LEVELS = 1000; // per side kept; beyond it the farthest go (a later mismatch resyncs)

const CRC_TABLE = (() => {
  const table = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c;
  }
  return table;
})();

/** CRC32 (zlib's) of an ASCII string, unsigned. */
export function crc32(text) {
  let crc = -1;
  for (let i = 0; i < text.length; i++) crc = CRC_TABLE[(crc ^ text.charCodeAt(i)) & 0xff] ^ (crc >>> 8);
  return (crc ^ -1) >>> 0;
}

export class LocalBook {
  constructor() {
    this.bids = new Map(); // price string -> qty string
    this.asks = new Map();
    this.seq = null;
    this.synced = false; // false until a snapshot, and again after a gap or a bad checksum
    this.checksum = null; // of the last message applied
    this.unverified = false;
    this.version = 0; // bumps when levels change
    this.cache = null;
    this.stats = { snapshots: 0, updates: 0, gaps: 0, checksumErrors: 0 };
  }

  snapshot(msg) {
    this.bids.clear();
    this.asks.clear();
    for (const [p, q] of msg.bids) this.bids.set(p, q);
    for (const [p, q] of msg.asks) this.asks.set(p, q);
    this.seq = msg.seq;
    this.checksum = msg.checksum;
    this.synced = true;
    this.unverified = true;
    this.changed();
    this.stats.snapshots += 1;
  }

  /** Apply an update; false when it shows a gap (the caller resubscribes for a snapshot). */
  update(msg) {
    if (!this.synced) return true; // waiting for a snapshot: updates before it do not count
    if (msg.seq <= this.seq) return true; // already applied (a replay overlapping what we had)
    if (msg.prev_seq !== this.seq) {
      this.synced = false;
      this.stats.gaps += 1;
      return false;
    }
    const changed = msg.bids.length + msg.asks.length > 0;
    for (const [p, q] of msg.bids) setLevel(this.bids, p, q);
    for (const [p, q] of msg.asks) setLevel(this.asks, p, q);
    this.seq = msg.seq;
    this.checksum = msg.checksum;
    this.unverified = true;
    this.stats.updates += 1;
    if (changed) this.changed();
    return true;
  }

  changed() {
    this.version += 1;
    this.cache = null;
  }

  /** Both sides sorted, best first: {bids: [[price, qty, p, q]...], asks: [...]}. Cached. */
  sorted() {
    if (this.cache) return this.cache;
    const side = (map, descending) => {
      const levels = [];
      for (const [p, q] of map) levels.push([p, q, Number(p), Number(q)]);
      levels.sort(descending ? (a, b) => b[2] - a[2] : (a, b) => a[2] - b[2]);
      if (levels.length > MAX_LEVELS) {
        for (const [p] of levels.splice(MAX_LEVELS)) map.delete(p);
      }
      return levels;
    };
    this.cache = { bids: side(this.bids, true), asks: side(this.asks, false) };
    return this.cache;
  }

  /** The checksum API.md defines, of the book as it is now. */
  computeChecksum() {
    const { bids, asks } = this.sorted();
    const parts = [];
    for (const [p, q] of asks.slice(0, CHECKSUM_LEVELS)) parts.push(p + ":" + q);
    for (const [p, q] of bids.slice(0, CHECKSUM_LEVELS)) parts.push(p + ":" + q);
    return crc32(parts.join(":"));
  }

  /** Verify the last message's checksum if not done yet; false on a mismatch (resync). */
  verify() {
    if (!this.synced || !this.unverified) return this.synced;
    this.unverified = false;
    if (this.computeChecksum() === this.checksum) return true;
    this.synced = false;
    this.stats.checksumErrors += 1;
    return false;
  }
}

function setLevel(map, price, qty) {
  if (Number(qty) === 0) map.delete(price);
  else map.set(price, qty);
}
