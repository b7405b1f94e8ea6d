//! The buffer stream transports receive small reads into, shared by every transport of
//! a loop: one read at a time runs on the loop's thread, and what arrived is copied out
//! before the next.
//!
//! It is page-aligned. The kernel's copy to user memory (`rep movsb`) is much slower into
//! a destination that is not cache-line aligned: with the buffer at the 16-byte offset a
//! plain heap allocation of this size gets, `_copy_to_iter` took about 10% of an echo
//! server's CPU at 10 KiB messages, against about 3% page-aligned.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of the buffer: a page, which is also a multiple of every cache line size.
const ALIGN: usize = 4096;

/// A fixed-size, page-aligned byte buffer.
pub struct ReadBuffer {
    /// Start of the allocation; `len` bytes, aligned to `ALIGN`, initialised (zeroed).
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for ReadBuffer {}

impl ReadBuffer {
    /// A zeroed buffer of `len` bytes (`len` > 0).
    pub fn new(len: usize) -> ReadBuffer {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (asserted in `layout`).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        ReadBuffer { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        assert!(len > 0, "a read buffer needs a size");
        Layout::from_size_align(len, ALIGN).expect("read buffer size overflows")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` addresses `len` initialised bytes that we own, borrowed shared here.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated by `alloc_zeroed` with this same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_page_aligned_zeroed_and_writable() {
        let mut buf = ReadBuffer::new(256 * 1024);
        assert_eq!(buf.as_mut_ptr() as usize % ALIGN, 0);
        assert_eq!(buf.len(), 256 * 1024);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        // SAFETY: in bounds of the buffer.
        unsafe { buf.as_mut_ptr().add(buf.len() - 1).write(7) };
        assert_eq!(buf.as_slice()[buf.len() - 1], 7);
    }
}
