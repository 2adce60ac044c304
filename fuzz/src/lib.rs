//! What the fuzz targets share: the harnesses themselves (so `make-seeds` and the regression
//! checks can drive them outside libFuzzer) and the generator of trees the planners are fed.
//!
//! Every harness goes through public entry points only: the NBD server's `serve_connection`, the
//! HTTP device's `open` and `read_at`, `XzIndex::read` and `XzDev`, `QcowDev`, and the generators' `build`.

pub mod gen;
pub mod http;
pub mod nbd;
pub mod planners;
pub mod qcow2;
pub mod xz;
