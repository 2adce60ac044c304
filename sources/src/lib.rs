//! plain sources
