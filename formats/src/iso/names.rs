//! Host names → ISO 9660 level 3 identifiers (d-characters, ECMA-119
//! §7.4.1, §7.5, §7.6) and Joliet identifiers (UCS-2 big-endian, at most
//! 64 characters), unique per directory.
//!
//! Both mappings are deterministic: entries come in the scan's (bytewise)
//! order, the first entry keeps its plain mapping, and a later one that
//! collides gets the smallest numeric suffix no other entry maps to.

use std::collections::HashSet;
use std::ffi::OsStr;

/// Characters in a file name plus extension (§7.5.1, levels 2 and 3).
const ISO_FILE_CHARS: usize = 30;
/// Characters in a directory identifier (§7.6.3, levels 2 and 3).
const ISO_DIR_CHARS: usize = 31;
/// Longest extension kept in an ISO file identifier (a choice: the name
/// keeps most of the 30 characters).
const ISO_EXT_CHARS: usize = 8;
/// Joliet identifiers: at most 64 UCS-2 characters (Joliet spec §3.3).
pub(crate) const JOLIET_CHARS: usize = 64;
/// Longest extension a shortened Joliet name keeps.
const JOLIET_EXT_CHARS: usize = 16;

/// A d-character (§7.4.1): `A-Z`, `0-9`, `_`; anything else becomes `_`
/// (lower case letters become upper case first).
fn d_char(c: char) -> u8 {
    match c.to_ascii_uppercase() {
        u @ ('A'..='Z' | '0'..='9' | '_') => u as u8,
        _ => b'_',
    }
}

/// The ISO 9660 identifiers of one directory's entries, unique: `NAME.EXT;1`
/// for files (§7.5), `NAME` for directories (§7.6).
pub(crate) fn iso_idents(entries: &[(&OsStr, bool)]) -> Vec<Vec<u8>> {
    let split: Vec<(Vec<u8>, Vec<u8>, bool)> = entries
        .iter()
        .map(|&(name, is_dir)| {
            let name = name.to_string_lossy();
            if is_dir {
                let mut n: Vec<u8> = name.chars().map(d_char).collect();
                n.truncate(ISO_DIR_CHARS);
                (n, Vec::new(), true)
            } else {
                let (stem, ext) = match name.rfind('.') {
                    Some(i) => (&name[..i], &name[i + 1..]),
                    None => (&name[..], ""),
                };
                let mut ext: Vec<u8> = ext.chars().map(d_char).collect();
                ext.truncate(ISO_EXT_CHARS);
                let mut stem: Vec<u8> = stem.chars().map(d_char).collect();
                stem.truncate(ISO_FILE_CHARS - ext.len());
                (stem, ext, false)
            }
        })
        .collect();
    let join = |stem: &[u8], ext: &[u8], is_dir: bool| {
        let mut id = stem.to_vec();
        if !is_dir {
            id.push(b'.');
            id.extend_from_slice(ext);
            id.extend_from_slice(b";1");
        }
        id
    };
    let plain: Vec<Vec<u8>> = split.iter().map(|(s, e, d)| join(s, e, *d)).collect();
    unique(plain, |i, n| {
        let (stem, ext, is_dir) = &split[i];
        let suffix = n.to_string().into_bytes();
        let room = if *is_dir {
            ISO_DIR_CHARS
        } else {
            ISO_FILE_CHARS - ext.len()
        };
        let mut s = stem[..stem.len().min(room - suffix.len())].to_vec();
        s.extend_from_slice(&suffix);
        join(&s, ext, *is_dir)
    })
}

/// A Joliet character: UCS-2 (so nothing beyond U+FFFF), and none of the
/// control characters and `* / : ; ? \` the Joliet spec forbids.
fn joliet_char(c: char) -> u16 {
    match u16::try_from(u32::from(c)) {
        Ok(u) if u >= 0x20 && !"*/:;?\\".contains(c) => u,
        _ => u16::from(b'_'),
    }
}

/// The Joliet identifiers of one directory's entries, as UCS-2 big-endian
/// bytes (`;1` after file names), unique, and which entries had to be
/// shortened to 64 characters.
pub(crate) fn joliet_idents(entries: &[(&OsStr, bool)]) -> (Vec<Vec<u8>>, Vec<usize>) {
    let units: Vec<Vec<u16>> = entries
        .iter()
        .map(|(name, _)| name.to_string_lossy().chars().map(joliet_char).collect())
        .collect();
    // (stem, extension with its dot) of each name, for shortening.
    let split = |u: &[u16]| -> usize {
        match u.iter().rposition(|&c| c == u16::from(b'.')) {
            Some(i) if i > 0 && u.len() - i <= JOLIET_EXT_CHARS => i,
            _ => u.len(),
        }
    };
    let shorten = |u: &[u16], suffix: &[u16]| -> Vec<u16> {
        let dot = split(u);
        let (stem, ext) = u.split_at(dot);
        let room = JOLIET_CHARS - ext.len() - suffix.len();
        let mut out = stem[..stem.len().min(room)].to_vec();
        out.extend_from_slice(suffix);
        out.extend_from_slice(ext);
        out
    };
    let mut shortened = Vec::new();
    let plain: Vec<Vec<u16>> = units
        .iter()
        .enumerate()
        .map(|(i, u)| {
            if u.len() > JOLIET_CHARS {
                shortened.push(i);
                shorten(u, &[])
            } else {
                u.clone()
            }
        })
        .collect();
    let ids = unique(plain, |i, n| {
        let suffix: Vec<u16> = format!("~{n}").encode_utf16().collect();
        shorten(&units[i], &suffix)
    });
    let bytes = ids
        .into_iter()
        .zip(entries)
        .map(|(id, &(_, is_dir))| {
            let mut b: Vec<u8> = id.iter().flat_map(|u| u.to_be_bytes()).collect();
            if !is_dir {
                b.extend_from_slice(&[0, b';', 0, b'1']);
            }
            b
        })
        .collect();
    (bytes, shortened)
}

