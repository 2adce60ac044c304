//! The live web view of disksynth (`--web ADDR:PORT`): one page, its
//! assets compiled into the binary (no CDN, works offline), showing a map
//! of the whole disk (one cell per run of blocks, coloured by what lives
//! there and lit by reads, writes and trims as they happen), what lives
//! under any cell (a host file and the offset in it, or a structure: FAT,
//! inode table, directory, GPT header…), the files read last and most,
//! throughput per connection and in all, latency percentiles, and the
//! device's own figures where it keeps them. Scripts get the same as JSON:
//!
//! - `GET /api/stats[?export=NAME]`: counters, throughput, latency,
//!   connections, files read last and most (made twice a second);
//! - `GET /api/events[?export=NAME]`: the same as Server-Sent Events,
//!   one `stats` event twice a second, with the cells lit since the last;
//! - `GET /api/map[?export=NAME][&offset=N&length=N]`: every region
//!   (`offset`, `length`, `kind`, and the host file's `path` and
//!   `file_offset` or the structure's `name`), in disk order;
//! - `GET /api/cells[?export=NAME]`: the picture's cells and what each
//!   mostly holds.
//!
//! Counting is [`collect`]'s layer at the top of each export's stack
//! (atomics in tables sized at start); the web threads ([`http`]) read
//! only, never take a lock a request waits for, and are few and
//! time-bounded.

pub mod collect;
pub mod figures;
pub mod http;
pub mod map;
pub mod stats;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use serde_json::json;
use synth::{BlockDev, Export, FilteredExport};

use crate::collect::{Collector, WatchFactory};
use crate::http::{Answer, Request};
use crate::map::{DiskMap, Kind};
use crate::stats::Sampler;

const PAGE: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/view.js");
const STYLE: &str = include_str!("../assets/view.css");

/// Most pieces one `/api/map` range query lists (the page asks for one
/// cell's; a whole-map query has no limit but the map's size).
const RANGE_PIECES: usize = 1000;

/// The web view cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The address cannot be listened on.
    #[error("--web {addr}: cannot listen: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A thread cannot be started.
    #[error("--web: cannot start its threads: {0}")]
    Thread(#[source] io::Error),
    /// The export cannot take the view's layer.
    #[error("--web: export {name:?}: {source}")]
    Export {
        /// The export's name.
        name: String,
        /// Why.
        #[source]
        source: synth::Error,
    },
}

/// One watched export: its collector and its last figures.
struct Watched {
    collector: Arc<Collector>,
    latest: Arc<Mutex<Arc<String>>>,
}

/// What the web threads serve.
pub struct View {
    exports: Vec<Watched>,
}

/// Builds the view: exports are watched first, then it serves.
#[derive(Default)]
pub struct WebView {
    exports: Vec<Watched>,
}

impl WebView {
    /// A view of no export yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Watch `export` (named `name` on the server): its stack gets the
    /// counting layer on top. `map_of` is the device whose layout the map
    /// shows (the shared device every client reads), `None` for exports
    /// opening a disk per client: their map is one unknown piece.
    /// The devices' own figures (cache hits, origin bytes) come from
    /// [`figures`], where they are registered as they are opened.
    pub fn watch(
        &mut self,
        name: &str,
        export: Arc<dyn Export>,
        map_of: Option<&dyn BlockDev>,
    ) -> Result<Arc<dyn Export>, WebError> {
        let map = match map_of {
            Some(dev) => DiskMap::of(dev),
            None => DiskMap::from_named(export.size(), &[]),
        };
        let collector = Arc::new(Collector::new(name, map));
        let factory = Arc::new(WatchFactory {
            collector: collector.clone(),
        });
        let watched = FilteredExport::new(export, vec![factory]).map_err(|e| WebError::Export {
            name: name.to_string(),
            source: e,
        })?;
        self.exports.push(Watched {
            collector,
            latest: Arc::new(Mutex::new(Arc::new("{}".to_string()))),
        });
        Ok(Arc::new(watched))
    }

