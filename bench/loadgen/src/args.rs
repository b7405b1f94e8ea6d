//! Command-line parsing for the load generator (no dependency beyond std).

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use crate::net::Target;

pub const USAGE: &str = "\
usage: loadgen MODE TARGET [options]

modes:
  echo       each connection sends a message, waits for the whole echo, repeats
  http       HTTP/1.1 keep-alive GET requests; responses need Content-Length
  churn      connect, send one message, read its echo, close; repeat
  udp        each client socket sends a datagram, waits for its echo, repeats; a datagram
             unanswered for 200 ms counts as an error and the client sends the next
  tls-echo   echo over TLS (the same as echo --tls)
  tls-churn  connect, TLS handshake, one message and its echo, close; repeat (churn --tls)
  https      http over TLS (http --tls)
  sink       one stream read as fast as it comes (reads of --size bytes); counts MiB
  source     one stream written as fast as it is taken (writes of --size bytes); counts MiB

target (one of):
  --tcp HOST:PORT        TCP address (TCP_NODELAY is set)
  --host HOST --port N   same, in two parts
  --unix PATH            Unix stream socket
  --fifo PATH            a FIFO, opened for reading (sink) or writing (source); bulk modes only
  --udp HOST:PORT        UDP address (udp mode)

options:
  --conns N          concurrent connections (default 10)
  --size BYTES       message size for echo and churn (default 1024); read or write size
                     for sink and source (default 65536)
  --duration SECS    length of the measured window (default 5)
  --warmup SECS      load before the window, not measured (default 1)
  --path PATH        request path for http (default /)
  --threads N        client threads, each with its own epoll and share of the connections
                     (default 1; more only helps when there are cores to spare beside the server)
  --hold             after the window, keep the connections open until stdin closes
  --tls              speak TLS (rustls, TLS 1.2 or 1.3, the server's certificate not verified,
                     no session resumption: every connection makes a full handshake)

Prints `window-start` and `window-end` lines on stderr at the edges of the measured window and
one JSON line on stdout:
  {\"ops\":N,\"seconds\":S,\"ops_per_sec\":X,\"p50_us\":..,\"p99_us\":..,\"errors\":E,...}
In the bulk modes (sink, source) an operation is one MiB moved, and there is no latency.
";

/// The smallest datagram of udp mode: its first 8 bytes are a sequence number.
pub const UDP_MIN_SIZE: usize = 8;

/// What kind of load to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Echo,
    Http,
    Churn,
    /// Bulk: read one stream as fast as it comes.
    Sink,
    /// Bulk: write one stream as fast as it is taken.
    Source,
    Udp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Http => "http",
            Mode::Churn => "churn",
            Mode::Sink => "sink",
            Mode::Source => "source",
            Mode::Udp => "udp",
        }
    }

    /// One stream one way, measured in MiB (`bulk.rs`), rather than request slots.
    pub fn is_bulk(self) -> bool {
        matches!(self, Mode::Sink | Mode::Source)
    }
}

/// Everything one run needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub target: Target,
    /// A FIFO to open instead of connecting to `target` (bulk modes).
    pub fifo: Option<PathBuf>,
    /// `Host` header value for http.
    pub host: String,
    pub conns: usize,
    pub size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub path: String,
    pub hold: bool,
    /// Threads, each with its own epoll instance and share of the connections.
    pub threads: usize,
    /// Speak TLS over the stream connections.
    pub tls: bool,
}

impl Config {
    /// The mode's name as given on the command line (`tls-` modes for TLS).
    pub fn mode_name(&self) -> &'static str {
        match (self.mode, self.tls) {
            (Mode::Echo, true) => "tls-echo",
            (Mode::Churn, true) => "tls-churn",
            (Mode::Http, true) => "https",
            (mode, _) => mode.name(),
        }
    }
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    let secs: f64 = value.parse().map_err(|_| format!("{flag}: not a number: {value}"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{flag}: out of range: {value}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn count(flag: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: expected a positive integer, got {value}")),
    }
}

fn resolve(hostport: &str) -> Result<std::net::SocketAddr, String> {
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("no address for {hostport}"))
}

