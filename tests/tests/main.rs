//! End-to-end tests of `disksynth` with real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy,
//! libnbd Python scripts) and reference servers (nbdkit, qemu-nbd). One test binary with one
//! module per client or feature, as in ripgrep; helpers live in `disksynth_tests`.

mod build;
mod build_boot;
mod cli_errors;
mod exports;
mod ext4;
mod extended_headers;
mod filters_data;
mod filters_service;
mod fio;
mod floppy;
mod fuse;
mod harness;
mod hostile_clients;
mod hostile_origin;
mod http;
mod inspect_nbd;
mod iso;
mod iso_boot;
mod logging;
mod nbdcopy;
mod nbdinfo;
mod nbdinfo_map;
mod output;
mod protocol;
mod python;
mod qcow2;
mod qemu;
mod remote_boot;
mod run_mode;
mod s3;
mod signals;
mod socket_activation;
mod tls;
mod tmpdisk;
mod trust;
mod web;
mod xz;
