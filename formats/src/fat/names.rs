//! FAT directory names: how one directory's host file names become VFAT long names plus
//! unique 8.3 short aliases.
//!
//! Every FAT file has a short (8.3) directory entry; Windows 95 and later add a chain of
//! long-name (LFN) entries in front of it so that names can be longer, mixed case and Unicode.
//! References are to the Microsoft "FAT32 File System Specification" 1.03 ("the spec"):
//!
//! * §6.1 (`DIR_Name`): the 11-byte short name, 8 base + 3 extension bytes, space padded,
//!   upper case, and the bytes that are legal in it.
//! * §7 "Long File Name Implementation": the 32-byte LFN entry layout (`LDIR_Ord`, `LDIR_Name1..3`,
//!   `LDIR_Attr` = `ATTR_LONG_NAME`, `LDIR_Chksum`), the 0x40 `LAST_LONG_ENTRY` flag, the
//!   `ChkSum()` routine, the 0x0000 terminator + 0xFFFF padding rule, the characters that are
//!   illegal even in long names, the 255-character limit, and the "Basis-Name Generation
//!   Algorithm" and "Numeric-Tail Generation Algorithm" used to derive short aliases.
//!
//! The work is done per directory because short aliases only have to be unique within their
//! directory, and because FAT lookups are case-insensitive: two host names that differ only in
//! letter case (`Makefile`, `makefile`; common in Linux trees), or that become the same once
//! characters FAT cannot store are replaced (`a:b`, `a_b`), cannot both exist in one FAT
//! directory. [`assign`] keeps the first in input order (the tree's bytewise sorted order) and,
//! as Windows does when it copies such a pair, gives each later one a new long name with a
//! numeric tail (`makefile~2`, `notes~2.txt`) that is unique case-insensitively in the
//! directory; the caller warns naming both. With [`Collisions::Error`] (`--strict-names`) the
//! first such pair is an error instead. Nothing is ever silently hidden.
//!
//! Decisions beyond the spec's letter (so generated images are deterministic and portable):
//!
//! * `long` is `None` exactly when the host name equals the display form of its short name
//!   (`BASE` or `BASE.EXT`, upper case, only short-name-legal bytes, no spaces). Everything else,
//!   including names that differ only in letter case (`readme.txt`), gets LFN entries.
//! * Numeric tails count `~1`, `~2`, … sequentially (the spec's reference sequence) rather than
//!   switching to Windows' hash-based tails after `~4`; this keeps output a pure function of input.
//! * Windows ignores trailing periods and spaces in long names, so for the case-insensitive
//!   collision check `foo.` and `foo` are the same name. The long name itself is stored as given.
//!   A name made only of periods and spaces is [`NameError::Invalid`].
//! * Reserved DOS device names (`CON`, `PRN`, …) are not treated specially.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

/// A directory entry's names as FAT stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatName {
    /// The 8.3 name as stored in a short directory entry: 11 bytes, space-padded, upper case,
    /// only bytes legal in short names (MS FAT spec §6.1).
    pub short: [u8; 11],
    /// The long name in UTF-16 when LFN entries are needed (whenever the host name is not exactly
    /// its own short name, e.g. lower case, longer than 8.3, illegal short-name characters,
    /// non-ASCII); `None` when the short entry alone reproduces the name exactly.
    pub long: Option<Vec<u16>>,
    /// True when characters that FAT cannot hold even in a long name were replaced (see below);
    /// the caller logs a warning.
    pub replaced: bool,
    /// `Some(i)` when the host name is the same FAT name as input `i`, an earlier name of the
    /// directory (case-insensitive, after replacement): this entry got a new long name with a
    /// numeric tail instead (see [`Collisions::Rename`]); the caller logs a warning naming both.
    pub collides_with: Option<usize>,
}

/// What [`assign`] does with a host name that FAT sees as the same name as an earlier one in
/// the directory (FAT lookups are case-insensitive; replaced characters merge names too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Collisions {
    /// Keep the first; rename each later one `stem~N[.ext]` (N = 2, 3, …: the first free one,
    /// unique case-insensitively against every other name of the directory, renamed ones
    /// included), shortened to fit FAT's 255-unit long names.
    #[default]
    Rename,
    /// Fail with [`NameError::CaseCollision`] (`--strict-names`).
    Error,
}

/// Why a directory's names cannot be represented in FAT.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// Two host names are the same to FAT's case-insensitive lookup (also after replacement).
    #[error("\"{first}\" and \"{second}\" differ only in letter case (or in characters FAT cannot store); FAT would see one name (without --strict-names the later one is stored as NAME~N)")]
    CaseCollision { first: String, second: String },
    /// The name needs more UTF-16 units than the 20 LFN entries of a long name can hold.
    #[error("\"{name}\" is {units} UTF-16 units long; FAT long names hold at most 255")]
    TooLong { name: String, units: usize },
    /// The name can never be a FAT name (empty, only periods/spaces, or no numeric tail left).
    #[error("\"{name}\": {reason}")]
    Invalid { name: String, reason: &'static str },
}

