//! ferry-meta
