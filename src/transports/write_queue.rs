//! The write queue of the stream and write pipe transports: what `write()` could not
//! send at once, as whole chunks (the first one partly sent), flushed with vectored
//! writes. Small writes are copied and joined; a large `bytes` is kept by reference
//! rather than copied.
//! `Chunk` is also what the datagram transport queues.

use std::collections::VecDeque;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Buffers handed to one `writev`.
pub(crate) const IOV_BATCH: usize = 64;

/// Writes of at least this many bytes of an immutable `bytes` are queued by reference,
/// not copied.
const SHARE_AT_LEAST: usize = 16 * 1024;

/// One queued piece: bytes we copied, or a `bytes` object we keep a reference to.
pub(crate) enum Chunk {
    Owned(Vec<u8>),
    Shared(Py<PyBytes>),
}

impl Chunk {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            // SAFETY: a bytes object is immutable and we hold a reference to it, so its
            // buffer is valid and unchanged for as long as the chunk lives.
            Chunk::Shared(b) => unsafe {
                let p = b.as_ptr();
                std::slice::from_raw_parts(ffi::PyBytes_AsString(p) as *const u8, ffi::PyBytes_Size(p) as usize)
            },
        }
    }
}

/// Bytes queued for sending: whole chunks, the first one partly sent.
#[derive(Default)]
pub(crate) struct WriteBuffer {
    chunks: VecDeque<Chunk>,
    /// Bytes of the first chunk already sent.
    offset: usize,
    /// Bytes queued in all, not counting `offset`.
    size: usize,
}

impl WriteBuffer {
    /// Queues `data[skip..]`; `shared` is the bytes object `data` belongs to, if any.
    pub(crate) fn push(&mut self, data: &[u8], skip: usize, shared: Option<&Bound<'_, PyBytes>>) {
        let rest = &data[skip..];
        if rest.is_empty() {
            return;
        }
        self.size += rest.len();
        if let Some(b) = shared.filter(|_| rest.len() >= SHARE_AT_LEAST) {
            if self.chunks.is_empty() {
                self.offset = skip;
            } else if skip != 0 {
                // Only the first chunk may start part-way; copy instead.
                self.chunks.push_back(Chunk::Owned(rest.to_vec()));
                return;
            }
            self.chunks.push_back(Chunk::Shared(b.clone().unbind()));
            return;
        }
        // Small writes join the last owned chunk, so a flush needs few iovecs. The first
        // chunk is left alone while partly sent, so `offset` stays valid.
        let joinable = self.chunks.len() > 1 || self.offset == 0;
        match self.chunks.back_mut() {
            Some(Chunk::Owned(last)) if joinable && last.len() + rest.len() <= SHARE_AT_LEAST => {
                last.extend_from_slice(rest)
            }
            _ => {
                if self.chunks.is_empty() {
                    self.offset = 0;
                }
                self.chunks.push_back(Chunk::Owned(rest.to_vec()))
            }
        }
    }

    /// Bytes queued, not counting those of the first chunk already sent.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.offset = 0;
        self.size = 0;
    }

    /// The queued bytes as up to `IOV_BATCH` buffers for `sendmsg`, pointing into the
    /// chunks: valid while the queue is not changed.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        self.chunks
            .iter()
            .take(IOV_BATCH)
            .enumerate()
            .map(|(i, c)| {
                let s = c.as_slice();
                let start = if i == 0 { self.offset } else { 0 };
                libc::iovec {
                    iov_base: s[start..].as_ptr() as *mut libc::c_void,
                    iov_len: s.len() - start,
                }
            })
            .collect()
    }

    /// `n` bytes were sent from the front.
    pub(crate) fn consume(&mut self, mut n: usize) {
        self.size -= n;
        while n > 0 {
            let first = self.chunks.front().expect("consumed more than queued").as_slice().len();
            let left = first - self.offset;
            if n >= left {
                n -= left;
                self.chunks.pop_front();
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
}