/// Spec §7: a long name holds at most 255 characters (UTF-16 units).
const MAX_LONG_UNITS: usize = 255;
/// Spec §7 "Numeric-Tail Generation Algorithm": tails run from `~1` to `~999999`.
const MAX_TAIL: u32 = 999_999;
/// Spec §7: `ATTR_LONG_NAME` = READ_ONLY | HIDDEN | SYSTEM | VOLUME_ID.
const ATTR_LONG_NAME: u8 = 0x0F;
/// Spec §7: `LAST_LONG_ENTRY`, or-ed into the ordinal of the final (first on disk) LFN entry.
const LAST_LONG_ENTRY: u8 = 0x40;
/// Spec §7: each LFN entry carries 5 + 6 + 2 = 13 UTF-16 units of the name.
const UNITS_PER_ENTRY: usize = 13;

/// Spec §7: characters that are illegal even in a long name (plus all control characters).
fn illegal_in_long_name(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1F}' | '"' | '*' | '/' | ':' | '<' | '>' | '?' | '\\' | '|'
    )
}

/// Spec §6.1: bytes legal in a short name, apart from the space used as padding (spaces are
/// stripped by the basis-name algorithm, so generated names never contain one inside).
fn legal_in_short_name(b: u8) -> bool {
    b.is_ascii_uppercase()
        || b.is_ascii_digit()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'-'
                | b'@'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'}'
                | b'~'
        )
}

/// The result of the spec's basis-name generation for one long name.
struct Basis {
    /// Primary portion, 1..=8 legal bytes.
    base: Vec<u8>,
    /// Extension, 0..=3 legal bytes.
    ext: Vec<u8>,
    /// True when the conversion lost information (anything beyond upper-casing), so the spec
    /// requires a numeric tail.
    lossy: bool,
}

impl Basis {
    /// The 11-byte `DIR_Name` for this basis without a tail (spec §6.1 layout: base in bytes
    /// 0..8, extension in 8..11, both space padded).
    fn short(&self) -> [u8; 11] {
        pack(&self.base, &self.ext)
    }

    /// The name a short-only entry displays: `BASE` or `BASE.EXT`.
    fn display(&self) -> String {
        let mut s: String = self.base.iter().map(|&b| char::from(b)).collect();
        if !self.ext.is_empty() {
            s.push('.');
            s.extend(self.ext.iter().map(|&b| char::from(b)));
        }
        s
    }

    /// Key shared by all bases whose numeric-tail candidates are identical: every candidate
    /// keeps at most the first 6 base bytes (`XXXXXX~N`), so the first 6 bytes plus the
    /// extension decide the whole candidate sequence. Space padded (spaces never occur inside).
    fn tail_key(&self) -> [u8; 9] {
        let mut key = [b' '; 9];
        let n = self.base.len().min(6);
        key[..n].copy_from_slice(&self.base[..n]);
        key[6..6 + self.ext.len()].copy_from_slice(&self.ext);
        key
    }
}

/// Lays out base and extension as `DIR_Name` (spec §6.1): 8 + 3 bytes, space padded.
fn pack(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut short = [b' '; 11];
    short[..base.len()].copy_from_slice(base);
    short[8..8 + ext.len()].copy_from_slice(ext);
    short
}

/// Maps one character of the long name to a short-name byte (spec §7 basis-name steps 1 and 3:
/// upper-case, then replace characters not representable or not legal with `_`). Returns the
/// byte and whether the mapping was lossy.
fn short_byte(c: char) -> (u8, bool) {
    if !c.is_ascii() {
        // Not in the OEM code page we emit (plain ASCII): lossy.
        return (b'_', true);
    }
    let b = (c as u8).to_ascii_uppercase();
    if legal_in_short_name(b) {
        (b, false)
    } else {
        (b'_', true)
    }
}

/// Spec §7 "Basis-Name Generation Algorithm" for a host name.
fn basis(name: &str) -> Basis {
    let mut lossy = false;
    // Step 2: strip all spaces and all leading periods.
    let mut stripped = String::with_capacity(name.len());
    for c in name.chars() {
        if c == ' ' || (c == '.' && stripped.is_empty()) {
            lossy = true;
        } else {
            stripped.push(c);
        }
    }
    // The primary portion is everything before the LAST period; the extension follows it.
    let (primary, extension) = match stripped.rfind('.') {
        Some(dot) => (&stripped[..dot], &stripped[dot + 1..]),
        None => (stripped.as_str(), ""),
    };

    let mut base = Vec::with_capacity(8);
    for c in primary.chars() {
        if c == '.' {
            // Embedded periods cannot be stored in a short name.
            lossy = true;
            continue;
        }
        if base.len() == 8 {
            lossy = true;
            break;
        }
        let (b, lost) = short_byte(c);
        lossy |= lost;
        base.push(b);
    }
    if base.is_empty() {
        base.push(b'_');
        lossy = true;
    }

    let mut ext = Vec::with_capacity(3);
    for c in extension.chars() {
        if ext.len() == 3 {
            lossy = true;
            break;
        }
        let (b, lost) = short_byte(c);
        lossy |= lost;
        ext.push(b);
    }

    Basis { base, ext, lossy }
}

