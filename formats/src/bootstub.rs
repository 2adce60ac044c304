//! The x86 real-mode code we put in boot sectors that have nothing to boot.
//!
//! A BIOS that boots one of our images (a floppy in `qemu -fda`, or the MBR
//! of a disk) runs this: it prints why the disk does not boot, both through
//! the BIOS teletype (int 10h, AH=0Eh) and to I/O port 0xE9 (the Bochs/QEMU
//! debug console, so a test can read it with `-debugcon`), waits for a key
//! (int 16h) and asks the BIOS to try the next boot device (int 19h).

/// The message printed by [`code`].
pub const MESSAGE: &str =
    "\r\nThis disk was synthesized by disksynth and holds no operating system.\r\nPress a key to try the next boot device...\r\n";

/// Boot code to be placed at byte `at` of a sector the BIOS loads at
/// 0000:7C00. Returns the machine code followed by the NUL-terminated
/// message.
pub fn code(at: u16) -> Vec<u8> {
    // Hand-assembled 16-bit code; `msg` is the address of the message.
    const LEN: u16 = 32;
    let msg = 0x7C00 + at + LEN;
    let mut c = vec![
        0x31,
        0xC0, //             xor ax, ax
        0x8E,
        0xD8, //             mov ds, ax
        0xBE,
        msg as u8,
        (msg >> 8) as u8, // mov si, msg
        0xFC,             //                   cld
        0xAC,             //       next:       lodsb
        0x84,
        0xC0, //             test al, al
        0x74,
        0x0D, //             jz done (+13)
        0xBA,
        0xE9,
        0x00, //       mov dx, 0xE9
        0xEE, //                   out dx, al
        0xB4,
        0x0E, //             mov ah, 0x0E
        0xBB,
        0x07,
        0x00, //       mov bx, 7
        0xCD,
        0x10, //             int 0x10
        0xEB,
        0xEE, //             jmp next (-18)
        0x31,
        0xC0, // done:       xor ax, ax
        0xCD,
        0x16, //             int 0x16
        0xCD,
        0x19, //             int 0x19
    ];
    debug_assert_eq!(c.len(), LEN as usize);
    c.extend_from_slice(MESSAGE.as_bytes());
    c.push(0);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_fits_a_fat32_boot_sector() {
        // FAT32 boot code runs from byte 90 to the signature at 510.
        assert!(90 + code(90).len() <= 510);
    }

    #[test]
    fn message_address_points_at_the_message() {
        let c = code(62);
        let addr = u16::from_le_bytes([c[5], c[6]]) as usize;
        assert_eq!(addr - 0x7C00 - 62, 32);
        assert_eq!(&c[32..32 + MESSAGE.len()], MESSAGE.as_bytes());
    }
}
