//! What `/api/stats` and the event stream say, made by one sampler thread
//! twice a second from the collectors' counters: the web threads send the
//! last text made, so a hundred browsers cost what one does and no HTTP
//! client ever makes the sampler (let alone a request) wait.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::collect::{percentile, Collector, Op, BUCKETS};
use crate::map::Kind;

/// How often the figures are made.
pub const TICK: Duration = Duration::from_millis(500);

/// Samples kept for the graphs: two minutes.
const HISTORY: usize = 240;

/// Files listed as read last and read most.
const LISTED: usize = 20;

/// Latency percentiles "now" are over this many ticks (10 s).
const RECENT_TICKS: usize = 20;

/// One tick's totals, kept for the graphs and the recent percentiles.
#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the collector started.
    t: f64,
    read: u64,
    written: u64,
    /// Per open connection: id, bytes read, bytes written.
    conns: Vec<(u64, u64, u64)>,
    hist_read: [u64; BUCKETS],
    hist_write: [u64; BUCKETS],
}

/// The sampler's state for one export.
#[derive(Debug)]
pub struct Sampler {
    collector: Arc<Collector>,
    history: VecDeque<Sample>,
    /// The cell counters at the previous tick: (read, written, trimmed).
    cells: Vec<(u64, u64, u64)>,
    /// The last figures made, as JSON text.
    latest: Arc<Mutex<Arc<String>>>,
}

fn hist_of(c: &Collector, op: Op) -> [u64; BUCKETS] {
    c.op(op).hist
}

fn percentiles(h: &[u64; BUCKETS]) -> Value {
    json!({
        "p50_us": percentile(h, 0.5),
        "p90_us": percentile(h, 0.9),
        "p99_us": percentile(h, 0.99),
    })
}

fn rate(bytes: u64, secs: f64) -> u64 {
    if secs <= 0.0 {
        0
    } else {
        (bytes as f64 / secs) as u64
    }
}

impl Sampler {
    /// A sampler for `collector`; `latest` is where its figures go.
    pub fn new(collector: Arc<Collector>, latest: Arc<Mutex<Arc<String>>>) -> Self {
        let cells = vec![(0, 0, 0); collector.cell_count()];
        Sampler {
            collector,
            history: VecDeque::with_capacity(HISTORY + 1),
            cells,
            latest,
        }
    }

    /// Take a sample and make the figures.
    pub fn tick(&mut self, exports: &[String]) {
        let text = self.figures(exports).to_string();
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(text);
    }

    fn figures(&mut self, exports: &[String]) -> Value {
        let collector = self.collector.clone();
        let c = &*collector;
        let now = c.started.elapsed().as_secs_f64();
        let live = c.live();
        let sample = Sample {
            t: now,
            read: c.op(Op::Read).bytes,
            written: c.op(Op::Write).bytes + c.op(Op::Zero).bytes,
            conns: live.iter().map(|k| (k.id, k.read(), k.written())).collect(),
            hist_read: hist_of(c, Op::Read),
            hist_write: hist_of(c, Op::Write),
        };
        self.history.push_back(sample.clone());
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }

        // Throughput over the last second (two ticks), per connection too.
        let back = self
            .history
            .iter()
            .rev()
            .nth(2)
            .or(self.history.front())
            .cloned()
            .unwrap_or_else(|| sample.clone());
        let dt = sample.t - back.t;
        let conn_rate = |id: u64, read: u64, written: u64| {
            let before = back.conns.iter().find(|k| k.0 == id);
            let (r0, w0) = before.map_or((0, 0), |k| (k.1, k.2));
            (
                rate(read.saturating_sub(r0), dt),
                rate(written.saturating_sub(w0), dt),
            )
        };
        let connections: Vec<Value> = live
            .iter()
            .map(|k| {
                let read = k.read();
                let written = k.written();
                let (rbps, wbps) = conn_rate(k.id, read, written);
                json!({
                    "id": k.id,
                    "peer": k.peer,
                    "connected_s": (now - k.since.as_secs_f64()).max(0.0),
                    "requests": k.requests(),
                    "read_bytes": read,
                    "written_bytes": written,
                    "read_bps": rbps,
                    "write_bps": wbps,
                })
            })
            .collect();

