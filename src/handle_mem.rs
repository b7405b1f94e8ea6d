//! The memory of handle objects: making them without PyO3's generic initialiser,
//! freeing them without its generic deallocator, and keeping freed ones for reuse.
//!
//! A busy loop makes and frees one handle per callback, so these two paths are a
//! large part of what `call_soon` costs. PyO3's way goes through the base type's
//! `tp_new`, zeroes the object, and on the way out through a trampoline that guards
//! against panics and looks the type's slots up again. Here a handle of exactly
//! `Handle` or `TimerHandle` is written in place at offsets measured once, at module
//! init, from objects PyO3 made itself; should those objects not look as this module
//! expects, everything stays on PyO3's path. Subclasses made in Python always do.

use std::mem::size_of;
use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass_init::PyClassInitializer;

use crate::gil::GilCell;
use crate::handles::{Handle, HandleState, TimerHandle};

/// Where the Rust values lie in handle objects, measured from objects PyO3 made.
#[derive(Clone, Copy)]
struct Layout {
    /// Offset of the `Handle` value in a `Handle` object.
    handle: usize,
    /// Offsets of the `Handle` and the `TimerHandle` values in a `TimerHandle` object.
    timer_base: usize,
    timer: usize,
}

/// The two handle types, the deallocators PyO3 gave them, the measured layout, and the
/// freed objects kept for reuse (one list per type, as uvloop's handles have): taking
/// memory from here skips the allocator and the collector's allocation count.
struct Memory {
    handle_type: *mut ffi::PyTypeObject,
    timer_type: *mut ffi::PyTypeObject,
    pyo3_dealloc: [Option<ffi::destructor>; 2],
    layout: Option<Layout>,
    handles: Vec<*mut ffi::PyObject>,
    timers: Vec<*mut ffi::PyObject>,
}

impl Memory {
    /// The list for objects of exactly `ty`, if it is one of the handle types.
    fn list_for(&mut self, ty: *mut ffi::PyTypeObject) -> Option<&mut Vec<*mut ffi::PyObject>> {
        if ty == self.handle_type {
            Some(&mut self.handles)
        } else if ty == self.timer_type {
            Some(&mut self.timers)
        } else {
            None
        }
    }
}

/// How many freed objects each list keeps: at most about 1.7 MB of handles. A list
/// only grows to the number of handles that were alive at once and then freed, so a
/// loop that queues a burst of callbacks (thousands of `call_soon`s before the loop
/// runs them, or a timer per connection) makes them again without the allocator.
const FREELIST_SIZE: usize = 16384;

struct GilStatic(std::cell::UnsafeCell<Memory>);

// SAFETY: `Memory` is only touched from the handle types' tp_alloc, tp_dealloc and
// tp_free, from `new_handle` (which takes a `Python` token) and from module init, all
// of which run with the GIL held (CPython 3.11 has one GIL), so there is never
// concurrent access.
unsafe impl Sync for GilStatic {}

static MEM: GilStatic = GilStatic(std::cell::UnsafeCell::new(Memory {
    handle_type: ptr::null_mut(),
    timer_type: ptr::null_mut(),
    pyo3_dealloc: [None, None],
    layout: None,
    handles: Vec::new(),
    timers: Vec::new(),
}));

/// The size of the collector's header in front of each object of a GC type
/// (`PyGC_Head`: two words).
const GC_HEAD_WORDS: usize = 2;

/// A kept object of exactly `ty`, or a new one from `PyType_GenericAlloc`; either way
/// zeroed, with one reference and the type referenced, and not tracked by the
/// collector. NULL with an exception set when memory runs out.
///
/// # Safety
/// The GIL is held and `ty` is one of the handle types (or a subclass, for which
/// nothing is kept).
unsafe fn alloc_untracked(ty: *mut ffi::PyTypeObject) -> *mut ffi::PyObject {
    // SAFETY: per the contract. A kept pointer is a whole object of `ty` that was
    // allocated by PyType_GenericAlloc, finalised and untracked by a deallocator here;
    // its memory (object and GC header) is ours until reused. Zeroing the header leaves
    // it untracked, as PyObject_GC_Track requires.
    unsafe {
        let Some(obj) = (*MEM.0.get()).list_for(ty).and_then(Vec::pop) else {
            let obj = ffi::PyType_GenericAlloc(ty, 0);
            if !obj.is_null() {
                ffi::PyObject_GC_UnTrack(obj.cast());
            }
            return obj;
        };
        ptr::write_bytes(obj.cast::<u8>(), 0, (*ty).tp_basicsize as usize);
        ptr::write_bytes(obj.cast::<usize>().sub(GC_HEAD_WORDS), 0, GC_HEAD_WORDS);
        ffi::PyObject_Init(obj, ty);
        obj
    }
}