/// Spec §7 "Numeric-Tail Generation Algorithm": the short name with tail `~n`, truncating the
/// base so that base + `~n` fits in 8 bytes.
fn with_tail(basis: &Basis, n: u32) -> [u8; 11] {
    let tail = format!("~{n}");
    let keep = basis.base.len().min(8usize.saturating_sub(tail.len()));
    let mut base = Vec::with_capacity(8);
    base.extend_from_slice(&basis.base[..keep]);
    base.extend_from_slice(tail.as_bytes());
    pack(&base, &basis.ext)
}

/// The key under which FAT's case-insensitive lookup sees a (replaced) long name: upper case,
/// trailing periods and spaces ignored (Windows ignores them when opening a name).
fn lookup_key(long: &str) -> String {
    long.trim_end_matches(['.', ' '])
        .chars()
        .flat_map(char::to_uppercase)
        .collect()
}

/// One host name after validation and replacement, before its short name is chosen.
struct Prepared {
    /// Replaced long name.
    long: String,
    replaced: bool,
    basis: Basis,
    /// The host name is exactly its own 8.3 name: no LFN, short name reserved first.
    exact: bool,
}

fn prepare(name: &str) -> Result<Prepared, NameError> {
    if name.is_empty() {
        return Err(NameError::Invalid {
            name: name.to_owned(),
            reason: "empty names cannot be stored",
        });
    }
    if name.chars().all(|c| c == '.' || c == ' ') {
        return Err(NameError::Invalid {
            name: name.to_owned(),
            reason: "a name made only of periods and spaces cannot be stored in FAT",
        });
    }
    let units = name.encode_utf16().count();
    if units > MAX_LONG_UNITS {
        return Err(NameError::TooLong {
            name: name.to_owned(),
            units,
        });
    }
    let mut replaced = false;
    let long: String = name
        .chars()
        .map(|c| {
            if illegal_in_long_name(c) {
                replaced = true;
                '_'
            } else {
                c
            }
        })
        .collect();
    // The basis comes from the host name, so a replaced character counts as lossy there too.
    let basis = basis(name);
    let exact = !basis.lossy && basis.display() == long;
    Ok(Prepared {
        long,
        replaced,
        basis,
        exact,
    })
}

/// The long name `long` with numeric tail `n`: `stem~n.ext` when `long` has an extension (so the
/// file keeps its type for programs that go by it), else `long~n`; the stem is cut (never inside
/// a surrogate pair) so the result fits the 255 UTF-16 units of a long name (spec §7).
fn with_long_tail(long: &str, n: u32) -> String {
    let tail = format!("~{n}");
    let units = |s: &str| s.encode_utf16().count();
    let (stem, ext) = match long.rfind('.') {
        Some(dot) if dot > 0 && dot + 1 < long.len() => long.split_at(dot),
        _ => (long, ""),
    };
    // An extension too long to keep beside any stem is treated as part of the stem.
    let (stem, ext) = if units(ext) + tail.len() >= MAX_LONG_UNITS {
        (long, "")
    } else {
        (stem, ext)
    };
    let budget = MAX_LONG_UNITS - tail.len() - units(ext);
    let mut out = String::with_capacity(long.len() + tail.len());
    let mut used = 0;
    for c in stem.chars() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        out.push(c);
    }
    out.push_str(&tail);
    out.push_str(ext);
    out
}

