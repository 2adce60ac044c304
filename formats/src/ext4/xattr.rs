//! Extended attributes for ext4: which host attributes ext4 can hold, POSIX
//! ACLs converted to ext4's own on-disk format, and whether an inode's
//! attributes fit (they are then written by the engine).
//!
//! On disk (ext4 wiki, "Extended Attributes"), a name is stored as a
//! name-index byte for its prefix plus the rest of the name: `user.` = 1,
//! `system.posix_acl_access` = 2, `system.posix_acl_default` = 3,
//! `trusted.` = 4, `security.` = 6 (7, `system.`, holds only ext4's own
//! inline-data attribute). Attributes go in the inode's extra space after
//! `i_extra_isize` and, if that is full, in one 4 KiB xattr block
//! (`i_file_acl`) with its checksum (`metadata_csum`). Values never span
//! more than that: no `ea_inode` feature.

use std::path::Path;

use tree::Node;

use super::Ext4Error;

/// One attribute as the image stores it: the full name (the engine turns
/// the prefix into its name index) and the value in ext4's format.
pub(crate) type Attr = (Vec<u8>, Vec<u8>);

/// Bytes of the in-inode xattr area: 256-byte inodes with `i_extra_isize`
/// 32 leave 0x100 - 0x80 - 32 = 96 bytes, of which the 4-byte magic
/// (`EXT4_XATTR_MAGIC`) is not usable (mkext4 0.0.3, `xattr_build.rs`).
const IBODY_USABLE: usize = 256 - 0x80 - 32 - 4;
/// An xattr block: 4096 bytes, a 32-byte header (`ext4_xattr_header`) and
/// a 4-byte end-of-entries marker.
const BLOCK: usize = 4096;
const BLOCK_HEADER: usize = 32;

/// The ext4 attributes of `node`: the host's, sorted as scanned, with
/// POSIX ACLs converted, and those ext4 cannot hold left out with a
/// warning naming the file. Errors when an ACL cannot be read or the
/// attributes do not fit the inode and one block.
pub(crate) fn of(node: &Node) -> Result<Vec<Attr>, Ext4Error> {
    let mut out = Vec::with_capacity(node.xattrs.len());
    for x in &node.xattrs {
        let name = &x.name[..];
        let value = match name_index(name) {
            Some(2 | 3) => acl_to_ext4(&x.value).map_err(|reason| Ext4Error::Acl {
                path: node.path.clone(),
                name: String::from_utf8_lossy(name).into_owned(),
                reason,
            })?,
            Some(_) => x.value.clone(),
            None => {
                log::warn!(
                    "{}: extended attribute \"{}\" left out: ext4 has no namespace for it",
                    node.path.display(),
                    name.escape_ascii()
                );
                continue;
            }
        };
        out.push((x.name.clone(), value));
    }
    check_fit(&node.path, &out)?;
    Ok(out)
}

/// The name index of a full attribute name, `None` for names ext4 cannot
/// hold (other `system.*` attributes such as `system.nfs4_acl`, and other
/// namespaces such as btrfs's). Index 7 (`system.`) is left out on
/// purpose: ext4 uses `system.data` for inline data, and the kernel offers
/// nothing else under it.
fn name_index(name: &[u8]) -> Option<u8> {
    let rest = |prefix: &[u8]| name.strip_prefix(prefix).filter(|r| !r.is_empty());
    if rest(b"user.").is_some() {
        Some(1)
    } else if name == b"system.posix_acl_access" {
        Some(2)
    } else if name == b"system.posix_acl_default" {
        Some(3)
    } else if rest(b"trusted.").is_some() {
        Some(4)
    } else if rest(b"security.").is_some() {
        Some(6)
    } else {
        None
    }
}

/// The name stored on disk after the index's prefix.
fn suffix(name: &[u8], index: u8) -> &[u8] {
    let prefix: &[u8] = match index {
        1 => b"user.",
        4 => b"trusted.",
        6 => b"security.",
        _ => name, // the ACL indexes stand for the whole name
    };
    &name[prefix.len()..]
}

/// Whether `attrs` need an xattr block besides the inode; an error naming
/// `path` when they do not fit the inode and one block.
pub(crate) fn check_fit(path: &Path, attrs: &[Attr]) -> Result<bool, Ext4Error> {
    let block_bytes = block_bytes(attrs);
    if block_bytes > BLOCK {
        let total: usize = attrs.iter().map(|(n, v)| n.len() + v.len()).sum();
        return Err(Ext4Error::XattrsTooBig {
            path: path.to_path_buf(),
            count: attrs.len(),
            bytes: total,
        });
    }
    Ok(block_bytes > 0)
}

