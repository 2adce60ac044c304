//! Partition types by name: the GPT type GUIDs of the Discoverable
//! Partitions Specification (uapi-group.org/specifications/specs/
//! discoverable_partitions_specification) and a few common others, with the
//! DOS partition type byte each maps to in an MBR.

use super::gpt::Guid;
use super::PartitionError;

/// EFI system partition (UEFI 2.10 §5.3.3, Table 5.7).
pub const ESP: Guid = Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// Microsoft basic data (FAT/NTFS data; ISO 9660 regions of hybrid images).
pub const BASIC_DATA: Guid = Guid::parse("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
/// BIOS boot partition (GRUB's core image on GPT disks); no MBR type.
pub const BIOS_BOOT: Guid = Guid::parse("21686148-6449-6E6F-744E-656564454649");
/// Linux filesystem data.
pub const LINUX_GENERIC: Guid = Guid::parse("0FC63DAF-8483-4772-8E79-3D69D8477DE4");

/// MBR type of Linux filesystems.
const MBR_LINUX: u8 = 0x83;

/// Names, their GPT type and MBR type byte.
const NAMES: &[(&str, &str, Option<u8>)] = &[
    ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", Some(0xEF)),
    (
        "xbootldr",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172",
        Some(0xEA),
    ),
    ("swap", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", Some(0x82)),
    (
        "home",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915",
        Some(MBR_LINUX),
    ),
    (
        "srv",
        "3B8F8425-20E0-4F3B-907F-1A25A76F98E8",
        Some(MBR_LINUX),
    ),
    (
        "var",
        "4D21B016-B534-45C2-A9FB-5C16E091FD2D",
        Some(MBR_LINUX),
    ),
    (
        "tmp",
        "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1",
        Some(MBR_LINUX),
    ),
    (
        "linux-generic",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        Some(MBR_LINUX),
    ),
    (
        "root-x86",
        "44479540-F297-41B2-9AF7-D131D5F0458A",
        Some(MBR_LINUX),
    ),
    (
        "root-x86-64",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        Some(MBR_LINUX),
    ),
    (
        "root-arm",
        "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3",
        Some(MBR_LINUX),
    ),
    (
        "root-arm64",
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        Some(MBR_LINUX),
    ),
    (
        "root-riscv64",
        "72EC70A6-CF74-40E6-BD49-4BDA08E8F224",
        Some(MBR_LINUX),
    ),
    (
        "usr-x86",
        "75250D76-8CC6-458E-BD66-BD47CC81A812",
        Some(MBR_LINUX),
    ),
    (
        "usr-x86-64",
        "8484680C-9521-48C6-9C11-B0720656F69E",
        Some(MBR_LINUX),
    ),
    (
        "usr-arm",
        "7D0359A3-02B3-4F0A-865C-654403E70625",
        Some(MBR_LINUX),
    ),
    (
        "usr-arm64",
        "B0E01050-EE5F-4390-949A-9101B17104E9",
        Some(MBR_LINUX),
    ),
    (
        "usr-riscv64",
        "BEAEC34B-8442-439B-A40B-984381ED097D",
        Some(MBR_LINUX),
    ),
    (
        "root-x86-64-verity",
        "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5",
        Some(MBR_LINUX),
    ),
    (
        "root-arm64-verity",
        "DF3300CE-D69F-4C92-978C-9BFB0F38D820",
        Some(MBR_LINUX),
    ),
    (
        "usr-x86-64-verity",
        "77FF5F63-E7B6-4633-ACF4-1565B864C0E6",
        Some(MBR_LINUX),
    ),
    (
        "usr-arm64-verity",
        "6E11A4E7-FBCA-4DED-B9E9-E1A512BB664E",
        Some(MBR_LINUX),
    ),
    (
        "linux-lvm",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928",
        Some(0x8E),
    ),
    (
        "linux-raid",
        "A19D880F-05FC-4D3B-A006-743F0F84911E",
        Some(0xFD),
    ),
    ("bios-boot", "21686148-6449-6E6F-744E-656564454649", None),
    (
        "basic-data",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        Some(0x07),
    ),
    ("msr", "E3C9E316-0B5C-4DB8-817D-F92DF00215AE", None),
];

/// The architecture-specific names `root` and `usr` stand for on this host.
#[cfg(target_arch = "aarch64")]
const NATIVE: (&str, &str) = ("root-arm64", "usr-arm64");
#[cfg(target_arch = "riscv64")]
const NATIVE: (&str, &str) = ("root-riscv64", "usr-riscv64");
#[cfg(target_arch = "arm")]
const NATIVE: (&str, &str) = ("root-arm", "usr-arm");
#[cfg(target_arch = "x86")]
const NATIVE: (&str, &str) = ("root-x86", "usr-x86");
#[cfg(not(any(
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "arm",
    target_arch = "x86"
)))]
const NATIVE: (&str, &str) = ("root-x86-64", "usr-x86-64");

/// A partition's type in each table kind: the GPT type GUID and the MBR
/// type byte (either may be missing: `bios-boot` has no MBR type, `0x0c`
/// no GUID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartType {
    /// GPT partition type GUID.
    pub gpt: Option<Guid>,
    /// MBR partition type byte.
    pub mbr: Option<u8>,
}