/// Assign FAT names to all entries of ONE directory, given in a fixed order; the result is in the
/// same order and is deterministic (same input → same output). `names` are host names (never "."
/// or ".."). Names FAT sees as one are handled as `collisions` says.
///
/// # Errors
///
/// The first problem found, in input order: [`NameError::Invalid`] (empty, only periods and
/// spaces, or tails exhausted), [`NameError::TooLong`], or (with [`Collisions::Error`] only)
/// [`NameError::CaseCollision`].
pub fn assign(names: &[&str], collisions: Collisions) -> Result<Vec<FatName>, NameError> {
    // Pass 1: validate, replace, detect case-insensitive collisions (O(n) with a HashMap).
    let mut prepared = Vec::with_capacity(names.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(names.len());
    let mut collides_with = vec![None; names.len()];
    for (i, &name) in names.iter().enumerate() {
        let p = prepare(name)?;
        match seen.entry(lookup_key(&p.long)) {
            Entry::Occupied(first) => match collisions {
                Collisions::Error => {
                    return Err(NameError::CaseCollision {
                        first: names[*first.get()].to_owned(),
                        second: name.to_owned(),
                    });
                }
                Collisions::Rename => collides_with[i] = Some(*first.get()),
            },
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
        prepared.push(p);
    }

    // Pass 1b: rename the later name of each colliding pair, in input order. `seen` holds every
    // name kept so far, so the new name is unique against names before and after it, and
    // against other renamed ones. The new name is then prepared like a host name (its short
    // alias comes from it); the replacement flag of the original stays for the warning.
    for (i, first) in collides_with.iter().enumerate() {
        if first.is_none() {
            continue;
        }
        let mut n = 2;
        let renamed = loop {
            if n > MAX_TAIL {
                return Err(NameError::Invalid {
                    name: names[i].to_owned(),
                    reason: "collides with another name and all tails ~2..~999999 are in use",
                });
            }
            let candidate = with_long_tail(&prepared[i].long, n);
            n += 1;
            if let Entry::Vacant(slot) = seen.entry(lookup_key(&candidate)) {
                slot.insert(i);
                break candidate;
            }
        };
        let replaced = prepared[i].replaced;
        prepared[i] = prepare(&renamed)?;
        prepared[i].replaced = replaced;
    }
    drop(seen);

    // Pass 2: reserve the short names of entries that are exactly their own 8.3 name, so no
    // generated alias can take them. They are distinct because their long names (all unique
    // case-insensitively after pass 1b) are those very short names.
    let mut taken: HashSet<[u8; 11]> = HashSet::with_capacity(names.len());
    for p in prepared.iter().filter(|p| p.exact) {
        taken.insert(p.basis.short());
    }

    // Pass 3: everything else in input order. `next_tail` remembers, per candidate sequence,
    // the first tail not yet known to be taken, so each directory costs O(n) amortised.
    let mut next_tail: HashMap<[u8; 9], u32> = HashMap::new();
    let mut out = Vec::with_capacity(prepared.len());
    for ((p, &name), collides_with) in prepared.into_iter().zip(names).zip(collides_with) {
        let short = if p.exact {
            p.basis.short()
        } else if !p.basis.lossy && taken.insert(p.basis.short()) {
            // Spec §7: a lossless basis that is still free is used without a tail.
            p.basis.short()
        } else {
            let counter = next_tail.entry(p.basis.tail_key()).or_insert(1);
            loop {
                if *counter > MAX_TAIL {
                    return Err(NameError::Invalid {
                        name: name.to_owned(),
                        reason: "all numeric tails ~1..~999999 for its short name are in use",
                    });
                }
                let candidate = with_tail(&p.basis, *counter);
                *counter += 1;
                if taken.insert(candidate) {
                    break candidate;
                }
            }
        };
        out.push(FatName {
            short,
            long: (!p.exact).then(|| p.long.encode_utf16().collect()),
            replaced: p.replaced,
            collides_with,
        });
    }
    Ok(out)
}

/// How a short-only entry's name reads: `BASE` or `BASE.EXT` (spec §6.1: both parts space
/// padded, the period implied).
pub fn short_display(short: &[u8; 11]) -> String {
    let part = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_owned();
    let (base, ext) = (part(&short[..8]), part(&short[8..]));
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// The LFN checksum of a short name (MS FAT spec: ChkSum).
///
/// Spec §7 `ChkSum()`: an unsigned-byte rotate-right-by-one of the running sum, plus the next
/// name byte, over all 11 bytes of `DIR_Name`.
pub fn checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// The LFN directory entries for `long` (UTF-16, at most 255 units), in on-disk order: the entry with the
/// highest ordinal first, with the 0x40 "last logical" flag set on it; attribute 0x0F, type 0, first-cluster 0,
/// checksum of `short`; name padded with one 0x0000 terminator then 0xFFFF (no terminator when the name fills the last entry exactly).
///
/// An empty `long` yields no entries. Callers must keep `long` within 255 units (as [`assign`]
/// guarantees); longer input is not rejected but is not a valid FAT long name.
pub fn lfn_entries(long: &[u16], short: &[u8; 11]) -> Vec<[u8; 32]> {
    let count = long.len().div_ceil(UNITS_PER_ENTRY);
    // Spec §7: the last entry's unused slots hold one 0x0000 terminator, then 0xFFFF.
    let mut units = Vec::with_capacity(count * UNITS_PER_ENTRY);
    units.extend_from_slice(long);
    if units.len() < count * UNITS_PER_ENTRY {
        units.push(0x0000);
    }
    units.resize(count * UNITS_PER_ENTRY, 0xFFFF);

    let sum = checksum(short);
    let mut entries = Vec::with_capacity(count);
    for (i, piece) in units.chunks_exact(UNITS_PER_ENTRY).enumerate().rev() {
        let mut e = [0u8; 32];
        // LDIR_Ord (offset 0): 1-based ordinal; LAST_LONG_ENTRY on the highest one.
        let mut ord = (i + 1) as u8;
        if i + 1 == count {
            ord |= LAST_LONG_ENTRY;
        }
        e[0] = ord;
        // LDIR_Name1 (offset 1, 5 units), LDIR_Name2 (offset 14, 6 units),
        // LDIR_Name3 (offset 28, 2 units); all little-endian UTF-16.
        let slots = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2));
        for (offset, unit) in slots.zip(piece) {
            e[offset..offset + 2].copy_from_slice(&unit.to_le_bytes());
        }
        e[11] = ATTR_LONG_NAME; // LDIR_Attr
        e[12] = 0; // LDIR_Type: 0 = name sub-component
        e[13] = sum; // LDIR_Chksum
                     // LDIR_FstClusLO (offset 26..28) must be zero: already zero.
        entries.push(e);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An 11-byte short name written the way it sits on disk, e.g. `"README  TXT"`.
    fn sn(s: &str) -> [u8; 11] {
        s.as_bytes()
            .try_into()
            .expect("short name literal must be 11 bytes")
    }

    fn utf16(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    /// Every short name is legal (spec §6.1) and no two are equal.
    fn assert_valid_shorts(names: &[FatName]) {
        let mut seen = HashSet::new();
        for n in names {
            let shown = String::from_utf8_lossy(&n.short).into_owned();
            for part in [&n.short[..8], &n.short[8..]] {
                let used = part.iter().take_while(|&&b| b != b' ').count();
                assert!(
                    part[..used].iter().all(|&b| legal_in_short_name(b)),
                    "illegal byte in {shown:?}"
                );
                assert!(
                    part[used..].iter().all(|&b| b == b' '),
                    "inner space in {shown:?}"
                );
            }
            assert_ne!(n.short[0], b' ', "empty base in {shown:?}");
            assert!(seen.insert(n.short), "duplicate short name {shown:?}");
        }
    }

    /// `assign` that must succeed, with the invariants checked.
    fn ok(names: &[&str]) -> Vec<FatName> {
        let out = assign(names, Collisions::Rename).expect("assign should succeed");
        assert_eq!(out.len(), names.len());
        assert_valid_shorts(&out);
        out
    }

    /// Single names: (host name, expected short, whether an LFN is expected).
    #[test]
    fn single_names_map_to_expected_short_and_long() {
        let table: &[(&str, &str, bool)] = &[
            ("readme.txt", "README  TXT", true),
            ("README.TXT", "README  TXT", false),
            ("A", "A          ", false),
            ("FOO.C", "FOO     C  ", false),
            ("HELLO!.$$$", "HELLO!  $$$", false),
            ("LONGFI~1.TXT", "LONGFI~1TXT", false),
            ("Makefile", "MAKEFILE   ", true),
            ("longfilename.txt", "LONGFI~1TXT", true),
            ("index.html", "INDEX~1 HTM", true),
            (".bashrc", "BASHRC~1   ", true),
            ("a.b.c", "AB~1    C  ", true),
            ("x.tar.gz", "XTAR~1  GZ ", true),
            ("my file.txt", "MYFILE~1TXT", true),
            ("a b", "AB~1       ", true),
            ("é.txt", "_~1     TXT", true),
            ("日本語.txt", "___~1   TXT", true),
            ("😀.png", "_~1     PNG", true),
            ("a+b=c.txt", "A_B_C~1 TXT", true),
            ("[x];y,z", "_X__Y_~1   ", true),
            ("foo.", "FOO        ", true),
        ];
        for &(name, short, has_long) in table {
            let out = ok(&[name]);
            let got = &out[0];
            assert_eq!(
                String::from_utf8_lossy(&got.short),
                short,
                "short name of {name:?}"
            );
            let want_long = has_long.then(|| utf16(name));
            assert_eq!(got.long, want_long, "long name of {name:?}");
            assert!(!got.replaced, "{name:?} needs no replacement");
        }
    }

    #[test]
    fn emoji_long_name_keeps_surrogate_pair() {
        let out = ok(&["😀.png"]);
        let long = out[0].long.as_deref().expect("needs LFN");
        assert_eq!(long, &[0xD83D, 0xDE00, 0x2E, 0x70, 0x6E, 0x67]);
    }

    #[test]
    fn same_basis_gets_increasing_tails() {
        let out = ok(&[
            "longfilename1.txt",
            "longfilename2.txt",
            "longfilename3.txt",
        ]);
        let shorts: Vec<_> = out.iter().map(|n| n.short).collect();
        assert_eq!(
            shorts,
            [sn("LONGFI~1TXT"), sn("LONGFI~2TXT"), sn("LONGFI~3TXT")]
        );
    }

    #[test]
    fn tail_of_two_digits_shortens_base() {
        let names: Vec<String> = (0..10).map(|i| format!("longfilename{i}.txt")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let out = ok(&refs);
        assert_eq!(out[8].short, sn("LONGFI~9TXT"));
        assert_eq!(out[9].short, sn("LONGF~10TXT"));
    }

    #[test]
    fn different_extensions_count_tails_separately() {
        let out = ok(&["longfilename.txt", "longfilename.doc", "longfilename2.txt"]);
        assert_eq!(out[0].short, sn("LONGFI~1TXT"));
        assert_eq!(out[1].short, sn("LONGFI~1DOC"));
        assert_eq!(out[2].short, sn("LONGFI~2TXT"));
    }

    #[test]
    fn literal_short_name_is_reserved_before_aliases() {
        for names in [
            ["LONGFI~1.TXT", "longfilename.txt"],
            ["longfilename.txt", "LONGFI~1.TXT"],
        ] {
            let out = ok(&names);
            let (lit, alias) = if names[0] == "LONGFI~1.TXT" {
                (&out[0], &out[1])
            } else {
                (&out[1], &out[0])
            };
            assert_eq!(lit.short, sn("LONGFI~1TXT"));
            assert_eq!(lit.long, None);
            assert_eq!(alias.short, sn("LONGFI~2TXT"));
            assert_eq!(alias.long, Some(utf16("longfilename.txt")));
        }
    }

    #[test]
    fn lossless_basis_already_taken_by_alias_gets_a_tail() {
        let out = ok(&["longfilename.txt", "longfi~1.txt"]);
        assert_eq!(out[0].short, sn("LONGFI~1TXT"));
        assert_eq!(out[1].short, sn("LONGFI~2TXT"));
        assert_eq!(out[1].long, Some(utf16("longfi~1.txt")));
    }

    #[test]
    fn case_only_names_use_basis_without_tail_when_free() {
        let out = ok(&["Readme.md", "Makefile", "src"]);
        assert_eq!(out[0].short, sn("README  MD "));
        assert_eq!(out[1].short, sn("MAKEFILE   "));
        assert_eq!(out[2].short, sn("SRC        "));
        assert!(out.iter().all(|n| n.long.is_some()));
    }

    #[test]
    fn illegal_long_name_characters_are_replaced() {
        let out = ok(&["a:b"]);
        assert!(out[0].replaced);
        assert_eq!(out[0].long, Some(utf16("a_b")));
        assert_eq!(out[0].short, sn("A_B~1      "));

        let out = ok(&["x\u{1}y*?.txt"]);
        assert!(out[0].replaced);
        assert_eq!(out[0].long, Some(utf16("x_y__.txt")));
        assert_eq!(out[0].short, sn("X_Y__~1 TXT"));

        let out = ok(&["A_B"]);
        assert!(!out[0].replaced);
        assert_eq!(out[0].long, None);
    }

    #[test]
    fn length_limit_counts_utf16_units() {
        let max = "a".repeat(255);
        let out = ok(&[&max]);
        assert_eq!(out[0].long.as_ref().map(Vec::len), Some(255));
        assert_eq!(out[0].short, sn("AAAAAA~1   "));

        let over = "a".repeat(256);
        assert_eq!(
            assign(&[&over], Collisions::Rename),
            Err(NameError::TooLong {
                name: over.clone(),
                units: 256
            })
        );

        // 127 emoji = 254 units (+1 ASCII = 255) fits; 128 emoji = 256 units does not.
        let fits = format!("{}a", "😀".repeat(127));
        assert_eq!(ok(&[&fits])[0].long.as_ref().map(Vec::len), Some(255));
        let pairs = "😀".repeat(128);
        assert!(matches!(
            assign(&[&pairs], Collisions::Rename),
            Err(NameError::TooLong { units: 256, .. })
        ));
    }

    #[test]
    fn strict_case_collisions_name_both_originals_in_input_order() {
        let table: &[(&[&str], &str, &str)] = &[
            (&["Foo", "bar", "foo"], "Foo", "foo"),
            (&["a:b", "a_b"], "a:b", "a_b"),
            (&["README.TXT", "readme.txt"], "README.TXT", "readme.txt"),
            (&["straße", "STRASSE"], "straße", "STRASSE"),
            (&["foo", "foo."], "foo", "foo."),
        ];
        for &(names, first, second) in table {
            assert_eq!(
                assign(names, Collisions::Error),
                Err(NameError::CaseCollision {
                    first: first.to_owned(),
                    second: second.to_owned()
                }),
                "{names:?}"
            );
        }
        let msg = assign(&["Foo", "foo"], Collisions::Error)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"Foo\" and \"foo\""), "{msg}");
    }

    /// The long name a client sees: the LFN, or the short entry's `BASE[.EXT]`.
    fn shown(n: &FatName) -> String {
        match &n.long {
            Some(l) => String::from_utf16(l).unwrap(),
            None => short_display(&n.short),
        }
    }

    /// Every name is unique to FAT's case-insensitive lookup.
    fn assert_unique_longs(out: &[FatName]) {
        let mut seen = HashSet::new();
        for n in out {
            let s = shown(n);
            assert!(
                s.encode_utf16().count() <= MAX_LONG_UNITS,
                "{s:?} is too long"
            );
            assert!(
                seen.insert(lookup_key(&s)),
                "{s:?} twice (case-insensitively)"
            );
        }
    }

    #[test]
    fn case_collisions_keep_the_first_and_rename_the_later_ones() {
        // Bytewise order, as the tree gives them: upper case sorts first.
        let names = [
            "Makefile", "README", "ReadMe", "makefile", "readme", "readme~3",
        ];
        let out = ok(&names);
        assert_unique_longs(&out);
        let got: Vec<String> = out.iter().map(shown).collect();
        assert_eq!(
            got,
            [
                "Makefile",
                "README",
                "ReadMe~2",
                "makefile~2",
                "readme~4",
                "readme~3"
            ]
        );
        let with: Vec<Option<usize>> = out.iter().map(|n| n.collides_with).collect();
        assert_eq!(with, [None, None, Some(1), Some(0), Some(1), None]);
        // The kept names keep their usual short names; renamed ones get aliases of their own.
        assert_eq!(out[0].short, sn("MAKEFILE   "));
        assert_eq!(out[1].short, sn("README     "));
        assert_eq!(out[1].long, None);
        assert_eq!(out[3].short, sn("MAKEFI~1   "));
    }

    #[test]
    fn renamed_names_keep_their_extension_and_avoid_every_other_name() {
        let out = ok(&["Notes.TXT", "notes.txt", "notes~2.txt", "NOTES~3.TXT"]);
        assert_unique_longs(&out);
        assert_eq!(shown(&out[1]), "notes~4.txt");
        assert_eq!(out[1].collides_with, Some(0));
        assert_eq!(out[3].long, None, "an exact 8.3 name stays short-only");
        // Several renamed names in one directory are unique among themselves too.
        let out = ok(&["A", "a", "B", "b", "a~2"]);
        assert_unique_longs(&out);
        assert_eq!(shown(&out[1]), "a~3");
        assert_eq!(shown(&out[3]), "b~2");
    }

    #[test]
    fn replacement_collisions_are_renamed_too() {
        // Today's `a:b` is stored as `a_b`, which a host `a_b` also is.
        let out = ok(&["a:b", "a_b"]);
        assert_unique_longs(&out);
        assert_eq!(shown(&out[0]), "a_b");
        assert!(out[0].replaced);
        assert_eq!(shown(&out[1]), "a_b~2");
        assert_eq!(out[1].collides_with, Some(0));
        assert!(!out[1].replaced);
        // Both replaced into one name: the second keeps its replaced flag.
        let out = ok(&["x*y", "x?y", "x_y"]);
        assert_unique_longs(&out);
        let got: Vec<String> = out.iter().map(shown).collect();
        assert_eq!(got, ["x_y", "x_y~2", "x_y~3"]);
        assert!(out[1].replaced && !out[2].replaced);
        // Trailing periods are ignored by lookups: `foo.` is `foo`.
        let out = ok(&["foo", "foo."]);
        assert_unique_longs(&out);
        assert_eq!(shown(&out[1]), "foo.~2");
        // Case folding beyond ASCII.
        let out = ok(&["ÄRGER", "ärger"]);
        assert_unique_longs(&out);
        assert_eq!(shown(&out[1]), "ärger~2");
    }

    #[test]
    fn renamed_names_fit_the_255_unit_limit() {
        let long = "a".repeat(255);
        let upper = "A".repeat(255);
        let out = ok(&[&upper, &long]);
        assert_unique_longs(&out);
        assert_eq!(shown(&out[1]), format!("{}~2", "a".repeat(253)));
        // With an extension, the stem is cut and the extension kept.
        let long = format!("{}.txt", "b".repeat(251));
        let upper = long.to_uppercase();
        let out = ok(&[&upper, &long]);
        assert_eq!(shown(&out[1]), format!("{}~2.txt", "b".repeat(249)));
        // Never inside a surrogate pair: 127 emoji + "x" = 255 units.
        let emoji = format!("{}x", "😀".repeat(127));
        let upper = format!("{}X", "😀".repeat(127));
        let out = ok(&[&upper, &emoji]);
        let got = shown(&out[1]);
        assert_eq!(got, format!("{}~2", "😀".repeat(126)));
        assert!(got.encode_utf16().count() <= 255);
        // An extension too long to keep: cut like any name.
        assert_eq!(
            with_long_tail(&format!("a.{}", "e".repeat(253)), 2)
                .encode_utf16()
                .count(),
            255
        );
    }

    #[test]
    fn many_case_variants_get_distinct_tails() {
        let variants: Vec<String> = (0..64u32)
            .map(|bits| {
                "makefi"
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if (bits >> i) & 1 == 1 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            })
            .collect();
        let mut sorted = variants.clone();
        sorted.sort();
        let refs: Vec<&str> = sorted.iter().map(String::as_str).collect();
        let out = ok(&refs);
        assert_unique_longs(&out);
        assert_eq!(out.iter().filter(|n| n.collides_with.is_some()).count(), 63);
        assert!(out.iter().all(|n| n.collides_with.is_none_or(|i| i == 0)));
    }

    #[test]
    fn empty_and_dot_only_names_are_invalid() {
        for name in ["", "...", " ", ". ."] {
            assert!(
                matches!(assign(&["ok", name], Collisions::Rename), Err(NameError::Invalid { name: n, .. }) if n == name),
                "{name:?}"
            );
        }
    }

    #[test]
    fn assignment_is_deterministic() {
        let names = [
            "b long name.txt",
            "a long name.txt",
            "Ünïcödé",
            "README",
            "x.y.z",
        ];
        assert_eq!(ok(&names), ok(&names));
    }

    #[test]
    fn tail_rendering_at_the_limits() {
        let b = basis("longfilename.txt");
        assert_eq!(with_tail(&b, 1), sn("LONGFI~1TXT"));
        assert_eq!(with_tail(&b, 999_999), sn("L~999999TXT"));
        let short = basis("ab.c");
        assert_eq!(with_tail(&short, 12), sn("AB~12   C  "));
    }

    #[test]
    fn hundred_thousand_names_are_unique() {
        // How fast is bench/floppy.sh's business (100,000 files ready), not a timed unit test's:
        // this one only checks the aliases at the ~N limits.
        let names: Vec<String> = (1..=100_000)
            .map(|i| format!("longfilename{i:06}.txt"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let out = assign(&refs, Collisions::Rename).expect("assign should succeed");
        assert_valid_shorts(&out);
        assert_eq!(out[0].short, sn("LONGFI~1TXT"));
        assert_eq!(out[9].short, sn("LONGF~10TXT"));
        assert_eq!(out[99_999].short, sn("L~100000TXT"));
    }

    #[test]
    fn checksum_matches_hand_computed_values() {
        // Spec §7 ChkSum: sum = ((sum & 1) ? 0x80 : 0) + (sum >> 1) + byte, over 11 bytes.
        // "README  TXT": 0x52→0x52, 'E'→0x6E, 'A'→0x78, 'D'→0x80, 'M'→0x8D, 'E'→0x8B,
        // ' '→0xE5, ' '→0x12, 'T'→0x5D, 'X'→0xD6, 'T'→0x73.
        assert_eq!(checksum(&sn("README  TXT")), 0x73);
        assert_eq!(checksum(&sn("LONGFI~1TXT")), 0xD4);
    }

    /// Reads the 13 name units of an LFN entry back (spec §7 offsets 1, 14, 28).
    fn entry_units(e: &[u8; 32]) -> Vec<u16> {
        (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2))
            .map(|o| u16::from_le_bytes([e[o], e[o + 1]]))
            .collect()
    }

    fn assert_common_fields(e: &[u8; 32], short: &[u8; 11]) {
        assert_eq!(e[11], 0x0F, "LDIR_Attr");
        assert_eq!(e[12], 0, "LDIR_Type");
        assert_eq!(e[13], checksum(short), "LDIR_Chksum");
        assert_eq!(&e[26..28], &[0, 0], "LDIR_FstClusLO");
    }

    #[test]
    fn lfn_thirteen_units_is_one_full_entry_without_terminator() {
        let short = sn("ABCDEF~1   ");
        let long = utf16("abcdefghijklm");
        let entries = lfn_entries(&long, &short);
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(e[0], 0x41);
        assert_common_fields(e, &short);
        assert_eq!(entry_units(e), long);
        assert_eq!(&e[1..3], &[b'a', 0]);
        assert_eq!(&e[14..16], &[b'f', 0]);
        assert_eq!(&e[28..30], &[b'l', 0]);
        assert_eq!(&e[30..32], &[b'm', 0]);
    }

    #[test]
    fn lfn_fourteen_units_is_two_entries_with_terminator_and_padding() {
        let short = sn("ABCDEF~1   ");
        let long = utf16("abcdefghijklmn");
        let entries = lfn_entries(&long, &short);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0][0], 0x42);
        assert_eq!(entries[1][0], 0x01);
        for e in &entries {
            assert_common_fields(e, &short);
        }
        assert_eq!(entry_units(&entries[1]), long[..13]);
        let mut tail = vec![u16::from(b'n'), 0x0000];
        tail.resize(13, 0xFFFF);
        assert_eq!(entry_units(&entries[0]), tail);
        assert_eq!(&entries[0][1..5], &[b'n', 0, 0, 0]);
        assert_eq!(&entries[0][14..16], &[0xFF, 0xFF]);
        assert_eq!(&entries[0][28..30], &[0xFF, 0xFF]);
    }

    #[test]
    fn lfn_entries_round_trip_assigned_names() {
        let names = [
            "a".repeat(255),
            "😀 emoji file.png".to_owned(),
            "x".repeat(26),
        ];
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        for n in ok(&refs) {
            let long = n.long.expect("all need LFN");
            let entries = lfn_entries(&long, &n.short);
            assert_eq!(entries.len(), long.len().div_ceil(13));
            assert_eq!(entries[0][0] & 0x40, 0x40);
            let mut units: Vec<u16> = entries.iter().rev().flat_map(entry_units).collect();
            if long.len() % 13 != 0 {
                assert_eq!(units[long.len()], 0x0000);
                assert!(units[long.len() + 1..].iter().all(|&u| u == 0xFFFF));
            }
            units.truncate(long.len());
            assert_eq!(units, long);
        }
        assert_eq!(
            lfn_entries(&utf16(&"a".repeat(255)), &sn("A          ")).len(),
            20
        );
    }
}
