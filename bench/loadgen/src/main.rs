//! loadgen: the load generator of the ferroloop benchmark suite.
//!
//! An epoll client (one thread unless `--threads` says more) that keeps a fixed number of
//! connections busy against a server on this machine (echo, HTTP/1.1 keep-alive, or
//! connection churn), so that the Python server under test is the bottleneck and not the
//! client; or, in the bulk modes, one stream (a connection or a FIFO) read or written as
//! fast as the server goes. It prints one JSON line with the throughput, the latency
//! percentiles and the error count of the measured window. See `loadgen --help` and
//! bench/README.md.

mod args;
mod bulk;
mod driver;
mod hist;
mod net;
mod tls;

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use driver::Report;

/// The JSON line printed on stdout.
fn to_json(cfg: &args::Config, r: &Report) -> String {
    let us = |ns: u64| ns as f64 / 1000.0;
    let rate = if r.seconds > 0.0 { r.ops / r.seconds } else { 0.0 };
    let line = format!(
        concat!(
            "{{\"mode\":\"{}\",\"conns\":{},\"threads\":{},\"size\":{},\"ops\":{},\"seconds\":{:.6},\"ops_per_sec\":{:.1},",
            "\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"errors\":{},\"cpu_s\":{:.4}}}"
        ),
        cfg.mode_name(),
        cfg.conns,
        cfg.threads,
        cfg.size,
        r.ops,
        r.seconds,
        rate,
        us(r.hist.quantile(0.50)),
        us(r.hist.quantile(0.90)),
        us(r.hist.quantile(0.99)),
        us(r.hist.max()),
        r.errors,
        r.cpu_seconds,
    );
    match &r.tls {
        // Appended before the closing brace: what the TLS sessions negotiated.
        Some(tls) => format!("{},\"tls\":\"{tls}\"}}", &line[..line.len() - 1]),
        None => line,
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv.iter().any(|a| a == "-h" || a == "--help") {
        print!("{}", args::USAGE);
        return if argv.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let cfg = match args::parse(&argv) {
        Ok(cfg) => cfg,
        Err(msg) => {
            eprintln!("loadgen: {msg}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let printed = |report: &Report| {
        // Print before holding, so the reader has the numbers while the sockets stay open.
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{}", to_json(&cfg, report));
        let _ = out.flush();
        if cfg.hold {
            let mut sink = String::new();
            let stdin = io::stdin();
            let mut lock = stdin.lock();
            while matches!(lock.read_line(&mut sink), Ok(n) if n > 0) {
                sink.clear();
            }
        }
    };
    let result = if cfg.mode.is_bulk() {
        bulk::run(&cfg, printed)
    } else {
        driver::run(&cfg, printed)
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_keys() {
        let cfg = args::parse(&["echo", "--unix", "/x"].map(String::from)).unwrap();
        let mut hist = hist::Histogram::new();
        hist.record(2_000);
        let line = to_json(
            &cfg,
            &Report {
                ops: 10.0,
                seconds: 2.0,
                errors: 1,
                cpu_seconds: 0.5,
                hist,
                tls: None,
            },
        );
        for key in [
            "\"ops\":10",
            "\"seconds\":2.0",
            "\"ops_per_sec\":5.0",
            "\"p50_us\":",
            "\"p99_us\":",
            "\"errors\":1",
            "\"cpu_s\":0.5",
        ] {
            assert!(line.contains(key), "{key} missing from {line}");
        }
        assert!(line.starts_with('{') && line.ends_with('}'));
    }
}
