//! The running interpreter's version, read once: asyncio's semantics differ between
//! 3.11, 3.12 and 3.13, and the loop follows the interpreter it runs on.

use std::sync::OnceLock;

use pyo3::prelude::*;

static VERSION: OnceLock<(u8, u8, u8)> = OnceLock::new();

/// Whether the running interpreter is at least `major.minor.patch`.
pub(crate) fn at_least(py: Python<'_>, version: (u8, u8, u8)) -> bool {
    let running = *VERSION.get_or_init(|| {
        let v = py.version_info();
        (v.major, v.minor, v.patch)
    });
    running >= version
}
