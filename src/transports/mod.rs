//! Transports: the data path between sockets and protocols, in Rust.

pub(crate) mod accept;
pub(crate) mod context;
pub(crate) mod datagram;
pub(crate) mod fatal;
pub(crate) mod flow;
pub(crate) mod native;
pub(crate) mod pipe;
pub(crate) mod sockaddr;
pub(crate) mod stream;
pub(crate) mod tls;
pub(crate) mod write_queue;

use pyo3::prelude::*;

pub(crate) fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<stream::StreamTransport>()?;
    accept::init_pymodule(m)?;
    datagram::init_pymodule(m)?;
    pipe::init_pymodule(m)?;
    tls::init_pymodule(m)?;
    Ok(())
}
