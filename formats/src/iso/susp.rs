//! Rock Ridge: System Use Sharing Protocol entries (SUSP 1.12: `SP`, `CE`,
//! `ER`) and the RRIP 1.12 entries (`PX`, `PN`, `SL`, `NM`, `TF`), and the
//! placement of a record's entries in its System Use field, continued in
//! continuation areas (SUSP §5.1) when they do not fit.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::record::{both32, date7, SECTOR};

/// `CE` entry length (SUSP §5.1).
const CE_LEN: usize = 28;
/// An entry's payload limit: the length field is one byte.
const MAX_ENTRY: usize = 255;

fn entry(sig: &[u8; 2], body: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(4 + body.len());
    e.extend_from_slice(sig);
    e.push((4 + body.len()) as u8);
    e.push(1); // entry version
    e.extend_from_slice(body);
    e
}

/// `SP`: the SUSP indicator, first in the root's `.` record (SUSP §5.3).
pub(crate) fn sp() -> Vec<u8> {
    entry(b"SP", &[0xBE, 0xEF, 0])
}

/// `ER`: the extension reference for RRIP (SUSP §5.5, RRIP §4).
pub(crate) fn er() -> Vec<u8> {
    const ID: &[u8] = b"RRIP_1991A";
    const DES: &[u8] =
        b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
    const SRC: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";
    let mut body = vec![ID.len() as u8, DES.len() as u8, SRC.len() as u8, 1];
    body.extend_from_slice(ID);
    body.extend_from_slice(DES);
    body.extend_from_slice(SRC);
    entry(b"ER", &body)
}

/// `PX`: POSIX mode, links, owner, group and file serial number (RRIP §4.1.1).
pub(crate) fn px(mode: u32, nlink: u32, uid: u32, gid: u32, ino: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(40);
    for v in [mode, nlink, uid, gid, ino] {
        body.extend_from_slice(&both32(v));
    }
    entry(b"PX", &body)
}

/// `PN`: a device node's major and minor number (RRIP §4.1.2).
pub(crate) fn pn(rdev: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&both32(rustix::fs::major(rdev)));
    body.extend_from_slice(&both32(rustix::fs::minor(rdev)));
    entry(b"PN", &body)
}

/// `TF`: modification, access and attribute-change times, 7-byte form
/// (RRIP §4.1.6). All three are the mtime: a copy of a tree changes atime
/// and ctime, and the same tree must give the same bytes.
pub(crate) fn tf(mtime: i64) -> Vec<u8> {
    let mut body = vec![0x02 | 0x04 | 0x08]; // MODIFY | ACCESS | ATTRIBUTES
    for _ in 0..3 {
        body.extend_from_slice(&date7(mtime));
    }
    entry(b"TF", &body)
}

/// `NM` entries holding `name` (RRIP §4.1.4), split with the CONTINUE flag
/// when longer than one entry holds.
pub(crate) fn nm(name: &[u8]) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = name.chunks(MAX_ENTRY - 5).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut body = vec![u8::from(i + 1 < n)]; // CONTINUE
            body.extend_from_slice(c);
            entry(b"NM", &body)
        })
        .collect()
}

/// `SL` entries holding a symlink's `target` (RRIP §4.1.3): component
/// records (ROOT, CURRENT, PARENT or a name, long names continued with
/// the component CONTINUE flag), in as many entries as needed (the entry
/// CONTINUE flag on all but the last).
pub(crate) fn sl(target: &Path) -> Vec<Vec<u8>> {
    let bytes = target.as_os_str().as_bytes();
    // (flags, content) component records.
    let mut comps: Vec<(u8, &[u8])> = Vec::new();
    if bytes.starts_with(b"/") {
        comps.push((0x08, b"")); // ROOT
    }
    for part in bytes.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        match part {
            b"." => comps.push((0x02, b"")),
            b".." => comps.push((0x04, b"")),
            _ => comps.push((0, part)),
        }
    }
    // Room for component records in one SL entry: 5 header bytes.
    const ROOM: usize = MAX_ENTRY - 5;
    let mut bodies: Vec<Vec<u8>> = vec![Vec::new()];
    for (flags, mut content) in comps {
        loop {
            let body = bodies.last_mut().expect("never empty");
            let free = ROOM - body.len();
            if free < 3 {
                bodies.push(Vec::new());
                continue;
            }
            let take = content.len().min(free - 2);
            let more = take < content.len();
            body.push(flags | u8::from(more)); // component CONTINUE
            body.push(take as u8);
            body.extend_from_slice(&content[..take]);
            content = &content[take..];
            if !more {
                break;
            }
        }
    }
    let n = bodies.len();
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let mut body = vec![u8::from(i + 1 < n)];
            body.extend_from_slice(&b);
            entry(b"SL", &body)
        })
        .collect()
}

fn ce(block: u32, offset: u32, len: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(&both32(block));
    body.extend_from_slice(&both32(offset));
    body.extend_from_slice(&both32(len));
    entry(b"CE", &body)
}

/// The continuation areas of an image (SUSP §5.1): pieces packed into
/// sectors from `base`, none straddling a sector (Linux refuses those).
#[derive(Debug)]
pub(crate) struct Continuation {
    base: u32,
    bytes: Vec<u8>,
}

