//! Entry points for `cargo fuzz` (the targets in fuzz/ call them): the pieces of the
//! data path that take raw input and need no interpreter, each checked against a
//! model. Built only with `--cfg fuzzing`, which cargo fuzz sets.
//!
//! - `sockaddr`: socket addresses built from text and bytes as `sendto()` takes them,
//!   and read back as the kernel hands them over (sockaddr.rs);
//! - `write_queue`: the write buffer under pushes of any size (with part of a write
//!   already sent) and partial sends of any length (stream.rs's `WriteBuffer`);
//! - `recv_into`: receiving into a buffer of any length at any alignment, as for a
//!   BufferedProtocol's `get_buffer()`/`buffer_updated()` (stream.rs's
//!   `recv_cache_aligned`).

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::sync::OnceLock;

use crate::transports::sockaddr::{
    inet6_sockaddr, inet_sockaddr, ipv4_text, ipv6_text, unix_name, unix_sockaddr, SockAddr, UnixName,
};
use crate::transports::stream::{recv_cache_aligned, WriteBuffer};

fn storage_of(sa: &SockAddr) -> libc::sockaddr_storage {
    // SAFETY: a SockAddr's pointer is to a whole sockaddr_storage.
    unsafe { *(sa.as_ptr() as *const libc::sockaddr_storage) }
}

fn as_in(ss: &libc::sockaddr_storage) -> &libc::sockaddr_in {
    // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
    unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in) }
}

fn as_in6(ss: &libc::sockaddr_storage) -> &libc::sockaddr_in6 {
    // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
    unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in6) }
}

const SUN_PATH: usize = 108;

/// Addresses from fuzzed text and bytes: whatever is accepted reads back the same.
pub fn sockaddr(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 4 {
        0 => {
            // A Unix path or abstract name.
            let abstract_name = rest.first() == Some(&0);
            let fits = rest.len() < SUN_PATH || (abstract_name && rest.len() == SUN_PATH);
            let Some(sa) = unix_sockaddr(rest) else {
                assert!(!fits, "a name of {} bytes was refused", rest.len());
                return;
            };
            assert!(fits);
            assert_eq!(sa.len() as usize, 2 + rest.len());
            let ss = storage_of(&sa);
            assert_eq!(ss.ss_family as libc::c_int, libc::AF_UNIX);
            match unix_name(&ss, sa.len()) {
                UnixName::Abstract(name) => {
                    assert!(abstract_name);
                    assert_eq!(name, rest);
                }
                UnixName::Path(path) => {
                    assert!(!abstract_name);
                    // Up to the first NUL, as the socket module reads a path back.
                    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                    assert_eq!(path, &rest[..end]);
                }
            }
        }
        1 | 2 => {
            let (port, text) = match rest {
                [a, b, text @ ..] => (u16::from_le_bytes([*a, *b]), text),
                _ => return,
            };
            let Ok(host) = CString::new(text) else { return };
            if sel % 4 == 1 {
                let Some(sa) = inet_sockaddr(&host, port) else { return };
                let ss = storage_of(&sa);
                let a = as_in(&ss);
                assert_eq!(u16::from_be(a.sin_port), port);
                // The text form reads back as the same address, and as Rust reads it.
                let back = ipv4_text(a);
                let parsed: std::net::Ipv4Addr = back.parse().expect("a dotted quad");
                assert_eq!(parsed.octets(), a.sin_addr.s_addr.to_ne_bytes());
                let again = inet_sockaddr(&CString::new(back).unwrap(), port).expect("its own text");
                assert_eq!(as_in(&storage_of(&again)).sin_addr.s_addr, a.sin_addr.s_addr);
            } else {
                let (flowinfo, scope_id) = (u32::from(port) * 7 & 0xfffff, u32::from(port) << 3);
                let Some(sa) = inet6_sockaddr(&host, port, flowinfo, scope_id) else {
                    return;
                };
                let ss = storage_of(&sa);
                let a = as_in6(&ss);
                assert_eq!(u16::from_be(a.sin6_port), port);
                assert_eq!(u32::from_be(a.sin6_flowinfo), flowinfo);
                assert_eq!(a.sin6_scope_id, scope_id);
                let back = ipv6_text(a).expect("inet_ntop formats any address");
                let parsed: std::net::Ipv6Addr = back.parse().expect("an IPv6 text form");
                assert_eq!(parsed.octets(), a.sin6_addr.s6_addr);
                let again = inet6_sockaddr(&CString::new(back).unwrap(), port, 0, 0).expect("its own text");
                assert_eq!(as_in6(&storage_of(&again)).sin6_addr.s6_addr, a.sin6_addr.s6_addr);
            }
        }
        _ => {
            // Whatever bytes and length the kernel could hand over.
            let Some((&len, bytes)) = rest.split_first() else {
                return;
            };
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::sockaddr_storage>();
            let n = bytes.len().min(size);
            // SAFETY: ss is `size` writable bytes; n <= size.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), &mut ss as *mut _ as *mut u8, n) };
            let len = (len as usize % (size + 1)) as libc::socklen_t;
            let _ = ipv4_text(as_in(&ss));
            let _ = ipv6_text(as_in6(&ss)).expect("inet_ntop formats any address");
            match unix_name(&ss, len) {
                UnixName::Abstract(name) => {
                    assert!(!name.is_empty() && name[0] == 0);
                    assert!(name.len() <= SUN_PATH && name.len() + 2 <= len as usize);
                }
                UnixName::Path(path) => {
                    assert!(path.len() <= SUN_PATH && !path.contains(&0));
                }
            }
        }
    }
}