/// Whether attributes that passed [`check_fit`] take an xattr block.
pub(crate) fn needs_block(attrs: &[Attr]) -> bool {
    block_bytes(attrs) > 0
}

/// The bytes of the xattr block `attrs` need (0: none, all in the inode).
///
/// This mirrors the engine's placement (mkext4 0.0.3, `xattr_build::plan`)
/// so that a too-large set is reported with its file rather than as a
/// failure to lay out the filesystem: attributes in on-disk order (name
/// index, name length, name — the order an xattr block must have), as
/// many as fit in the inode, and the first that does not and all after it
/// in the block. An entry (`ext4_xattr_entry`) is 16 bytes plus the name,
/// padded to 4; a value is padded to 4 (ext4 wiki, "Extended Attributes").
fn block_bytes(attrs: &[Attr]) -> usize {
    let mut sized: Vec<(u8, &[u8], usize)> = attrs
        .iter()
        .filter_map(|(name, value)| {
            let index = name_index(name)?;
            Some((index, suffix(name, index), value.len()))
        })
        .collect();
    sized.sort_by(|a, b| (a.0, a.1.len(), a.1).cmp(&(b.0, b.1.len(), b.1)));
    let entry = |name: &[u8]| 16 + name.len().next_multiple_of(4);
    let (mut ent, mut val, mut split) = (0, 0, 0);
    for &(_, name, len) in &sized {
        // The in-inode list ends with a 4-byte zero marker.
        if ent + entry(name) + 4 + val + len.next_multiple_of(4) > IBODY_USABLE {
            break;
        }
        ent += entry(name);
        val += len.next_multiple_of(4);
        split += 1;
    }
    let in_block = &sized[split..];
    if in_block.is_empty() {
        return 0;
    }
    BLOCK_HEADER
        + 4
        + in_block
            .iter()
            .map(|&(_, name, len)| entry(name) + len.next_multiple_of(4))
            .sum::<usize>()
}

// POSIX ACLs. The kernel's xattr API (include/uapi/linux/posix_acl_xattr.h)
// gives `posix_acl_xattr_header { __le32 a_version = 2 }` followed by
// 8-byte `posix_acl_xattr_entry { __le16 e_tag; __le16 e_perm; __le32 e_id }`.
// ext4 stores its own format (fs/ext4/acl.h): `ext4_acl_header { __le32
// a_version = EXT4_ACL_VERSION (1) }` followed by, in the same order,
// 8-byte `ext4_acl_entry { e_tag, e_perm, e_id }` for ACL_USER and
// ACL_GROUP and 4-byte `ext4_acl_entry_short { e_tag, e_perm }` for
// ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK and ACL_OTHER, whose id is implied.