        // The graphs: one point per tick, total and per connection.
        let mut history = Vec::with_capacity(self.history.len());
        let mut prev: Option<&Sample> = None;
        for s in &self.history {
            if let Some(p) = prev {
                let dt = s.t - p.t;
                let per: Vec<Value> = s
                    .conns
                    .iter()
                    .map(|k| {
                        let before = p.conns.iter().find(|q| q.0 == k.0);
                        let r0 = before.map_or(0, |q| q.1);
                        json!([k.0, rate(k.1.saturating_sub(r0), dt)])
                    })
                    .collect();
                history.push(json!({
                    "t": (s.t * 10.0).round() / 10.0,
                    "read_bps": rate(s.read.saturating_sub(p.read), dt),
                    "write_bps": rate(s.written.saturating_sub(p.written), dt),
                    "conn_read_bps": per,
                }));
            }
            prev = Some(s);
        }

        // Recent latency: the histogram's growth over the last ten seconds.
        let old = self
            .history
            .iter()
            .rev()
            .nth(RECENT_TICKS)
            .or(self.history.front())
            .cloned();
        let recent = |now: &[u64; BUCKETS], then: Option<&[u64; BUCKETS]>| {
            let d: [u64; BUCKETS] =
                std::array::from_fn(|b| now[b].saturating_sub(then.map_or(0, |t| t[b])));
            percentiles(&d)
        };

        let mut ops = serde_json::Map::new();
        for op in Op::ALL {
            let o = c.op(op);
            let mut v = json!({
                "requests": o.requests,
                "errors": o.errors,
                "bytes": o.bytes,
            });
            if let (Value::Object(m), Value::Object(p)) = (&mut v, percentiles(&o.hist)) {
                m.extend(p);
            }
            ops.insert(op.name().into(), v);
        }

        let (recent_files, top_files) = self.files(now);
        let cells = self.cell_changes();
        let written: Vec<usize> = self
            .cells
            .iter()
            .enumerate()
            .filter(|(_, k)| k.1 > 0)
            .map(|(i, _)| i)
            .collect();
        let device: serde_json::Map<String, Value> = crate::figures::current()
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        json!({
            "export": c.name,
            "exports": exports,
            "size": c.map.size(),
            "uptime_s": (now * 10.0).round() / 10.0,
            "ops": ops,
            "throughput": {
                "read_bps": rate(sample.read.saturating_sub(back.read), dt),
                "write_bps": rate(sample.written.saturating_sub(back.written), dt),
            },
            "latency_recent": {
                "read": recent(&sample.hist_read, old.as_ref().map(|s| &s.hist_read)),
                "write": recent(&sample.hist_write, old.as_ref().map(|s| &s.hist_write)),
            },
            "connections": {
                "total": c.connections.load(Ordering::Relaxed),
                "open": connections,
            },
            "recent_files": recent_files,
            "top_files": top_files,
            "device": device,
            "history": history,
            "cells": cells,
            "written_cells": written,
        })
    }

    /// The files read last and read most, each once however many pieces
    /// it has: one pass over the pieces, bounded by the map's size.
    fn files(&self, now: f64) -> (Vec<Value>, Vec<Value>) {
        let c = &*self.collector;
        // path -> (bytes read, last read in ms + 1, size mapped)
        let mut files: HashMap<&str, (u64, u64)> = HashMap::new();
        for (p, k) in c.map.pieces().iter().zip(c.pieces.iter()) {
            if p.kind != Kind::File {
                continue;
            }
            let read = k.read.load(Ordering::Relaxed);
            if read == 0 {
                continue;
            }
            let e = files.entry(&p.name).or_default();
            e.0 += read;
            e.1 = e.1.max(k.last.load(Ordering::Relaxed));
        }
        let mut all: Vec<(&str, u64, u64)> =
            files.into_iter().map(|(p, (r, l))| (p, r, l)).collect();
        let item = |(path, read, last): &(&str, u64, u64)| {
            let ago = (now - (*last as f64 - 1.0) / 1000.0).max(0.0);
            json!({ "path": path, "read_bytes": read, "read_s_ago": (ago * 10.0).round() / 10.0 })
        };
        all.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));
        let recent = all.iter().take(LISTED).map(item).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let top = all.iter().take(LISTED).map(item).collect();
        (recent, top)
    }

    /// The cells whose counters moved since the last tick:
    /// `[cell, read, written, trimmed]` bytes in the tick.
    fn cell_changes(&mut self) -> Vec<[u64; 4]> {
        let mut out = Vec::new();
        let c = self.collector.clone();
        for (i, prev) in self.cells.iter_mut().enumerate() {
            let now = c.cell(i);
            if now != *prev {
                out.push([
                    i as u64,
                    now.0.saturating_sub(prev.0),
                    now.1.saturating_sub(prev.1),
                    now.2.saturating_sub(prev.2),
                ]);
                *prev = now;
            }
        }
        out
    }
}
