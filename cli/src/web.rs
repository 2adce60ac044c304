//! `--web ADDR:PORT`: the live web view (crate `web-view`) over the
//! exports a command serves. With `serve` and several exports, each is
//! watched and the page picks one (a menu; `?export=NAME` in the URLs).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use synth::{BlockDev, Export};
use web_view::{figures, WebView};

use crate::args::Source;

/// The address `--web` names: `ADDR:PORT`, `[V6]:PORT`, `localhost:PORT`,
/// or a bare `PORT` (loopback).
pub fn address(text: &str) -> Result<SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let mut addrs = text
        .to_socket_addrs()
        .with_context(|| format!("--web {text}: not ADDR:PORT (e.g. 127.0.0.1:8080)"))?;
    match addrs.next() {
        Some(a) => Ok(a),
        None => bail!("--web {text}: names no address"),
    }
}

/// Put the view's counting layer over `export` (named `name`), made from
/// `source`. The map shows the shared device's layout; a disk made per
/// client (tmpdisk) has none to show before a client comes, and opening
/// one here would run its command, so its map is unknown.
pub fn watch(
    web: &mut WebView,
    name: &str,
    export: Arc<dyn Export>,
    source: &Source,
) -> Result<Arc<dyn Export>> {
    let shared: Option<Arc<dyn BlockDev>> = match source {
        Source::Tmpdisk { .. } => None,
        _ => Some(export.open().context("--web: opening the disk to map it")?),
    };
    Ok(web.watch(name, export, shared.as_deref())?)
}

/// Show an xz view's cache figures in the web view (if one runs).
pub fn xz_figures(dev: &Arc<formats::xz::XzDev>) {
    let weak = Arc::downgrade(dev);
    figures::register(
        "xz",
        Box::new(move || {
            let s = weak.upgrade()?.stats();
            let mut v = vec![
                ("cache_hits", s.cache_hits),
                ("blocks_decoded", s.decodes),
                ("cached_bytes", s.cached_bytes),
            ];
            v.extend(figures::hit_pct(s.cache_hits, s.decodes).map(|p| ("cache_hit_pct", p)));
            Some(v)
        }),
    );
}

/// Show a qcow2 view's cache and file figures in the web view.
pub fn qcow2_figures(dev: &Arc<formats::qcow2::QcowDev>) {
    let weak = Arc::downgrade(dev);
    figures::register(
        "qcow2",
        Box::new(move || {
            let s = weak.upgrade()?.stats();
            let misses = s.l2_loads + s.decompressions;
            let mut v = vec![
                ("cache_hits", s.cache_hits),
                ("file_bytes", s.file_bytes),
                ("cached_bytes", s.cached_bytes),
            ];
            v.extend(figures::hit_pct(s.cache_hits, misses).map(|p| ("cache_hit_pct", p)));
            Some(v)
        }),
    );
}

/// Show what an HTTP origin sent in the web view.
pub fn http_figures(dev: &Arc<sources::http::HttpDev>) {
    let weak = Arc::downgrade(dev);
    figures::register(
        "http",
        Box::new(move || {
            let s = weak.upgrade()?.stats();
            Some(vec![
                ("origin_bytes", s.bytes),
                ("origin_requests", s.requests),
                ("retries", s.retries),
                ("readahead_hits", s.readahead_hits),
                ("readahead_wasted_bytes", s.readahead_wasted),
            ])
        }),
    );
}
