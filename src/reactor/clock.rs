//! The loop's clock: CLOCK_MONOTONIC, the clock behind `time.monotonic()` on Linux,
//! as a float of seconds computed exactly as CPython computes it (nanoseconds / 1e9),
//! so `loop.time()` and `time.monotonic()` agree to the last bit.

/// Seconds on the monotonic clock, at full resolution.
pub fn monotonic() -> f64 {
    let ns = monotonic_ns();
    if ns % 1_000_000_000 == 0 {
        (ns / 1_000_000_000) as f64
    } else {
        ns as f64 / 1e9
    }
}

/// Nanoseconds on the monotonic clock.
pub fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // CLOCK_MONOTONIC cannot fail on Linux with a valid pointer.
    let _ = syscall!(clock_gettime(libc::CLOCK_MONOTONIC, &mut ts));
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back() {
        let mut prev = monotonic();
        for _ in 0..10_000 {
            let now = monotonic();
            assert!(now >= prev);
            prev = now;
        }
    }

    #[test]
    fn has_sub_millisecond_resolution() {
        // Over many reads at least one pair differs by less than a millisecond
        // without being equal: nothing rounds to milliseconds.
        let samples: Vec<f64> = (0..1000).map(|_| monotonic()).collect();
        assert!(samples.windows(2).any(|w| w[1] > w[0] && w[1] - w[0] < 1e-3));
    }
}