/// Make `plain` unique: the first entry with a given identifier keeps
/// it; later ones take `variant(i, n)` for the smallest `n >= 1` that no
/// entry's plain identifier and no earlier choice has.
fn unique<T: Clone + Eq + std::hash::Hash>(
    plain: Vec<Vec<T>>,
    variant: impl Fn(usize, u32) -> Vec<T>,
) -> Vec<Vec<T>> {
    let all: HashSet<&[T]> = plain.iter().map(Vec::as_slice).collect();
    if all.len() == plain.len() {
        return plain;
    }
    let mut taken: HashSet<Vec<T>> = HashSet::with_capacity(plain.len());
    let mut out = Vec::with_capacity(plain.len());
    for (i, p) in plain.iter().enumerate() {
        if !taken.contains(p) {
            taken.insert(p.clone());
            out.push(p.clone());
            continue;
        }
        let id = (1..)
            .map(|n| variant(i, n))
            .find(|v| !all.contains(v.as_slice()) && !taken.contains(v))
            .unwrap_or_else(|| unreachable!("suffixes run out before u32 does"));
        taken.insert(id.clone());
        out.push(id);
    }
    out
}

/// A volume identifier from a directory name: d-characters, at most 32
/// (§8.4.6); `CDROM` if nothing is left.
pub fn volume_id_from_name(name: &str) -> String {
    let id: String = name.chars().map(|c| d_char(c) as char).take(32).collect();
    if id.trim_matches('_').is_empty() {
        "CDROM".to_string()
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(names: &[(&str, bool)]) -> Vec<String> {
        let e: Vec<(&OsStr, bool)> = names.iter().map(|&(n, d)| (OsStr::new(n), d)).collect();
        iso_idents(&e)
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect()
    }

    fn joliet(names: &[(&str, bool)]) -> (Vec<String>, Vec<usize>) {
        let e: Vec<(&OsStr, bool)> = names.iter().map(|&(n, d)| (OsStr::new(n), d)).collect();
        let (ids, short) = joliet_idents(&e);
        let s = ids
            .into_iter()
            .map(|b| {
                let u: Vec<u16> = b
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16(&u).unwrap()
            })
            .collect();
        (s, short)
    }

    #[test]
    fn iso_names_use_d_characters_and_are_unique() {
        #[rustfmt::skip]
        let got = iso(&[
            ("README", false),
            ("a b.txt", false),
            ("a-b.txt", false),
            ("archive.tar.gz", false),
            ("my.dir", true),
            ("été.md", false),
            (".hidden", false),
        ]);
        assert_eq!(
            got,
            [
                "README.;1",
                "A_B.TXT;1",
                "A_B1.TXT;1",
                "ARCHIVE_TAR.GZ;1",
                "MY_DIR",
                "_T_.MD;1",
                ".HIDDEN;1"
            ]
        );
    }

    #[test]
    fn iso_suffixes_skip_names_another_entry_maps_to() {
        let got = iso(&[("a b", false), ("a-b", false), ("A_B1", false)]);
        assert_eq!(got, ["A_B.;1", "A_B2.;1", "A_B1.;1"]);
    }

    #[test]
    fn iso_names_are_cut_to_the_level_3_limits() {
        let long = "x".repeat(40);
        let got = iso(&[(&format!("{long}.txt"), false), (&long, true)]);
        assert_eq!(got[0], format!("{}.TXT;1", "X".repeat(27)));
        assert_eq!(got[1], "X".repeat(31));
    }

    #[test]
    fn joliet_names_keep_unicode_and_replace_forbidden_characters() {
        let (got, short) = joliet(&[("Ünïcödé ✓.txt", false), ("a:b", true)]);
        assert_eq!(got, ["Ünïcödé ✓.txt;1", "a_b"]);
        assert!(short.is_empty());
    }

    #[test]
    fn long_joliet_names_are_shortened_uniquely_keeping_the_extension() {
        let a = format!("{}-one.txt", "n".repeat(70));
        let b = format!("{}-two.txt", "n".repeat(70));
        let (got, short) = joliet(&[(&a, false), (&b, false)]);
        assert_eq!(short, [0, 1]);
        assert_eq!(got[0], format!("{}.txt;1", "n".repeat(60)));
        assert_eq!(got[1], format!("{}~1.txt;1", "n".repeat(58)));
    }

    #[test]
    fn volume_ids_from_directory_names() {
        assert_eq!(volume_id_from_name("my-data"), "MY_DATA");
        assert_eq!(volume_id_from_name("..."), "CDROM");
        assert_eq!(volume_id_from_name(&"a".repeat(40)).len(), 32);
    }
}
