//! disksynth on-disk format generators (FAT, ISO 9660, ext4, GPT/MBR, xz index) land here.