/// `tp_alloc` of the handle types, used on PyO3's path: as `alloc_untracked`, but
/// tracked, as `PyType_GenericAlloc` gives an object.
unsafe extern "C" fn handle_alloc(subtype: *mut ffi::PyTypeObject, nitems: ffi::Py_ssize_t) -> *mut ffi::PyObject {
    // SAFETY: called by the interpreter with the GIL held, for a handle type or a
    // subclass of one (which inherits this slot).
    unsafe {
        if (*MEM.0.get()).list_for(subtype).is_none() {
            return ffi::PyType_GenericAlloc(subtype, nitems);
        }
        let obj = alloc_untracked(subtype);
        if !obj.is_null() {
            ffi::PyObject_GC_Track(obj.cast());
        }
        obj
    }
}

/// `tp_free` of the handle types: keeps the memory of an object of exactly a handle
/// type while its list has room, else `PyObject_GC_Del`.
unsafe extern "C" fn handle_free(obj: *mut std::os::raw::c_void) {
    // SAFETY: called by a deallocator with the GIL held, on an object whose Rust
    // contents are dropped and whose weak references are cleared; it is not used
    // again except through `alloc_untracked`. The type's reference is released by the
    // caller after this returns, and `alloc_untracked` takes a new one.
    unsafe {
        let op = obj.cast::<ffi::PyObject>();
        let Some(list) = (*MEM.0.get())
            .list_for(ffi::Py_TYPE(op))
            .filter(|l| l.len() < FREELIST_SIZE)
        else {
            return ffi::PyObject_GC_Del(obj);
        };
        ffi::PyObject_GC_UnTrack(obj);
        list.push(op);
    }
}

/// `tp_dealloc` of `Handle` (`TIMER` false) and of `TimerHandle`. An object of exactly
/// that type is finalised here: untracked, its weak references cleared, its value
/// dropped (which releases what it holds), its memory kept or freed, its type released.
/// Anything else (a subclass made in Python reaches here from `subtype_dealloc`) goes
/// to the deallocator PyO3 gave the type.
unsafe extern "C" fn handle_dealloc<const TIMER: bool>(obj: *mut ffi::PyObject) {
    // SAFETY: the interpreter calls tp_dealloc with the GIL held on an object of this
    // type or a subclass, with no references left. `layout` was measured on objects of
    // exactly these types, so the offsets address the `Handle` value; a `TimerHandle`
    // value is a plain float with nothing to drop. Untracking first means a collection
    // started by code that dropping the value runs never visits the object.
    unsafe {
        let mem = &*MEM.0.get();
        let ty = ffi::Py_TYPE(obj);
        let exact = if TIMER { mem.timer_type } else { mem.handle_type };
        let (Some(layout), true) = (mem.layout, ty == exact) else {
            let Some(dealloc) = mem.pyo3_dealloc[usize::from(TIMER)] else {
                return;
            };
            return dealloc(obj);
        };
        ffi::PyObject_GC_UnTrack(obj.cast());
        let weaklist_offset = (*ty).tp_weaklistoffset as usize;
        let weaklist = obj.byte_add(weaklist_offset).cast::<*mut ffi::PyObject>();
        if weaklist_offset > 0 && !(*weaklist).is_null() {
            ffi::PyObject_ClearWeakRefs(obj);
        }
        let offset = if TIMER { layout.timer_base } else { layout.handle };
        ptr::drop_in_place(obj.byte_add(offset).cast::<Handle>());
        handle_free(obj.cast());
        ffi::Py_DECREF(ty.cast());
    }
}

