//! Progress of long jobs (`-o`, `pack`): a bar when stderr is a terminal,
//! plain lines every few seconds with `--progress` when it is not (a CI
//! log, a pipe), nothing with `--no-progress` or `-q`.
//!
//! The ETA is honest for sparse disks: a raw image's progress counts the
//! *data* still to copy (from the disk's block status), not its position,
//! since holes are skipped in no time and a position-based estimate races
//! through them and then stalls.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use synth::size::Size;
use synth::{BlockDev, ExtentList};

/// What `--progress`/`--no-progress`/`-q` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar on a terminal, nothing elsewhere (the default).
    Auto,
    /// A bar on a terminal, lines elsewhere (`--progress`).
    On,
    /// Nothing (`--no-progress`, `-q`).
    Off,
}

static MODE: OnceLock<ProgressMode> = OnceLock::new();

/// Set once, from the command line, before any job starts.
pub fn set_mode(mode: ProgressMode) {
    let _ = MODE.set(mode);
}

fn mode() -> ProgressMode {
    MODE.get().copied().unwrap_or(ProgressMode::Auto)
}

/// How often a line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);
/// A data map with more runs than this is not kept (a pathologically
/// fragmented disk): progress then counts positions.
const MAX_RUNS: usize = 1 << 20;

/// Where the data of a disk lies, to turn a position into data done.
#[derive(Debug)]
pub struct DataMap {
    /// Data runs in order: start, end, data bytes before the start.
    runs: Vec<(u64, u64, u64)>,
    total: u64,
}

impl DataMap {
    /// The data runs of `dev` from its block status; `None` when the
    /// device cannot tell (an error) or the map would be too large.
    pub fn of(dev: &dyn BlockDev) -> Option<DataMap> {
        let size = dev.size();
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        let mut total = 0u64;
        let mut pos = 0u64;
        while pos < size {
            let mut list = ExtentList::new(pos);
            dev.extents(pos, (size - pos).min(1 << 30), &mut list)
                .ok()?;
            if list.covered() == 0 {
                return None;
            }
            for (off, e) in list.iter_offsets() {
                if e.kind.reads_zero() || e.len == 0 {
                    continue;
                }
                match runs.last_mut() {
                    Some(last) if last.1 == off => last.1 += e.len,
                    _ => runs.push((off, off + e.len, total)),
                }
                total += e.len;
                if runs.len() > MAX_RUNS {
                    return None;
                }
            }
            pos = list.end();
        }
        Some(DataMap { runs, total })
    }

    /// Data bytes in the disk.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Data bytes before `pos`.
    pub fn done(&self, pos: u64) -> u64 {
        let i = self.runs.partition_point(|r| r.0 < pos);
        match i.checked_sub(1).map(|k| self.runs[k]) {
            None => 0,
            Some((start, end, before)) => before + pos.min(end) - start,
        }
    }
}

enum Show {
    Bar(indicatif::ProgressBar),
    Lines {
        what: String,
        started: Instant,
        last: Instant,
    },
    Off,
}

/// One job's progress.
pub struct Progress {
    show: Show,
    total: Option<u64>,
    data: Option<DataMap>,
    done: u64,
}