impl Continuation {
    /// An empty area starting at logical block `base`.
    pub(crate) fn new(base: u32) -> Self {
        Continuation {
            base,
            bytes: Vec::new(),
        }
    }

    /// Whole sectors the area takes.
    pub(crate) fn sectors(&self) -> u32 {
        self.bytes.len().div_ceil(SECTOR as usize) as u32
    }

    /// The area's bytes, whole sectors.
    pub(crate) fn into_bytes(mut self) -> Vec<u8> {
        self.bytes
            .resize(self.sectors() as usize * SECTOR as usize, 0);
        self.bytes
    }

    /// The System Use field for `entries` in a record with room for
    /// `room` bytes of it: all of them if they fit, else those that fit
    /// with a `CE` after them, the rest in continuation pieces (each ending
    /// with a `CE` to the next while more follow).
    pub(crate) fn place(&mut self, entries: Vec<Vec<u8>>, room: usize) -> Vec<u8> {
        let total: usize = entries.iter().map(Vec::len).sum();
        if total <= room {
            return entries.concat();
        }
        let mut inline = Vec::with_capacity(room);
        let mut rest = entries.into_iter().peekable();
        while let Some(e) = rest.peek() {
            if inline.len() + e.len() + CE_LEN > room {
                break;
            }
            inline.extend_from_slice(&rest.next().expect("peeked"));
        }
        // Pieces of at most one sector, a CE's room kept in each.
        let cap = SECTOR as usize - CE_LEN;
        let mut pieces: Vec<Vec<u8>> = vec![Vec::new()];
        for e in rest {
            if pieces.last().is_some_and(|p| p.len() + e.len() > cap) {
                pieces.push(Vec::new());
            }
            pieces
                .last_mut()
                .expect("never empty")
                .extend_from_slice(&e);
        }
        // Where each piece goes: (block, offset, length with its CE).
        let n = pieces.len();
        let mut at = Vec::with_capacity(n);
        let mut pos = self.bytes.len();
        for (i, p) in pieces.iter().enumerate() {
            let len = p.len() + if i + 1 < n { CE_LEN } else { 0 };
            let sector = SECTOR as usize;
            if pos % sector + len > sector {
                pos = pos.div_ceil(sector) * sector;
            }
            at.push((pos, len));
            pos += len;
        }
        let addr = |pos: usize| {
            (
                self.base + (pos / SECTOR as usize) as u32,
                (pos % SECTOR as usize) as u32,
            )
        };
        let (b, o) = addr(at[0].0);
        inline.extend_from_slice(&ce(b, o, at[0].1 as u32));
        for (i, mut p) in pieces.into_iter().enumerate() {
            if i + 1 < n {
                let (b, o) = addr(at[i + 1].0);
                p.extend_from_slice(&ce(b, o, at[i + 1].1 as u32));
            }
            self.bytes.resize(at[i].0, 0);
            self.bytes.extend_from_slice(&p);
        }
        inline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_that_fit_stay_inline() {
        let mut c = Continuation::new(100);
        let su = c.place(vec![px(0o100644, 1, 0, 0, 1), tf(0)], 200);
        assert_eq!(su.len(), 44 + 26);
        assert_eq!(c.sectors(), 0);
    }

    #[test]
    fn overflow_goes_to_a_continuation_area_named_by_ce() {
        let mut c = Continuation::new(100);
        c.place(vec![er()], 10); // a first piece, so offsets are not 0
        let name = vec![b'x'; 600];
        let mut entries = vec![px(0o100644, 1, 0, 0, 1)];
        entries.extend(nm(&name));
        let su = c.place(entries, 100);
        assert_eq!(&su[..2], b"PX");
        assert_eq!(&su[44..46], b"CE");
        let block = u32::from_le_bytes(su[48..52].try_into().unwrap());
        let offset = u32::from_le_bytes(su[56..60].try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(su[64..68].try_into().unwrap()) as usize;
        assert_eq!(block, 100);
        assert_eq!(offset, er().len());
        let bytes = c.into_bytes();
        let area = &bytes[offset..offset + len];
        assert_eq!(&area[..2], b"NM");
        assert_eq!(area[4], 1, "first NM continues");
        assert_eq!(len, 3 * 5 + 600);
    }

    #[test]
    fn continuation_pieces_never_straddle_a_sector() {
        let mut c = Continuation::new(0);
        for _ in 0..20 {
            let su = c.place(nm(&[b'y'; 1000]), 50);
            let offset = u32::from_le_bytes(su[12..16].try_into().unwrap()) as usize;
            let len = u32::from_le_bytes(su[20..24].try_into().unwrap()) as usize;
            assert!(offset + len <= 2048, "{offset} + {len}");
        }
    }

    #[test]
    fn symlink_components() {
        let e = sl(Path::new("/usr/../lib/./x"));
        assert_eq!(e.len(), 1);
        let want: &[u8] = &[
            0, 0x08, 0, 0, 3, b'u', b's', b'r', 0x04, 0, 0, 3, b'l', b'i', b'b', 0x02, 0, 0, 1,
            b'x',
        ];
        assert_eq!(&e[0][4..], want);
        let long = sl(Path::new(&"z".repeat(600)));
        assert_eq!(long.len(), 3);
        assert_eq!(long[0][4], 1, "entry CONTINUE");
        assert_eq!(long[0][5], 1, "component CONTINUE");
        assert_eq!(long[2][4], 0);
    }
}