/// Makes a handle object (a `TimerHandle` when `when` is given) holding `state`,
/// tracked by the collector.
pub(crate) fn new_handle(py: Python<'_>, state: HandleState, when: Option<f64>) -> PyResult<Bound<'_, Handle>> {
    let handle = Handle {
        state: GilCell::new(state),
    };
    // SAFETY: the GIL is held (`py`), so `MEM` may be read.
    let (mem_types, layout) = unsafe {
        let mem = &*MEM.0.get();
        ((mem.handle_type, mem.timer_type), mem.layout)
    };
    let Some(layout) = layout else {
        return Ok(match when {
            None => Bound::new(py, handle)?,
            Some(when) => {
                Bound::new(py, PyClassInitializer::from(handle).add_subclass(TimerHandle { when }))?.into_super()
            }
        });
    };
    let ty = if when.is_some() { mem_types.1 } else { mem_types.0 };
    // SAFETY: the GIL is held and `ty` is a handle type. The object is zeroed, and
    // `layout` says where its values go (all else in it stays zero, as in the objects
    // PyO3 made when it was measured); the writes stay inside `tp_basicsize`.
    unsafe {
        let obj = alloc_untracked(ty);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let base = if when.is_some() {
            layout.timer_base
        } else {
            layout.handle
        };
        ptr::write(obj.byte_add(base).cast::<Handle>(), handle);
        if let Some(when) = when {
            ptr::write(obj.byte_add(layout.timer).cast::<TimerHandle>(), TimerHandle { when });
        }
        ffi::PyObject_GC_Track(obj.cast());
        Ok(Bound::from_owned_ptr(py, obj).cast_into_unchecked())
    }
}

/// A handle state holding nothing, for measuring.
fn empty_state() -> HandleState {
    HandleState {
        callback: None,
        args: None,
        context: None,
        loop_: None,
        source_traceback: None,
        when_given: None,
        repr: None,
        cancelled: false,
        own_context: false,
        scheduled: false,
        is_timer: false,
    }
}

/// The offset of `value` within `obj`.
fn offset_of_value<T>(obj: &Bound<'_, PyAny>, value: &T) -> usize {
    value as *const T as usize - obj.as_ptr() as usize
}

/// Whether every byte of `obj` after the object header, outside the `values` (offset,
/// size) ranges, is zero: then a zeroed object with the values written in is what PyO3
/// would have made.
fn only_values(obj: &Bound<'_, PyAny>, values: &[(usize, usize)]) -> bool {
    // SAFETY: `obj` is live and its type's `tp_basicsize` bytes are its memory.
    let size = unsafe { (*ffi::Py_TYPE(obj.as_ptr())).tp_basicsize as usize };
    let header = size_of::<ffi::PyObject>();
    if values.iter().any(|&(off, len)| off < header || off + len > size) {
        return false;
    }
    (header..size).all(|i| {
        values.iter().any(|&(off, len)| (off..off + len).contains(&i))
            // SAFETY: `i` is within the object's `tp_basicsize` bytes.
            || unsafe { *obj.as_ptr().cast::<u8>().add(i) } == 0
    })
}

/// Measures where PyO3 puts the values in handle objects, from one object of each
/// type made by PyO3 (`None` if the objects hold anything this module would not write).
fn measure(py: Python<'_>) -> PyResult<Option<Layout>> {
    let handle = Bound::new(
        py,
        Handle {
            state: GilCell::new(empty_state()),
        },
    )?;
    let timer = Bound::new(
        py,
        PyClassInitializer::from(Handle {
            state: GilCell::new(empty_state()),
        })
        .add_subclass(TimerHandle { when: 0.0 }),
    )?;
    let layout = Layout {
        handle: offset_of_value(handle.as_any(), handle.get()),
        timer_base: offset_of_value(timer.as_any(), timer.as_super().get()),
        timer: offset_of_value(timer.as_any(), timer.get()),
    };
    let (hsize, tsize) = (size_of::<Handle>(), size_of::<TimerHandle>());
    // The value bytes of the probes hold no pointers: all fields are None or false,
    // which are zeros too, so only the layout offsets need checking here.
    let ok = only_values(handle.as_any(), &[(layout.handle, hsize)])
        && only_values(timer.as_any(), &[(layout.timer_base, hsize), (layout.timer, tsize)]);
    Ok(ok.then_some(layout))
}

/// Whether this interpreter is one the in-place path was built and checked for:
/// CPython 3.11 to 3.13 with the GIL. The collector's header in front of each object
/// (`GC_HEAD_WORDS`) and the object header are those versions' layout; a free-threaded
/// build has neither the header nor the GIL that `GilStatic` relies on, and a newer
/// version may change either. Elsewhere handles take PyO3's generic path.
fn interpreter_known(py: Python<'_>) -> PyResult<bool> {
    let version = py.version_info();
    if !((3, 11) <= (version.major, version.minor) && (version.major, version.minor) <= (3, 13)) {
        return Ok(false);
    }
    let gil_disabled = py
        .import("sysconfig")?
        .call_method1("get_config_var", ("Py_GIL_DISABLED",))?
        .is_truthy()?;
    Ok(!gil_disabled)
}

/// Whether handles are made and freed in place here (false: PyO3's generic path).
pub(crate) fn in_place(py: Python<'_>) -> bool {
    let _ = py;
    // SAFETY: the GIL is held (`py`), so `MEM` may be read.
    unsafe { (*MEM.0.get()).layout.is_some() }
}

/// Installs the allocation slots on the handle types, after measuring their layout
/// (on an interpreter the in-place path is not known to fit, nothing is installed).
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    if !interpreter_known(py)? {
        return Ok(());
    }
    let layout = measure(py)?;
    let (handle_type, timer_type) = (py.get_type::<Handle>(), py.get_type::<TimerHandle>());
    // SAFETY: the GIL is held (see `GilStatic`). The only instances so far were the
    // probes, freed by PyO3's slots before these are replaced; every object the new
    // slots see is made by `alloc_untracked` or `PyType_GenericAlloc` (whose
    // counterpart is PyObject_GC_Del). The type objects live as long as the module,
    // which holds them.
    unsafe {
        let mem = &mut *MEM.0.get();
        mem.handle_type = handle_type.as_type_ptr();
        mem.timer_type = timer_type.as_type_ptr();
        mem.layout = layout;
        mem.pyo3_dealloc = [(*mem.handle_type).tp_dealloc, (*mem.timer_type).tp_dealloc];
        for ty in [mem.handle_type, mem.timer_type] {
            (*ty).tp_alloc = Some(handle_alloc);
            (*ty).tp_free = Some(handle_free);
        }
        (*mem.handle_type).tp_dealloc = Some(handle_dealloc::<false>);
        (*mem.timer_type).tp_dealloc = Some(handle_dealloc::<true>);
    }
    Ok(())
}