const POSIX_ACL_XATTR_VERSION: u32 = 2;
const EXT4_ACL_VERSION: u32 = 1;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// An ACL from the kernel's xattr format to ext4's (fs/ext4/acl.c,
/// `ext4_acl_to_disk`).
pub(crate) fn acl_to_ext4(value: &[u8]) -> Result<Vec<u8>, String> {
    let le16 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return Err(format!(
            "{} bytes is not a POSIX ACL (4-byte header, 8-byte entries)",
            value.len()
        ));
    }
    let version = le32(value);
    if version != POSIX_ACL_XATTR_VERSION {
        return Err(format!("unknown POSIX ACL version {version}"));
    }
    let entries = &value[4..];
    let mut out = Vec::with_capacity(value.len());
    out.extend_from_slice(&EXT4_ACL_VERSION.to_le_bytes());
    let (mut short, mut long) = (0usize, 0usize);
    for e in entries.chunks_exact(8) {
        let (tag, perm, id) = (le16(e), le16(&e[2..]), le32(&e[4..]));
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        match tag {
            ACL_USER | ACL_GROUP => {
                out.extend_from_slice(&id.to_le_bytes());
                long += 1;
            }
            ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_MASK | ACL_OTHER => short += 1,
            _ => return Err(format!("unknown POSIX ACL entry tag {tag:#x}")),
        }
    }
    // ext4 finds the entry count from the size alone (acl.h,
    // `ext4_acl_count`), assuming four short entries whenever there are
    // more than four: true of every valid ACL (a named entry needs a mask).
    if long > 0 && short != 4 {
        return Err(format!(
            "an ACL with named entries needs exactly 4 of owner, group, mask and other, not {short}"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xattr_acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn acls_become_ext4_acls_with_short_entries() {
        const UNDEF: u32 = u32::MAX;
        let acl = xattr_acl(&[
            (ACL_USER_OBJ, 6, UNDEF),
            (ACL_USER, 4, 1234),
            (ACL_GROUP_OBJ, 4, UNDEF),
            (ACL_GROUP, 5, 99),
            (ACL_MASK, 7, UNDEF),
            (ACL_OTHER, 0, UNDEF),
        ]);
        let want: Vec<u8> = [
            &[1, 0, 0, 0][..],
            &[0x01, 0, 6, 0],
            &[0x02, 0, 4, 0, 0xd2, 0x04, 0, 0],
            &[0x04, 0, 4, 0],
            &[0x08, 0, 5, 0, 99, 0, 0, 0],
            &[0x10, 0, 7, 0],
            &[0x20, 0, 0, 0],
        ]
        .concat();
        assert_eq!(acl_to_ext4(&acl).unwrap(), want);
        // The kernel's ext4_acl_count must find 6 entries in that size:
        // (size - 4 - 4 * 4) / 8 + 4.
        assert_eq!((want.len() - 4 - 16) / 8 + 4, 6);
        // A minimal ACL (as a default ACL may be): three short entries.
        let min = xattr_acl(&[
            (ACL_USER_OBJ, 7, UNDEF),
            (ACL_GROUP_OBJ, 5, UNDEF),
            (ACL_OTHER, 5, UNDEF),
        ]);
        assert_eq!(acl_to_ext4(&min).unwrap().len(), 4 + 3 * 4);
    }

    #[test]
    fn malformed_acls_are_refused() {
        assert!(acl_to_ext4(b"").is_err());
        assert!(acl_to_ext4(&[2, 0, 0, 0, 1]).is_err());
        assert!(acl_to_ext4(&xattr_acl(&[(0x40, 7, 0)])).is_err());
        let mut v1 = xattr_acl(&[(ACL_OTHER, 7, 0)]);
        v1[0] = 1;
        assert!(acl_to_ext4(&v1).unwrap_err().contains("version"));
        // Named entry without a mask.
        let bad = xattr_acl(&[
            (ACL_USER_OBJ, 7, 0),
            (ACL_USER, 7, 5),
            (ACL_GROUP_OBJ, 5, 0),
            (ACL_OTHER, 5, 0),
        ]);
        assert!(acl_to_ext4(&bad).is_err());
    }

    #[test]
    fn fit_follows_the_engine_split() {
        let p = Path::new("f");
        let a = |n: &str, len: usize| (n.as_bytes().to_vec(), vec![b'v'; len]);
        // Small ones stay in the inode.
        assert!(!check_fit(p, &[a("user.a", 10), a("security.selinux", 30)]).unwrap());
        // A 200-byte value goes to the block.
        assert!(check_fit(p, &[a("user.big", 200)]).unwrap());
        // The block holds 4096 - 32 - 4 - 16 - 4 = 4040 bytes of value.
        assert!(check_fit(p, &[a("user.big", 4040)]).unwrap());
        let e = check_fit(p, &[a("user.big", 4041)]).unwrap_err();
        assert!(e.to_string().starts_with("f: "), "{e}");
        // Many: what does not fit the inode must fit one block.
        let many: Vec<Attr> = (0..100).map(|i| a(&format!("user.k{i:03}"), 20)).collect();
        assert!(check_fit(p, &many).unwrap());
        let too_many: Vec<Attr> = (0..200).map(|i| a(&format!("user.k{i:03}"), 20)).collect();
        assert!(check_fit(p, &too_many).is_err());
    }

    #[test]
    fn namespaces_ext4_cannot_hold_are_recognized() {
        assert_eq!(name_index(b"user.x"), Some(1));
        assert_eq!(name_index(b"system.posix_acl_access"), Some(2));
        assert_eq!(name_index(b"system.posix_acl_default"), Some(3));
        assert_eq!(name_index(b"trusted.overlay.opaque"), Some(4));
        assert_eq!(name_index(b"security.capability"), Some(6));
        assert_eq!(name_index(b"system.nfs4_acl"), None);
        assert_eq!(name_index(b"system.data"), None);
        assert_eq!(name_index(b"btrfs.compression"), None);
        assert_eq!(name_index(b"user."), None);
    }
}
