//! The reactor: the parts of the event loop that know nothing of Python.
//!
//! A level-triggered epoll poller, a cross-thread waker (eventfd), the timer heap, the
//! clock, the page-aligned buffer reads land in, and the map type fd watches are kept in. The PyO3 layer (`crate::event_loop`)
//! sits on top and owns one of each.

#[macro_use]
pub mod sys;
pub mod clock;
pub mod fd_map;
pub mod fork;
pub mod poller;
pub mod read_buf;
pub mod timers;
pub mod waker;
