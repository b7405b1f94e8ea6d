//! The load loop: a fixed set of connection slots driven by one epoll instance per thread
//! (one thread unless `--threads` says more).
//!
//! Each slot runs a closed loop: it issues a request, waits for the whole response, records the
//! latency and issues the next one, so the offered load adapts to the server's speed and the
//! number of slots is the concurrency. Sockets are level-triggered; a slot watches for
//! writability only while part of its request is still unsent, and it always reads, so a large
//! echo never dead-locks against a server that writes while it reads.
//!
//! Time is split into a warmup, whose operations are not counted, and the measured window.
//! Only operations that complete inside the window count, and their latencies are the ones in
//! the histogram. A slot whose connection fails counts one error and reconnects 10 ms later.
//!
//! In udp mode a slot is a connected datagram socket with one datagram in flight. The first 8
//! bytes of each datagram are the slot's sequence number, so an echo that comes back after its
//! slot gave up on it is recognised and dropped. A datagram unanswered for `UDP_LOST` counts as
//! one error (a lost datagram), and the slot sends the next one.
//!
//! With `--tls` each stream connection carries a rustls client session: the request is handed
//! to it as plaintext and the socket sees only the records it writes; what the socket delivers
//! goes through the session, and the plaintext that comes out is checked as in the plain modes.

use std::io::{self, Read, Write};
use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection};

use crate::args::{Config, Mode};
use crate::hist::Histogram;
use crate::net::{self, Connect, Epoll, Event};
use crate::tls::{self, Fd};

/// Delay before a failed slot connects again.
const RETRY: Duration = Duration::from_millis(10);
/// Longest sleep in `epoll_wait`, so the clock is looked at often enough.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// How long a udp slot waits for an echo before it counts the datagram as lost.
const UDP_LOST: Duration = Duration::from_millis(200);

/// What a run measured.
pub struct Report {
    /// Operations completed in the window (whole ones, except in the bulk modes, where an
    /// operation is a MiB and a fraction of one counts).
    pub ops: f64,
    pub seconds: f64,
    pub errors: u64,
    /// CPU seconds the load generator itself used during the window.
    pub cpu_seconds: f64,
    pub hist: Histogram,
    /// What the TLS sessions negotiated (tls modes): version, cipher suite, key exchange.
    pub tls: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket; connect again at `retry_at`.
    Idle,
    /// Non-blocking connect under way.
    Connecting,
    /// Connected; a request is in flight.
    Active,
}

struct Slot {
    fd: RawFd,
    /// Bumped on every close, so events left over for an old socket are ignored.
    gen: u32,
    state: State,
    /// Whether `EPOLLOUT` is part of the registered interest.
    writing: bool,
    /// Bytes of the current request written.
    sent: usize,
    /// Bytes of the current echo received.
    recvd: usize,
    /// When the current operation started.
    op_start: Instant,
    retry_at: Instant,
    /// Response bytes not yet consumed (http).
    resp: Vec<u8>,
    /// Sequence number of the datagram in flight (udp).
    seq: u64,
    /// The TLS session of this connection (tls modes).
    tls: Option<Box<ClientConnection>>,
}

/// Outcome of handling bytes that arrived on a slot.
enum Flow {
    /// Keep reading this socket.
    More,
    /// The socket was closed (failure, or the end of a churn cycle): stop reading it.
    Closed,
}

struct Driver<'a> {
    cfg: &'a Config,
    epoll: Epoll,
    slots: Vec<Slot>,
    request: PageBuf,
    scratch: PageBuf,
    hist: Histogram,
    ops: u64,
    errors: u64,
    measuring: bool,
    idle: usize,
    /// When udp slots were last checked for lost datagrams.
    lost_checked: Instant,
    tls_config: Option<Arc<ClientConfig>>,
    /// What the first completed TLS session negotiated.
    negotiated: Option<String>,
}