    /// Listen on `addr` and serve the view from background threads for
    /// the rest of the process's life; the address listened on (port 0
    /// picks one).
    pub fn start(self, addr: SocketAddr) -> Result<SocketAddr, WebError> {
        let listener = TcpListener::bind(addr).map_err(|e| WebError::Bind { addr, source: e })?;
        let bound = listener
            .local_addr()
            .map_err(|e| WebError::Bind { addr, source: e })?;
        if !bound.ip().is_loopback() {
            log::warn!(
                "--web {bound}: the view is reachable from other machines; it is read-only but \
                 names the host files the disk holds and what clients read"
            );
        }
        let names: Vec<String> = self
            .exports
            .iter()
            .map(|w| w.collector.name.clone())
            .collect();
        let mut samplers: Vec<Sampler> = self
            .exports
            .iter()
            .map(|w| Sampler::new(w.collector.clone(), w.latest.clone()))
            .collect();
        for s in &mut samplers {
            s.tick(&names);
        }
        let clocks: Vec<Arc<Collector>> =
            self.exports.iter().map(|w| w.collector.clone()).collect();
        let steps = (stats::TICK.as_millis() / collect::CLOCK_STEP.as_millis()).max(1);
        std::thread::Builder::new()
            .name("web-sampler".into())
            .spawn(move || {
                for step in 1u128.. {
                    std::thread::sleep(collect::CLOCK_STEP);
                    for c in &clocks {
                        c.set_clock();
                    }
                    if step % steps == 0 {
                        for s in &mut samplers {
                            s.tick(&names);
                        }
                    }
                }
            })
            .map_err(WebError::Thread)?;
        let view = Arc::new(View {
            exports: self.exports,
        });
        std::thread::Builder::new()
            .name("web-accept".into())
            .spawn(move || http::serve(listener, view))
            .map_err(WebError::Thread)?;
        // The caller says where (the cli prints it, as it prints the NBD URI).
        Ok(bound)
    }
}

/// An unsigned number from a query parameter.
fn number(req: &Request, key: &str) -> Result<Option<u64>, String> {
    req.param(key)
        .map(|v| v.parse::<u64>().map_err(|_| format!("{key}: not a number")))
        .transpose()
}

impl View {
    fn pick(&self, req: &Request) -> Option<&Watched> {
        match req.param("export") {
            None => self.exports.first(),
            Some(name) => self.exports.iter().find(|w| w.collector.name == name),
        }
    }

    /// Answer one request.
    pub fn answer(&self, req: &Request, out: &mut Answer) -> io::Result<()> {
        let json_type = "application/json";
        match req.path.as_str() {
            "/" | "/index.html" => out.whole(200, "text/html; charset=utf-8", PAGE.as_bytes()),
            "/view.js" => out.whole(200, "text/javascript; charset=utf-8", SCRIPT.as_bytes()),
            "/view.css" => out.whole(200, "text/css; charset=utf-8", STYLE.as_bytes()),
            "/api/stats" | "/api/map" | "/api/cells" | "/api/events" => {
                let Some(w) = self.pick(req) else {
                    return out.whole(404, "text/plain", b"404: no such export\n");
                };
                match req.path.as_str() {
                    "/api/stats" => {
                        let text = w.latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        out.whole(200, json_type, text.as_bytes())
                    }
                    "/api/cells" => out.whole(200, json_type, cells_json(&w.collector).as_bytes()),
                    "/api/map" => self.map(req, w, out),
                    _ => events(w, out),
                }
            }
            _ => out.whole(404, "text/plain", b"404: not found\n"),
        }
    }