impl Progress {
    /// Progress of `what` (e.g. "writing disk.img"), `total` bytes if known.
    pub fn new(what: &str, total: Option<u64>) -> Progress {
        let show = match (mode(), std::io::stderr().is_terminal()) {
            (ProgressMode::Off, _) | (ProgressMode::Auto, false) => Show::Off,
            (_, true) => {
                let (bar, template) = match total {
                    Some(t) => (
                        indicatif::ProgressBar::new(t),
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    ),
                    None => (
                        indicatif::ProgressBar::no_length(),
                        "{spinner} {bytes} {bytes_per_sec}",
                    ),
                };
                bar.set_style(
                    indicatif::ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                Show::Bar(bar)
            }
            (ProgressMode::On, false) => Show::Lines {
                what: what.to_owned(),
                started: Instant::now(),
                last: Instant::now(),
            },
        };
        Progress {
            show,
            total,
            data: None,
            done: 0,
        }
    }

    /// A raw image of `dev`: progress in data bytes (see the module doc).
    pub fn for_image(what: &str, dev: &dyn BlockDev) -> Progress {
        let mut p = Progress::new(what, Some(dev.size()));
        if matches!(p.show, Show::Off) {
            return p;
        }
        if let Some(map) = DataMap::of(dev) {
            p.total = Some(map.total());
            if let Show::Bar(b) = &p.show {
                b.set_length(map.total());
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} of data {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
            }
            p.data = Some(map);
        }
        p
    }

    /// The job reached `pos` (a position in the disk or stream).
    pub fn set(&mut self, pos: u64) {
        self.done = match &self.data {
            Some(map) => map.done(pos),
            None => pos,
        };
        match &mut self.show {
            Show::Bar(b) => b.set_position(self.done),
            Show::Lines { last, .. } if last.elapsed() >= LINE_EVERY => {
                *last = Instant::now();
                self.line(false);
            }
            _ => {}
        }
    }

    /// One line; `end`: the job is over (how long it took, not an ETA).
    fn line(&self, end: bool) {
        let Show::Lines { what, started, .. } = &self.show else {
            return;
        };
        let secs = started.elapsed().as_secs_f64();
        // The average since the start: steadier than the last interval,
        // and no guess before there is anything to average.
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        if self.total == Some(0) {
            let _ = writeln!(std::io::stderr(), "disksynth: {what}: no data, only holes");
            return;
        }
        let unit = if self.data.is_some() { " of data" } else { "" };
        let mut text = match self.total {
            Some(t) if t > 0 => format!(
                "{what}: {:.0}% ({} of {}{unit})",
                self.done as f64 * 100.0 / t as f64,
                Size(self.done),
                Size(t)
            ),
            _ => format!("{what}: {}{unit}", Size(self.done)),
        };
        text += &format!(", {}/s", Size(rate as u64));
        if end {
            text += &format!(", took {}", human(secs));
        } else if let (Some(t), true) = (self.total, rate > 0.0) {
            let left = t.saturating_sub(self.done) as f64 / rate;
            text += &format!(", about {} left", human(left));
        }
        let _ = writeln!(std::io::stderr(), "disksynth: {text}");
    }

    /// The job ended (done or not): the bar goes away; lines say where it
    /// stopped.
    pub fn finish(self) {
        match &self.show {
            Show::Bar(b) => b.finish_and_clear(),
            Show::Lines { .. } => self.line(true),
            Show::Off => {}
        }
    }
}

fn human(secs: f64) -> String {
    if secs < 9.95 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as u64;
    match s {
        0..=99 => format!("{s} s"),
        100..=5999 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synth::{Backing, RegionMapBuilder};

    #[test]
    fn data_done_counts_only_data_before_the_position() {
        let mut b = RegionMapBuilder::new();
        b.push("hole", 1000, Backing::Zero).unwrap();
        b.push_bytes("a", vec![1u8; 500]).unwrap();
        b.push("hole", 2000, Backing::Zero).unwrap();
        b.push_bytes("b", vec![2u8; 300]).unwrap();
        let map = b.finish();
        let m = DataMap::of(&map).expect("a map");
        assert_eq!(m.total(), 800);
        assert_eq!(m.done(0), 0);
        assert_eq!(m.done(1000), 0);
        assert_eq!(m.done(1200), 200);
        assert_eq!(m.done(1500), 500);
        assert_eq!(m.done(3400), 500);
        assert_eq!(m.done(3600), 600);
        assert_eq!(m.done(3800), 800);
        assert_eq!(m.done(u64::MAX), 800);
    }

    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(human(4.44), "4.4 s");
        assert_eq!(human(42.4), "42 s");
        assert_eq!(human(125.0), "2 min 5 s");
        assert_eq!(human(7300.0), "2 h 1 min");
    }
}