/// A byte buffer that starts on a page boundary. The kernel copies into and out of it on
/// every read and write, and `rep movsb` into a destination that is not cache-line aligned
/// (a plain `Vec` of this size starts 16 bytes past a page) is markedly slower: an unaligned
/// client spends its core on copies and becomes the bottleneck of large-message rows.
struct PageBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl PageBuf {
    const ALIGN: usize = 4096;

    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1), Self::ALIGN).expect("buffer size")
    }

    fn zeroed(len: usize) -> Self {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        let ptr = std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(len)));
        PageBuf { ptr, len }
    }

    fn from_slice(bytes: &[u8]) -> Self {
        let mut buf = Self::zeroed(bytes.len());
        buf.copy_from_slice(bytes);
        buf
    }
}

// SAFETY: `PageBuf` owns its allocation outright, like a `Vec<u8>`.
unsafe impl Send for PageBuf {}

impl std::ops::Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` owns `len` initialised bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

fn token(i: usize, gen: u32) -> u64 {
    ((gen as u64) << 32) | i as u64
}

/// The bytes each request sends.
fn build_request(cfg: &Config) -> Vec<u8> {
    match cfg.mode {
        Mode::Http => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: loadgen\r\nAccept: */*\r\n\r\n",
            cfg.path, cfg.host
        )
        .into_bytes(),
        // A pattern that is unlikely to be echoed back correctly by accident.
        Mode::Echo | Mode::Churn | Mode::Udp => (0..cfg.size).map(|i| (i % 251) as u8).collect(),
        Mode::Sink | Mode::Source => unreachable!("the bulk modes run in bulk.rs"),
    }
}

/// Parses a complete HTTP response at the start of `buf`: `Ok(Some((status, total_len)))` when
/// the whole response is there, `Ok(None)` when more bytes are needed.
fn parse_response(buf: &[u8]) -> Result<Option<(u16, usize)>, &'static str> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 {
            Err("response head too long")
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or("bad status line")?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err("bad header line");
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported");
        }
    }
    let length = length.ok_or("response without Content-Length")?;
    let total = head_end + 4 + length;
    Ok(if buf.len() >= total {
        Some((status, total))
    } else {
        None
    })
}

/// Whether an echoed chunk matches what was sent. Chunks up to 1 KiB are compared whole; of a
/// larger one, three 256-byte spans (start, middle, end). The message pattern depends on the
/// position, so lost, repeated or reordered bytes show in every span, and comparing 100 KiB
/// messages whole would cost the client as much CPU as the copy itself.
fn same_bytes(got: &[u8], want: &[u8]) -> bool {
    const SPAN: usize = 256;
    let n = got.len();
    if n != want.len() {
        return false;
    }
    if n <= 4 * SPAN {
        return got == want;
    }
    let mid = n / 2 - SPAN / 2;
    got[..SPAN] == want[..SPAN] && got[mid..mid + SPAN] == want[mid..mid + SPAN] && got[n - SPAN..] == want[n - SPAN..]
}

impl<'a> Driver<'a> {
    fn new(cfg: &'a Config, conns: usize, tls_config: Option<Arc<ClientConfig>>) -> io::Result<Self> {
        let now = Instant::now();
        let slots = (0..conns)
            .map(|_| Slot {
                fd: -1,
                gen: 0,
                state: State::Idle,
                writing: false,
                sent: 0,
                recvd: 0,
                op_start: now,
                retry_at: now,
                resp: Vec::new(),
                seq: 0,
                tls: None,
            })
            .collect();
        Ok(Driver {
            cfg,
            epoll: Epoll::new()?,
            slots,
            request: PageBuf::from_slice(&build_request(cfg)),
            scratch: PageBuf::zeroed(256 * 1024),
            hist: Histogram::new(),
            ops: 0,
            errors: 0,
            measuring: false,
            idle: conns,
            lost_checked: now,
            tls_config,
            negotiated: None,
        })
    }

    /// Starts connecting slot `i` (which must be idle).
    fn open(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        slot.op_start = now;
        let result = match net::connect(&self.cfg.target) {
            Ok(Connect::Again) => {
                slot.retry_at = now + Duration::from_millis(1);
                return;
            }
            Ok(c) => c,
            Err(_) => {
                self.errors += 1;
                slot.retry_at = now + RETRY;
                return;
            }
        };
        let (fd, done) = match result {
            Connect::Done(fd) => (fd, true),
            Connect::InProgress(fd) => (fd, false),
            Connect::Again => unreachable!(),
        };
        if self.cfg.mode == Mode::Churn {
            // The client closes first in churn; without this every cycle leaves a TIME_WAIT
            // entry holding a local port.
            let _ = net::set_linger_zero(fd);
        }
        if let Some(config) = &self.tls_config {
            match tls::connection(config) {
                Ok(conn) => slot.tls = Some(Box::new(conn)),
                Err(_) => {
                    net::close(fd);
                    self.errors += 1;
                    slot.retry_at = now + RETRY;
                    return;
                }
            }
        }
        slot.fd = fd;
        slot.writing = !done;
        slot.state = if done { State::Active } else { State::Connecting };
        self.idle -= 1;
        if self.epoll.add(fd, token(i, slot.gen), !done).is_err() {
            self.fail(i, now);
            return;
        }
        if done {
            self.start_request(i, now);
        }
    }

    /// Closes slot `i` and schedules a reconnect.
    fn close(&mut self, i: usize, now: Instant, delay: Duration) {
        let slot = &mut self.slots[i];
        slot.tls = None;
        if slot.fd >= 0 {
            net::close(slot.fd);
            slot.fd = -1;
            slot.gen = slot.gen.wrapping_add(1);
            slot.state = State::Idle;
            slot.retry_at = now + delay;
            self.idle += 1;
        }
    }

    fn fail(&mut self, i: usize, now: Instant) {
        self.errors += 1;
        self.close(i, now, RETRY);
    }

    fn start_request(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        slot.sent = 0;
        slot.recvd = 0;
        slot.resp.clear();
        slot.seq = slot.seq.wrapping_add(1);
        if self.cfg.mode != Mode::Churn {
            // In churn the latency covers the connect too; `op_start` was set in `open`.
            slot.op_start = now;
        }
        self.flush(i, now);
    }

    /// Writes as much of the pending request as the socket takes and adjusts the interest.
    fn flush(&mut self, i: usize, now: Instant) {
        if self.slots[i].tls.is_some() {
            return self.flush_tls(i, now);
        }
        let slot = &mut self.slots[i];
        if self.cfg.mode == Mode::Udp {
            // One datagram, sent whole or not at all; the request buffer carries the sequence
            // number of whichever slot sends.
            self.request[..8].copy_from_slice(&slot.seq.to_le_bytes());
        }
        while slot.sent < self.request.len() {
            match net::write(slot.fd, &self.request[slot.sent..]) {
                Ok(n) => slot.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.fail(i, now),
            }
        }
        let want = slot.sent < self.request.len();
        if want != slot.writing {
            slot.writing = want;
            if self.epoll.modify(slot.fd, token(i, slot.gen), want).is_err() {
                self.fail(i, now);
            }
        }
    }

    /// `flush` for a TLS connection: hands the rest of the request to the session as
    /// plaintext (it keeps it until the handshake is done), then writes the session's records.
    fn flush_tls(&mut self, i: usize, now: Instant) {
        let slot = &mut self.slots[i];
        let Some(conn) = slot.tls.as_mut() else { return };
        let mut ok = true;
        if slot.sent < self.request.len() {
            ok = conn.writer().write_all(&self.request[slot.sent..]).is_ok();
            slot.sent = self.request.len();
        }
        while ok && conn.wants_write() {
            match conn.write_tls(&mut Fd(slot.fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => ok = false,
            }
        }
        if !ok {
            return self.fail(i, now);
        }
        let want = conn.wants_write();
        if want != slot.writing {
            slot.writing = want;
            if self.epoll.modify(slot.fd, token(i, slot.gen), want).is_err() {
                self.fail(i, now);
            }
        }
    }

    /// Reads what the socket has through slot `i`'s TLS session and handles the plaintext.
    fn read_tls(&mut self, i: usize, now: Instant) {
        loop {
            let slot = &mut self.slots[i];
            let Some(conn) = slot.tls.as_mut() else { return };
            match conn.read_tls(&mut Fd(slot.fd)) {
                Ok(0) => return self.fail(i, now),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.fail(i, now),
            }
            if conn.process_new_packets().is_err() {
                return self.fail(i, now);
            }
            loop {
                let Some(conn) = self.slots[i].tls.as_mut() else { return };
                match conn.reader().read(&mut self.scratch) {
                    Ok(0) => return self.fail(i, now), // close_notify in the middle of a message
                    Ok(n) => {
                        if let Flow::Closed = self.received(i, n, now) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return self.fail(i, now),
                }
            }
            // Handshake records to answer with, if any.
            if self.slots[i].tls.as_ref().is_some_and(|c| c.wants_write()) {
                self.flush_tls(i, now);
                if self.slots[i].fd < 0 {
                    return;
                }
            }
        }
    }

    /// One operation of slot `i` finished.
    fn complete(&mut self, i: usize, now: Instant) -> Flow {
        if self.measuring {
            let elapsed = now.saturating_duration_since(self.slots[i].op_start);
            self.hist.record(elapsed.as_nanos() as u64);
            self.ops += 1;
        }
        if let Some(conn) = self.slots[i].tls.as_mut() {
            if self.negotiated.is_none() {
                self.negotiated = tls::describe(conn);
            }
        }
        if self.cfg.mode == Mode::Churn {
            let slot = &mut self.slots[i];
            if let Some(conn) = slot.tls.as_mut() {
                // End the session properly before the reset, as a client that is done would.
                conn.send_close_notify();
                let _ = conn.write_tls(&mut Fd(slot.fd));
            }
            self.close(i, now, Duration::ZERO);
            self.open(i, now);
            Flow::Closed
        } else {
            self.start_request(i, now);
            if self.slots[i].state == State::Active {
                Flow::More
            } else {
                Flow::Closed
            }
        }
    }

    /// Handles `n` bytes that arrived in `self.scratch` for slot `i`.
    fn received(&mut self, i: usize, n: usize, now: Instant) -> Flow {
        match self.cfg.mode {
            Mode::Echo | Mode::Churn => {
                let slot = &mut self.slots[i];
                let end = slot.recvd + n;
                if end > slot.sent || !same_bytes(&self.scratch[..n], &self.request[slot.recvd..end]) {
                    // More bytes than were sent, or not the bytes that were sent.
                    self.fail(i, now);
                    return Flow::Closed;
                }
                slot.recvd = end;
                if end == self.request.len() {
                    return self.complete(i, now);
                }
                Flow::More
            }
            Mode::Sink | Mode::Source => unreachable!("the bulk modes run in bulk.rs"),
            Mode::Udp => {
                let slot = &self.slots[i];
                let seq = u64::from_le_bytes(self.scratch[..8].try_into().unwrap_or_default());
                if n >= 8 && seq < slot.seq {
                    return Flow::More; // the late echo of a datagram already counted as lost
                }
                if n != self.request.len() || seq != slot.seq || self.scratch[8..n] != self.request[8..n] {
                    self.fail(i, now);
                    return Flow::Closed;
                }
                self.complete(i, now)
            }
            Mode::Http => {
                let slot = &mut self.slots[i];
                slot.resp.extend_from_slice(&self.scratch[..n]);
                match parse_response(&slot.resp) {
                    Ok(None) => Flow::More,
                    Ok(Some((status, total))) => {
                        if total != slot.resp.len() || slot.sent != self.request.len() {
                            // Bytes after the response although only one request was sent.
                            self.fail(i, now);
                            return Flow::Closed;
                        }
                        if status != 200 {
                            self.errors += 1;
                        }
                        self.complete(i, now)
                    }
                    Err(_) => {
                        self.fail(i, now);
                        Flow::Closed
                    }
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event, now: Instant) {
        let i = (ev.token & 0xffff_ffff) as usize;
        let gen = (ev.token >> 32) as u32;
        if i >= self.slots.len() || self.slots[i].gen != gen || self.slots[i].fd < 0 {
            return; // Left over for a socket closed earlier in this batch.
        }
        if self.slots[i].state == State::Connecting {
            if !(ev.writable || ev.error || ev.readable) {
                return;
            }
            if net::take_error(self.slots[i].fd).is_err() {
                return self.fail(i, now);
            }
            self.slots[i].state = State::Active;
            return self.start_request(i, now);
        }
        if self.slots[i].tls.is_some() {
            if ev.writable && self.slots[i].writing {
                self.flush_tls(i, now);
                if self.slots[i].fd < 0 {
                    return;
                }
            }
            if ev.readable || ev.error {
                self.read_tls(i, now);
            }
            return;
        }
        if ev.writable && self.slots[i].sent < self.request.len() {
            self.flush(i, now);
            if self.slots[i].fd < 0 {
                return;
            }
        }
        if ev.readable || ev.error {
            loop {
                let fd = self.slots[i].fd;
                match net::read(fd, &mut self.scratch) {
                    Ok(0) => return self.fail(i, now),
                    Ok(n) => {
                        if let Flow::Closed = self.received(i, n, now) {
                            return;
                        }
                        if n < self.scratch.len() {
                            // A short read means the socket is drained: skip the read that would
                            // only say EAGAIN (level-triggered epoll reports any later bytes).
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.fail(i, now),
                }
            }
        }
    }

    /// Counts the udp datagrams unanswered for `UDP_LOST` as errors and sends the next ones.
    fn check_lost(&mut self, now: Instant) {
        self.lost_checked = now;
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.state == State::Active && now.saturating_duration_since(slot.op_start) >= UDP_LOST {
                self.errors += 1;
                self.start_request(i, now);
            }
        }
    }

    fn reopen_idle(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            if self.idle == 0 {
                break;
            }
            if self.slots[i].state == State::Idle && self.slots[i].retry_at <= now {
                self.open(i, now);
            }
        }
    }

    /// Runs the slots until `window_end_at`, counting what completes from `window_start_at`.
    fn run(mut self, window_start_at: Instant, window_end_at: Instant) -> io::Result<Part> {
        let mut raw = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut events = Vec::with_capacity(raw.len());
        let mut now = Instant::now();
        let mut window_start = window_start_at;
        self.reopen_idle(now);
        loop {
            if !self.measuring && now >= window_start_at {
                self.measuring = true;
                window_start = now;
            }
            if self.measuring && now >= window_end_at {
                break;
            }
            let boundary = if self.measuring { window_end_at } else { window_start_at };
            let mut wait = boundary.saturating_duration_since(now).min(MAX_WAIT);
            if self.idle > 0 {
                wait = wait.min(Duration::from_millis(1));
            }
            // Round up so that the wait does not end just short of the boundary and spin.
            let timeout_ms = wait.as_micros().div_ceil(1000) as i32;
            self.epoll.wait(&mut raw, &mut events, timeout_ms)?;
            now = Instant::now();
            for &ev in &events {
                self.on_event(ev, now);
            }
            if self.idle > 0 {
                self.reopen_idle(now);
            }
            if self.cfg.mode == Mode::Udp && now.saturating_duration_since(self.lost_checked) >= UDP_LOST / 4 {
                self.check_lost(now);
            }
        }
        Ok(Part {
            ops: self.ops,
            errors: self.errors,
            hist: self.hist,
            window_start,
            window_end: now,
            slots: self.slots,
            tls: self.negotiated,
        })
    }
}

/// What one thread measured; its slots come along so that their sockets stay open while the
/// caller holds.
struct Part {
    ops: u64,
    errors: u64,
    hist: Histogram,
    window_start: Instant,
    window_end: Instant,
    slots: Vec<Slot>,
    tls: Option<String>,
}

/// Splits `conns` connections over `threads` threads as evenly as possible.
fn shares(conns: usize, threads: usize) -> Vec<usize> {
    let threads = threads.clamp(1, conns.max(1));
    (0..threads)
        .map(|t| conns / threads + usize::from(t < conns % threads))
        .collect()
}

/// Runs the load described by `cfg`: `cfg.threads` threads, each with its own epoll instance
/// and share of the connections. Prints `window-start` and `window-end` on stderr at the edges
/// of the measured window. With `cfg.hold`, `after_window` is called before the sockets are
/// closed.
pub fn run(cfg: &Config, after_window: impl FnOnce(&Report)) -> io::Result<Report> {
    let tls_config = if cfg.tls {
        Some(tls::client_config().map_err(io::Error::other)?)
    } else {
        None
    };
    let drivers = shares(cfg.conns, cfg.threads)
        .into_iter()
        .map(|n| Driver::new(cfg, n, tls_config.clone()))
        .collect::<io::Result<Vec<_>>>()?;
    let window_start_at = Instant::now() + cfg.warmup;
    let window_end_at = window_start_at + cfg.duration;
    let (parts, cpu_seconds) = std::thread::scope(|scope| {
        let handles: Vec<_> = drivers
            .into_iter()
            .map(|d| scope.spawn(move || d.run(window_start_at, window_end_at)))
            .collect();
        std::thread::sleep(window_start_at.saturating_duration_since(Instant::now()));
        let cpu_start = net::cpu_seconds();
        eprintln!("window-start");
        let parts: Vec<io::Result<Part>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("load thread panicked")))
            })
            .collect();
        (parts, net::cpu_seconds() - cpu_start)
    });
    eprintln!("window-end");
    let _ = io::stderr().flush();
    let parts = parts.into_iter().collect::<io::Result<Vec<_>>>()?;
    let mut hist = Histogram::new();
    let (mut ops, mut errors) = (0, 0);
    for part in &parts {
        hist.merge(&part.hist);
        ops += part.ops;
        errors += part.errors;
    }
    let first = parts.iter().map(|p| p.window_start).min();
    let last = parts.iter().map(|p| p.window_end).max();
    let seconds = match (first, last) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let report = Report {
        ops: ops as f64,
        seconds,
        errors,
        cpu_seconds,
        hist,
        tls: parts.iter().find_map(|p| p.tls.clone()),
    };
    after_window(&report);
    for slot in parts.iter().flat_map(|p| &p.slots) {
        if slot.fd >= 0 {
            net::close(slot.fd);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let full = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello";
        assert_eq!(parse_response(full), Ok(Some((200, full.len()))));
        assert_eq!(parse_response(&full[..full.len() - 1]), Ok(None));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Len"), Ok(None));
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            Ok(Some((404, 45)))
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn connections_are_shared_evenly() {
        assert_eq!(shares(10, 1), vec![10]);
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(2, 4), vec![1, 1]);
    }

    #[test]
    fn echo_check_spots_wrong_bytes() {
        let want: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
        assert!(same_bytes(&want, &want));
        assert!(same_bytes(&want[..10], &want[..10]));
        assert!(!same_bytes(&want[1..11], &want[..10]));
        assert!(!same_bytes(&want[1..], &want[..want.len() - 1]));
        let mut got = want.clone();
        got[99_999] ^= 1;
        assert!(!same_bytes(&got, &want));
        assert!(!same_bytes(&want[..5], &want[..6]));
    }

    #[test]
    fn echo_request_has_the_configured_size() {
        let cfg = crate::args::parse(&["echo", "--unix", "/x", "--size", "300"].map(String::from)).unwrap();
        let req = build_request(&cfg);
        assert_eq!(req.len(), 300);
        assert_eq!((req[0], req[250], req[251]), (0, 250, 0));
    }
}