/// Parses `args` (without the program name).
pub fn parse(args: &[String]) -> Result<Config, String> {
    let mut it = args.iter();
    let mut tls = false;
    let mode = match it.next().map(String::as_str) {
        Some("echo") => Mode::Echo,
        Some("http") => Mode::Http,
        Some("churn") => Mode::Churn,
        Some("sink") => Mode::Sink,
        Some("source") => Mode::Source,
        Some("udp") => Mode::Udp,
        Some("tls-echo") => {
            tls = true;
            Mode::Echo
        }
        Some("tls-churn") => {
            tls = true;
            Mode::Churn
        }
        Some("https") => {
            tls = true;
            Mode::Http
        }
        Some(other) => return Err(format!("unknown mode {other}")),
        None => return Err("missing mode".into()),
    };
    let mut tcp = None;
    let mut host = None;
    let mut port = None;
    let mut unix = None;
    let mut fifo = None;
    let mut size = None;
    let mut udp = None;
    let mut cfg = Config {
        mode,
        target: Target::Unix(PathBuf::new()),
        fifo: None,
        host: String::new(),
        conns: 10,
        size: 1024,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        path: "/".into(),
        hold: false,
        threads: 1,
        tls,
    };
    while let Some(flag) = it.next() {
        if flag == "--hold" {
            cfg.hold = true;
            continue;
        }
        if flag == "--tls" {
            cfg.tls = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tcp" => tcp = Some(value.clone()),
            "--host" => host = Some(value.clone()),
            "--port" => port = Some(value.parse::<u16>().map_err(|_| format!("bad port {value}"))?),
            "--unix" => unix = Some(PathBuf::from(value)),
            "--fifo" => fifo = Some(PathBuf::from(value)),
            "--udp" => udp = Some(value.clone()),
            "--conns" | "--concurrency" => cfg.conns = count(flag, value)?,
            "--size" => size = Some(count(flag, value)?),
            "--duration" => cfg.duration = seconds(flag, value)?,
            "--warmup" => cfg.warmup = seconds(flag, value)?,
            "--path" => cfg.path = value.clone(),
            "--threads" => cfg.threads = count(flag, value)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    cfg.size = size.unwrap_or(if mode.is_bulk() { 65536 } else { 1024 });
    if let Some(path) = fifo {
        if !mode.is_bulk() {
            return Err("--fifo is for the sink and source modes".into());
        }
        if tcp.is_some() || host.is_some() || port.is_some() || unix.is_some() {
            return Err(
                "give exactly one target: --tcp HOST:PORT, --host HOST --port N, --unix PATH or --fifo PATH".into(),
            );
        }
        cfg.fifo = Some(path);
        cfg.conns = 1;
        cfg.threads = 1;
        return Ok(cfg);
    }
    cfg.target = match (tcp, host, port, unix) {
        (None, None, None, None) if udp.is_some() => {
            let hp = udp.unwrap_or_default();
            cfg.host = hp.clone();
            Target::Udp(resolve(&hp)?)
        }
        (Some(hp), None, None, None) if udp.is_none() => {
            cfg.host = hp.clone();
            Target::Tcp(resolve(&hp)?)
        }
        (None, Some(h), Some(p), None) if udp.is_none() => {
            let hp = if h.contains(':') {
                format!("[{h}]:{p}")
            } else {
                format!("{h}:{p}")
            };
            cfg.host = hp.clone();
            Target::Tcp(resolve(&hp)?)
        }
        (None, None, None, Some(path)) if udp.is_none() => {
            cfg.host = "localhost".into();
            Target::Unix(path)
        }
        _ => {
            return Err(
                "give exactly one target: --tcp HOST:PORT, --host HOST --port N, --unix PATH or --udp HOST:PORT".into(),
            )
        }
    };
    if (cfg.mode == Mode::Udp) != matches!(cfg.target, Target::Udp(_)) {
        return Err("udp mode needs --udp HOST:PORT, and --udp needs udp mode".into());
    }
    if cfg.mode == Mode::Udp && !(UDP_MIN_SIZE..=65_507).contains(&cfg.size) {
        return Err(format!("udp: --size must be from {UDP_MIN_SIZE} to 65507 bytes"));
    }
    if cfg.tls && cfg.mode == Mode::Udp {
        return Err("--tls is for stream connections, not udp".into());
    }
    if mode.is_bulk() {
        cfg.conns = 1;
    }
    cfg.threads = cfg.threads.min(cfg.conns);
    if cfg.mode == Mode::Http && !cfg.path.starts_with('/') {
        return Err("--path must start with /".into());
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_a_full_command_line() {
        let cfg = parse(&strings(
            "echo --tcp 127.0.0.1:9 --conns 3 --size 10 --duration 0.5 --warmup 0 --hold --threads 2",
        ))
        .unwrap();
        assert_eq!(cfg.mode, Mode::Echo);
        assert!(matches!(cfg.target, Target::Tcp(a) if a.port() == 9));
        assert_eq!((cfg.conns, cfg.size, cfg.hold, cfg.threads), (3, 10, true, 2));
        assert_eq!(cfg.duration, Duration::from_millis(500));
        assert_eq!(cfg.warmup, Duration::ZERO);
    }

    #[test]
    fn host_and_port_and_unix() {
        let cfg = parse(&strings("http --host 127.0.0.1 --port 80")).unwrap();
        assert_eq!(cfg.host, "127.0.0.1:80");
        let cfg = parse(&strings("churn --unix /tmp/x.sock")).unwrap();
        assert!(matches!(cfg.target, Target::Unix(_)));
    }

    #[test]
    fn bulk_modes() {
        let cfg = parse(&strings("sink --fifo /tmp/f")).unwrap();
        assert_eq!((cfg.mode, cfg.size, cfg.conns), (Mode::Sink, 65536, 1));
        assert_eq!(cfg.fifo.as_deref(), Some(std::path::Path::new("/tmp/f")));
        let cfg = parse(&strings("source --tcp 127.0.0.1:9 --size 100 --conns 5")).unwrap();
        assert_eq!((cfg.mode, cfg.size, cfg.conns), (Mode::Source, 100, 1));
        assert!(cfg.fifo.is_none());
        assert!(parse(&strings("echo --fifo /tmp/f")).is_err());
        assert!(parse(&strings("sink --fifo /tmp/f --unix /x")).is_err());
    }

    #[test]
    fn udp_and_tls_modes() {
        let cfg = parse(&strings("udp --udp 127.0.0.1:9 --size 64")).unwrap();
        assert!(matches!(cfg.target, Target::Udp(a) if a.port() == 9));
        assert_eq!(cfg.mode_name(), "udp");
        assert!(parse(&strings("udp --tcp 127.0.0.1:9")).is_err());
        assert!(parse(&strings("echo --udp 127.0.0.1:9")).is_err());
        assert!(parse(&strings("udp --udp 127.0.0.1:9 --size 4")).is_err());
        assert!(parse(&strings("udp --udp 127.0.0.1:9 --tls")).is_err());
        let cfg = parse(&strings("tls-churn --tcp 127.0.0.1:9")).unwrap();
        assert_eq!((cfg.mode, cfg.tls, cfg.mode_name()), (Mode::Churn, true, "tls-churn"));
        let cfg = parse(&strings("echo --tcp 127.0.0.1:9 --tls")).unwrap();
        assert_eq!(cfg.mode_name(), "tls-echo");
        assert_eq!(
            parse(&strings("https --host 127.0.0.1 --port 9")).unwrap().mode_name(),
            "https"
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&strings("echo")).is_err());
        assert!(parse(&strings("nope --tcp 127.0.0.1:1")).is_err());
        assert!(parse(&strings("echo --tcp 127.0.0.1:1 --unix /x")).is_err());
        assert!(parse(&strings("echo --tcp 127.0.0.1:1 --conns 0")).is_err());
        assert!(parse(&strings("echo --tcp 127.0.0.1:1 --duration")).is_err());
    }
}