/// A byte source for the write queue's operations.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
}

/// The write queue against a plain byte queue: pushes of any size (with a leading
/// part already sent), sends of any part of what `iovecs()` offers.
pub fn write_queue(data: &[u8]) {
    let mut input = Input(data);
    let mut queue = WriteBuffer::default();
    let mut model: VecDeque<u8> = VecDeque::new();
    let mut counter: u8 = 0;
    // At most 64 operations per input: longer ones find nothing new, only slow it down.
    for _ in 0..64 {
        let Some(op) = input.byte() else { break };
        match op % 8 {
            0..=3 => {
                // Mostly small writes, some across the joining limit (16 KiB).
                let Some(raw) = input.u16() else { break };
                let len = if op % 8 == 1 {
                    raw as usize % 20_000
                } else {
                    raw as usize % 64
                };
                let skip = match input.byte() {
                    Some(s) if len > 0 && s % 4 == 0 => s as usize % (len + 1),
                    _ => 0,
                };
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        counter = counter.wrapping_add(1);
                        counter
                    })
                    .collect();
                queue.push(&bytes, skip, None);
                model.extend(&bytes[skip..]);
            }
            _ => {
                // A send that took `n` of the bytes offered.
                let iov = queue.iovecs();
                let offered: usize = iov.iter().map(|v| v.iov_len).sum();
                let Some(raw) = input.u16() else { break };
                let n = if offered == 0 { 0 } else { raw as usize % (offered + 1) };
                queue.consume(n);
                model.drain(..n);
            }
        }
        assert_eq!(queue.size, model.len());
        assert_eq!(queue.is_empty(), model.is_empty());
        let iov = queue.iovecs();
        assert!(iov.len() <= 64);
        let mut offered = Vec::new();
        for v in &iov {
            assert!(v.iov_len > 0, "an empty iovec");
            // SAFETY: each iovec points into a chunk the queue holds.
            offered.extend_from_slice(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) });
        }
        assert!(offered.len() <= model.len());
        assert!(
            model.iter().take(offered.len()).eq(offered.iter()),
            "offered bytes out of order"
        );
        if !model.is_empty() {
            assert!(!offered.is_empty(), "bytes queued but none offered");
        }
    }
    queue.consume(queue.size);
    assert!(queue.is_empty() && queue.iovecs().is_empty());
}

/// A connected, non-blocking Unix socket pair, made once.
fn pair() -> (RawFd, RawFd) {
    static PAIR: OnceLock<(RawFd, RawFd)> = OnceLock::new();
    *PAIR.get_or_init(|| {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two fds.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        (fds[0], fds[1])
    })
}

/// A receive into `len` bytes at any alignment of a larger allocation: the bytes land
/// exactly there, in order, and nothing around them changes.
pub fn recv_into(data: &[u8]) {
    let mut input = Input(data);
    let (Some(offset), Some(len), Some(sent)) = (input.byte(), input.u16(), input.u16()) else {
        return;
    };
    let offset = offset as usize % 128;
    let len = 1 + len as usize % 9000;
    let sent = sent as usize % 9000;
    let payload: Vec<u8> = (0..sent)
        .map(|i| (i as u8) ^ input.0.get(i % input.0.len().max(1)).copied().unwrap_or(0x5a))
        .collect();
    let (ours, theirs) = pair();
    if sent > 0 {
        // SAFETY: payload is `sent` readable bytes.
        let n = unsafe { libc::send(theirs, payload.as_ptr().cast(), sent, 0) };
        assert_eq!(n as usize, sent);
    }
    const GUARD: u8 = 0xa5;
    let mut mem = vec![GUARD; offset + len + 128];
    let got = recv_cache_aligned(ours, mem[offset..].as_mut_ptr(), len);
    let n = match got {
        Ok(n) => n,
        Err(e) => {
            assert_eq!(sent, 0, "recv failed with data waiting: {e}");
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
            0
        }
    };
    assert_eq!(n, sent.min(len));
    assert_eq!(&mem[offset..offset + n], &payload[..n]);
    assert!(mem[..offset].iter().all(|&b| b == GUARD), "written before the buffer");
    assert!(
        mem[offset + n..].iter().all(|&b| b == GUARD),
        "written past the bytes received"
    );
    // Leave the pair empty for the next input.
    let mut rest = vec![0u8; 9000];
    // SAFETY: rest is 9000 writable bytes.
    unsafe { libc::recv(ours, rest.as_mut_ptr().cast(), rest.len(), 0) };
}