impl PartType {
    /// A Discoverable Partitions Specification name (`esp`, `xbootldr`,
    /// `root` (this host's architecture), `root-x86-64`, `root-arm64`,
    /// `usr`, `usr-x86-64`, `usr-arm64`, `home`, `srv`, `var`, `tmp`,
    /// `swap`, `linux-generic`, `bios-boot`, `basic-data`, ... see
    /// [`PartType::names`]), a GUID (`C12A7328-F81F-11D2-BA4B-00A0C93EC93B`),
    /// or an MBR byte (`0x0c`). Names carry their MBR byte: `esp` 0xEF,
    /// Linux types 0x83, `swap` 0x82, `basic-data` 0x07 (a FAT content may
    /// refine it to 0x0C/0x0E/0x01); `bios-boot` has none.
    pub fn parse(s: &str) -> Result<PartType, PartitionError> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let name = match lower.as_str() {
            "root" => NATIVE.0,
            "usr" => NATIVE.1,
            "efi" => "esp",
            "linux" => "linux-generic",
            n => n,
        };
        if let Some(&(_, guid, mbr)) = NAMES.iter().find(|(n, _, _)| *n == name) {
            return Ok(PartType {
                gpt: Some(Guid::parse(guid)),
                mbr,
            });
        }
        if let Some(g) = Guid::try_parse(t) {
            let mbr = NAMES
                .iter()
                .find(|(_, guid, _)| Guid::parse(guid) == g)
                .and_then(|&(_, _, m)| m);
            return Ok(PartType { gpt: Some(g), mbr });
        }
        if let Some(hex) = lower.strip_prefix("0x") {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                if !hex.is_empty() && hex.len() <= 2 && b != 0 {
                    return Ok(PartType {
                        gpt: None,
                        mbr: Some(b),
                    });
                }
            }
        }
        Err(PartitionError::UnknownType(s.to_string()))
    }

    /// The names [`PartType::parse`] knows (besides `root` and `usr`).
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(n, _, _)| *n)
    }

    /// The type's name if it has one, else its GUID or MBR byte.
    pub fn name(&self) -> String {
        if let Some(g) = self.gpt {
            NAMES
                .iter()
                .find(|(_, guid, _)| Guid::parse(guid) == g)
                .map_or_else(|| g.to_string(), |(n, _, _)| n.to_string())
        } else {
            self.mbr.map_or_else(String::new, |b| format!("0x{b:02x}"))
        }
    }
}

/// GPT attribute names → bit numbers (UEFI 2.10 §5.3.3 Table 5.8 for bits
/// 0-2; the Discoverable Partitions Specification for 59, 60, 63).
const ATTRIBUTES: &[(&str, u32)] = &[
    ("required", 0),
    ("no-block-io", 1),
    ("legacy-bios-bootable", 2),
    ("grow-fs", 59),
    ("read-only", 60),
    ("no-auto", 63),
];

/// The bit (as a mask) of a GPT attribute name: `required` (0),
/// `no-block-io` (1), `legacy-bios-bootable` (2), `grow-fs` (59),
/// `read-only` (60), `no-auto` (63); or a bit number `0`..`63`.
pub fn attribute_bit(name: &str) -> Result<u64, PartitionError> {
    let n = name.trim().to_ascii_lowercase();
    if let Some(&(_, bit)) = ATTRIBUTES.iter().find(|(a, _)| *a == n) {
        return Ok(1 << bit);
    }
    match n.parse::<u32>() {
        Ok(bit) if bit < 64 => Ok(1 << bit),
        _ => Err(PartitionError::UnknownAttribute(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_guids_and_bytes_parse() {
        let esp = PartType::parse("esp").unwrap();
        assert_eq!((esp.gpt, esp.mbr), (Some(ESP), Some(0xEF)));
        assert_eq!(
            PartType::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").unwrap(),
            esp
        );
        assert_eq!(
            PartType::parse("0x0c").unwrap(),
            PartType {
                gpt: None,
                mbr: Some(0x0C)
            }
        );
        assert_eq!(PartType::parse("bios-boot").unwrap().mbr, None);
        assert_eq!(PartType::parse("swap").unwrap().mbr, Some(0x82));
        assert_eq!(PartType::parse("basic-data").unwrap().mbr, Some(0x07));
        let root = PartType::parse("root").unwrap();
        assert_eq!(root.mbr, Some(0x83));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(root, PartType::parse("root-x86-64").unwrap());
        for bad in [
            "nope",
            "0x",
            "0x100",
            "0x00",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93",
        ] {
            assert!(PartType::parse(bad).is_err(), "{bad}");
        }
        for n in PartType::names() {
            assert_eq!(PartType::parse(n).unwrap().name(), n);
        }
    }

    #[test]
    fn attribute_names() {
        assert_eq!(attribute_bit("required").unwrap(), 1);
        assert_eq!(attribute_bit("legacy-bios-bootable").unwrap(), 4);
        assert_eq!(attribute_bit("read-only").unwrap(), 1 << 60);
        assert_eq!(attribute_bit("no-auto").unwrap(), 1 << 63);
        assert_eq!(attribute_bit("grow-fs").unwrap(), 1 << 59);
        assert_eq!(attribute_bit("48").unwrap(), 1 << 48);
        assert!(attribute_bit("64").is_err());
        assert!(attribute_bit("shiny").is_err());
    }
}
