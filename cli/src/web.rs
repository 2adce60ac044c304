//! `--web ADDR:PORT`: the live web view (crate `web-view`) over the
//! exports a command serves. With `serve` and several exports, each is
//! watched and the page picks one (a menu; `?export=NAME` in the URLs).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use synth::{BlockDev, Export};
use web_view::WebView;

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
    Ok(web.watch(name, export, shared.as_deref(), None)?)
}
