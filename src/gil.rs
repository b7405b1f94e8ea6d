//! Interior mutability for state that only the GIL guards, and cached Python lookups.

use std::cell::{Ref, RefCell, RefMut};

use pyo3::Python;

/// A `RefCell` whose every access must show a `Python` token.
///
/// The loop's state is touched only by threads that hold the GIL (the loop thread
/// while it runs callbacks, other threads in `call_soon_threadsafe`), and the GIL
/// serialises them. Borrows are never held across a call into Python: a callback
/// may re-enter the loop, and a re-entrant borrow would panic instead of corrupting.
pub(crate) struct GilCell<T>(RefCell<T>);

// SAFETY: all access goes through methods that take a `Python<'_>` token (or runs
// inside a GC traversal, which CPython performs with the GIL held), so at most one
// thread touches the cell at a time; this extension is built for the GIL-enabled
// interpreter only.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub(crate) fn new(value: T) -> Self {
        GilCell(RefCell::new(value))
    }

    #[inline]
    pub(crate) fn borrow<'a>(&'a self, _py: Python<'_>) -> Ref<'a, T> {
        self.0.borrow()
    }

    #[inline]
    pub(crate) fn borrow_mut<'a>(&'a self, _py: Python<'_>) -> RefMut<'a, T> {
        self.0.borrow_mut()
    }

    /// For `__traverse__`, which must not fail: `None` while a borrow is active.
    pub(crate) fn try_borrow(&self) -> Option<Ref<'_, T>> {
        self.0.try_borrow().ok()
    }

    /// For `__clear__`, which must not fail: `None` while a borrow is active (the
    /// collector then simply cannot break the cycle through this object this time).
    pub(crate) fn try_borrow_mut(&self) -> Option<RefMut<'_, T>> {
        self.0.try_borrow_mut().ok()
    }
}

/// An attribute of a module, imported once and then cached for the process.
macro_rules! py_attr {
    ($py:expr, $module:literal, $attr:literal) => {{
        static CELL: pyo3::sync::PyOnceLock<pyo3::Py<pyo3::PyAny>> = pyo3::sync::PyOnceLock::new();
        CELL.import($py, $module, $attr)
    }};
}
pub(crate) use py_attr;