    fn map(&self, req: &Request, w: &Watched, out: &mut Answer) -> io::Result<()> {
        let map = &w.collector.map;
        let (offset, length) = match (number(req, "offset"), number(req, "length")) {
            (Ok(o), Ok(l)) => (o.unwrap_or(0), l),
            (Err(e), _) | (_, Err(e)) => {
                return out.whole(400, "text/plain", format!("400: {e}\n").as_bytes())
            }
        };
        let limit = if length.is_some() {
            RANGE_PIECES
        } else {
            usize::MAX
        };
        let length = length.unwrap_or(u64::MAX);
        out.head(200, "application/json", None)?;
        if out.head_only() {
            return Ok(());
        }
        let mut buf = format!(
            "{{\"export\":{},\"size\":{},\"regions\":[",
            json!(w.collector.name),
            map.size()
        );
        let mut more = false;
        for (listed, (i, p)) in map.overlapping(offset, length).enumerate() {
            if listed == limit {
                more = true;
                break;
            }
            if listed > 0 {
                buf.push(',');
            }
            let mut v = json!({
                "offset": p.offset,
                "length": p.len,
                "kind": p.kind.name(),
                "read_bytes": w.collector.pieces.get(i).map_or(0, |k| k.read.load(std::sync::atomic::Ordering::Relaxed)),
            });
            if let serde_json::Value::Object(m) = &mut v {
                if p.kind == Kind::File {
                    m.insert("path".into(), json!(&*p.name));
                    m.insert("file_offset".into(), json!(p.file_offset));
                } else {
                    m.insert("name".into(), json!(&*p.name));
                }
                if let Some(within) = &p.within {
                    m.insert("within".into(), json!(&**within));
                }
            }
            buf.push_str(&v.to_string());
            if buf.len() > 64 * 1024 {
                out.body(buf.as_bytes())?;
                buf.clear();
            }
        }
        buf.push_str(&format!("],\"more\":{more}}}"));
        out.body(buf.as_bytes())
    }
}

/// The cells: their size and, per cell, the kind that holds most of it
/// (one letter: f file, m metadata, z free, u unknown), that piece's name
/// and, for a file, the offset in it.
fn cells_json(c: &Collector) -> String {
    let map = &c.map;
    let kinds: String = map
        .cells()
        .iter()
        .map(|cell| match cell.kind {
            Kind::File => 'f',
            Kind::Meta => 'm',
            Kind::Free => 'z',
            Kind::Unknown => 'u',
        })
        .collect();
    // The piece's name, in its partition if it lies in one.
    let names: Vec<String> = map
        .cells()
        .iter()
        .map(|cell| match map.pieces().get(cell.main) {
            Some(p) => match &p.within {
                Some(w) => format!("{w}: {}", p.name),
                None => p.name.to_string(),
            },
            None => String::new(),
        })
        .collect();
    // For a cell mostly holding a file: the offset in the file at the
    // cell's start (or where the file's piece begins in the cell).
    let file_offsets: Vec<Option<u64>> = map
        .cells()
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            let p = map.pieces().get(cell.main)?;
            let start = i as u64 * map.cell_size();
            (p.kind == Kind::File).then(|| p.file_offset + start.saturating_sub(p.offset))
        })
        .collect();
    json!({
        "export": c.name,
        "size": map.size(),
        "cell_size": map.cell_size(),
        "kinds": kinds,
        "names": names,
        "file_offsets": file_offsets,
    })
    .to_string()
}

/// `/api/events`: the figures as Server-Sent Events, each new one as it is
/// made, until the client leaves or the stream's time is up.
fn events(w: &Watched, out: &mut Answer) -> io::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    static STREAMS: AtomicUsize = AtomicUsize::new(0);
    struct Slot;
    impl Drop for Slot {
        fn drop(&mut self) {
            STREAMS.fetch_sub(1, Ordering::SeqCst);
        }
    }
    if STREAMS.fetch_add(1, Ordering::SeqCst) >= http::MAX_STREAMS {
        STREAMS.fetch_sub(1, Ordering::SeqCst);
        return out.whole(503, "text/plain", b"503: too many event streams open\n");
    }
    let _slot = Slot;
    out.head(200, "text/event-stream", None)?;
    if out.head_only() {
        return Ok(());
    }
    let end = Instant::now() + http::STREAM_TIME;
    out.extend(end + Duration::from_secs(1));
    // Reconnect after a second if the stream ends.
    out.body(b"retry: 1000\n\n")?;
    let mut last: Option<Arc<String>> = None;
    while Instant::now() < end {
        let now = w.latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &now)) {
            // JSON text has no newline: one data line.
            let mut ev = String::with_capacity(now.len() + 32);
            ev.push_str("event: stats\ndata: ");
            ev.push_str(&now);
            ev.push_str("\n\n");
            out.body(ev.as_bytes())?;
            last = Some(now);
        }
        std::thread::sleep(stats::TICK / 5);
    }
    Ok(())
}
