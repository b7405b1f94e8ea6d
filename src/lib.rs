//! ferroloop's native core: `ferroloop._core`. This file only wires the modules.

#![warn(clippy::undocumented_unsafe_blocks)]

#[macro_use]
pub mod reactor;

mod event_loop;
mod fastcall;
mod gil;
mod handle_mem;
mod handles;
mod pyversion;
mod signals;
mod transports;

// Entry points for `cargo fuzz` (fuzz/), which builds with `--cfg fuzzing`.
#[cfg(fuzzing)]
pub mod fuzzing;

use pyo3::prelude::*;

// The module needs the GIL: its state is guarded by it (`gil.rs`, `handle_mem.rs`). A
// free-threaded interpreter imports it with the GIL switched back on.
#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    event_loop::init_pymodule(m)?;
    handles::init_pymodule(m)?;
    transports::init_pymodule(m)?;
    signals::init_pymodule(m)?;
    Ok(())
}
