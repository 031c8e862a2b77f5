//! `sluice stats`: a terminal view of the broker's `/stats`, once or refreshed in place.
//!
//! Owns: the command's flags, a minimal HTTP GET of `/stats`, and rendering a
//! [`StatsReport`] as a table with rates from counter deltas. Must never: talk to anything but
//! the one admin address it is given, retry without a pause, or hold more than
//! [`RESPONSE_BYTES_MAX`] of a response.

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::hist::Summary;
use crate::names::{Counter, Stage};
use crate::snapshot::StatsReport;

/// Largest `/stats` response read.
pub const RESPONSE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Connect, read and write timeout for one `/stats` request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Shortest refresh interval accepted by `--interval-ms`.
pub const INTERVAL_MS_MIN: u64 = 100;

/// Flags of `sluice stats`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// The broker's admin endpoint (its `--admin-listen`).
    #[arg(
        long,
        env = "SLUICE_ADMIN",
        default_value = "127.0.0.1:9644",
        value_name = "HOST:PORT"
    )]
    pub admin: String,
    /// Refresh in place every interval, with request and byte rates, until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Refresh interval for --watch, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(INTERVAL_MS_MIN..))]
    pub interval_ms: u64,
    /// With --watch, stop after this many refreshes (default: run until interrupted).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Print the raw `/stats` JSON once instead of a table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
}

/// Why `/stats` could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The address did not resolve.
    #[error("cannot resolve admin address {addr}: {source}")]
    Resolve {
        /// What was given.
        addr: String,
        /// Resolver error.
        source: std::io::Error,
    },
    /// Connecting, writing or reading failed.
    #[error("cannot read /stats from {addr}: {source} (is `sluice serve` running with --admin-listen {addr}?)")]
    Io {
        /// Admin address.
        addr: String,
        /// Socket error.
        source: std::io::Error,
    },
    /// The endpoint answered, but not with 200 and a body.
    #[error("admin endpoint {addr} answered {status_line:?}: {body}")]
    Status {
        /// Admin address.
        addr: String,
        /// The response's status line, or a description of what was wrong with it.
        status_line: String,
        /// The start of the response body.
        body: String,
    },
    /// The body was not the `/stats` JSON.
    #[error("admin endpoint {addr} sent /stats that is not valid JSON: {source}")]
    Json {
        /// Admin address.
        addr: String,
        /// Parse error.
        source: serde_json::Error,
    },
}

/// Fetches and parses `GET /stats` from `admin` (HOST:PORT).
pub fn fetch_report(admin: &str) -> Result<StatsReport, FetchError> {
    let body = fetch_body(admin)?;
    serde_json::from_slice(&body).map_err(|source| FetchError::Json {
        addr: admin.to_string(),
        source,
    })
}

fn fetch_body(admin: &str) -> Result<Vec<u8>, FetchError> {
    let io_err = |source| FetchError::Io {
        addr: admin.to_string(),
        source,
    };
    let addr = admin
        .to_socket_addrs()
        .map_err(|source| FetchError::Resolve {
            addr: admin.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| FetchError::Resolve {
            addr: admin.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        })?;
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(io_err)?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(io_err)?;
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(io_err)?;
    let request = format!("GET /stats HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io_err)?;
    let mut response = Vec::new();
    stream
        .take(RESPONSE_BYTES_MAX)
        .read_to_end(&mut response)
        .map_err(io_err)?;
    split_response(admin, &response)
}

/// Checks the status line and returns the body of a `Connection: close` response.
fn split_response(admin: &str, response: &[u8]) -> Result<Vec<u8>, FetchError> {
    let status_err = |status_line: &str, body: &[u8]| FetchError::Status {
        addr: admin.to_string(),
        status_line: status_line.to_string(),
        body: String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string(),
    };
    let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(status_err("no complete HTTP response head", response));
    };
    let head = String::from_utf8_lossy(&response[..head_end]);
    let body = &response[head_end + 4..];
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line.split(' ').nth(1);
    if !status_line.starts_with("HTTP/1.") || status != Some("200") {
        return Err(status_err(status_line, body));
    }
    Ok(body.to_vec())
}

/// Per-second rates between two reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Requests answered per second.
    pub requests_per_s: f64,
    /// Request bytes read per second.
    pub bytes_in_per_s: f64,
    /// Response bytes written per second.
    pub bytes_out_per_s: f64,
    /// Records produced per second.
    pub records_in_per_s: f64,
    /// Errors per second.
    pub errors_per_s: f64,
}

impl Rates {
    /// Rates from `earlier` to `later`, taken `elapsed` apart. `None` when no time passed or
    /// a counter went backwards (the broker restarted between the two).
    pub fn between(earlier: &StatsReport, later: &StatsReport, elapsed: Duration) -> Option<Rates> {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        let delta = |a: u64, b: u64| b.checked_sub(a).map(|d| d as f64 / seconds);
        let counter = |r: &StatsReport, c: Counter| r.counters.get(c.name()).copied().unwrap_or(0);
        let per_s = |c: Counter| delta(counter(earlier, c), counter(later, c));
        Some(Rates {
            requests_per_s: delta(earlier.requests_total, later.requests_total)?,
            bytes_in_per_s: per_s(Counter::BytesIn)?,
            bytes_out_per_s: per_s(Counter::BytesOut)?,
            records_in_per_s: per_s(Counter::RecordsIn)?,
            errors_per_s: per_s(Counter::Errors)?,
        })
    }
}

const NAME_WIDTH: usize = 22;
const COLUMNS: [&str; 7] = ["count", "p50", "p90", "p99", "p99.9", "max", "mean"];

/// Renders `report` as the `sluice stats` table. `rates` adds the throughput line (watch mode).
pub fn render_table(admin: &str, report: &StatsReport, rates: Option<&Rates>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sluice stats  {admin}  shards {}  connections {}  requests {}  blocking jobs in flight {}  (percentiles since broker start)",
        report.shards,
        report.connections_active,
        group_thousands(report.requests_total),
        report.blocking_jobs_in_flight,
    );
    if let Some(r) = rates {
        let _ = writeln!(
            out,
            "rates  requests/s {}  in {:.1} MB/s  out {:.1} MB/s  records in/s {}  errors/s {}",
            group_thousands(r.requests_per_s.round() as u64),
            r.bytes_in_per_s / 1e6,
            r.bytes_out_per_s / 1e6,
            group_thousands(r.records_in_per_s.round() as u64),
            group_thousands(r.errors_per_s.round() as u64),
        );
    }

    out.push('\n');
    header(&mut out, "stage latency");
    for (name, summary) in ordered(&report.stages_ns, Stage::ALL.iter().map(|s| s.name())) {
        row(&mut out, name, summary, format_ns);
    }
    if !report.requests_ns.is_empty() {
        out.push('\n');
        header(&mut out, "request latency");
        for (name, summary) in &report.requests_ns {
            row(&mut out, name, summary, format_ns);
        }
    }
    out.push('\n');
    header(&mut out, "group commit size");
    row(&mut out, "bytes", &report.group_commit_bytes, format_bytes);
    row(&mut out, "records", &report.group_commit_records, |v| {
        group_thousands(v as u64)
    });

    out.push('\n');
    let _ = write!(out, "counters ");
    for (i, (name, value)) in ordered(&report.counters, Counter::ALL.iter().map(|c| c.name()))
        .into_iter()
        .enumerate()
    {
        let sep = if i > 0 && i % 4 == 0 {
            "\n         "
        } else {
            " "
        };
        let _ = write!(out, "{sep}{name} {}", group_thousands(*value));
    }
    out.push('\n');
    out
}

/// Known names first in their canonical order, then any others (from a newer broker) sorted.
fn ordered<V>(
    map: &std::collections::BTreeMap<String, V>,
    known: impl Iterator<Item = &'static str>,
) -> Vec<(&str, &V)> {
    let known: Vec<&str> = known.collect();
    let mut rows: Vec<(&str, &V)> = known
        .iter()
        .filter_map(|k| map.get_key_value(*k).map(|(k, v)| (k.as_str(), v)))
        .collect();
    rows.extend(
        map.iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v)),
    );
    rows
}

fn header(out: &mut String, title: &str) {
    let _ = write!(out, "{title:<NAME_WIDTH$}");
    for c in COLUMNS {
        let width = if c == "count" { 12 } else { 10 };
        let _ = write!(out, "{c:>width$}");
    }
    out.push('\n');
}

fn row(out: &mut String, name: &str, s: &Summary, fmt: impl Fn(f64) -> String) {
    let _ = write!(
        out,
        "{:<NAME_WIDTH$}{:>12}",
        format!("  {name}"),
        group_thousands(s.count)
    );
    if s.count == 0 {
        for _ in 1..COLUMNS.len() {
            let _ = write!(out, "{:>10}", "-");
        }
    } else {
        for v in [s.p50, s.p90, s.p99, s.p999, s.max] {
            let _ = write!(out, "{:>10}", fmt(v as f64));
        }
        let _ = write!(out, "{:>10}", fmt(s.mean));
    }
    out.push('\n');
}

/// `850ns`, `12.3us`, `4.56ms`, `1.23s`.
pub fn format_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e6 {
        format!("{:.1}us", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

/// `512B`, `4.0KiB`, `1.5MiB`, `2.00GiB`.
pub fn format_bytes(bytes: f64) -> String {
    const KIB: f64 = 1024.0;
    if bytes < KIB {
        format!("{bytes:.0}B")
    } else if bytes < KIB * KIB {
        format!("{:.1}KiB", bytes / KIB)
    } else if bytes < KIB * KIB * KIB {
        format!("{:.1}MiB", bytes / (KIB * KIB))
    } else {
        format!("{:.2}GiB", bytes / (KIB * KIB * KIB))
    }
}

/// `1234567` -> `1,234,567`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs `sluice stats`. Exit code 0 on success, 1 when the endpoint cannot be read (in
/// one-shot mode; --watch keeps retrying and shows the error in place).
pub fn run(args: StatsArgs) -> ExitCode {
    if args.json {
        return match fetch_body(&args.admin) {
            Ok(body) => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&body);
                let _ = stdout.flush();
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    if !args.watch {
        return match fetch_report(&args.admin) {
            Ok(report) => {
                print!("{}", render_table(&args.admin, &report, None));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    watch(&args)
}

fn fail(e: &FetchError) -> ExitCode {
    eprintln!("sluice stats: {e}");
    ExitCode::FAILURE
}

fn watch(args: &StatsArgs) -> ExitCode {
    let interval = Duration::from_millis(args.interval_ms.max(INTERVAL_MS_MIN));
    let ansi = std::io::stdout().is_terminal();
    let mut previous: Option<(Instant, StatsReport)> = None;
    let mut refreshes = 0u64;
    loop {
        let started = Instant::now();
        let screen = match fetch_report(&args.admin) {
            Ok(report) => {
                let rates = previous
                    .as_ref()
                    .and_then(|(at, prev)| Rates::between(prev, &report, started - *at));
                let table = render_table(&args.admin, &report, rates.as_ref());
                previous = Some((started, report));
                table
            }
            Err(e) => {
                previous = None;
                format!(
                    "sluice stats: {e}\nretrying every {} ms\n",
                    interval.as_millis()
                )
            }
        };
        let mut stdout = std::io::stdout().lock();
        let written = if ansi {
            // Home, clear, draw: the table replaces itself instead of scrolling.
            write!(stdout, "\x1b[H\x1b[2J{screen}")
        } else {
            writeln!(stdout, "{screen}")
        };
        if written.and_then(|()| stdout.flush()).is_err() {
            // stdout closed (e.g. piped into `head`): nothing left to show.
            return ExitCode::SUCCESS;
        }
        drop(stdout);
        refreshes += 1;
        if args.count.is_some_and(|n| refreshes >= n) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MetricsSnapshot, ShardMetrics};

    fn report() -> StatsReport {
        let s = ShardMetrics::new(0);
        for v in 1..=1000u64 {
            s.record_stage_ns(Stage::AppendFsync, v * 1_000);
        }
        s.record_request_ns(0, 2_500_000);
        s.record_group_commit(64 * 1024, 64);
        s.count(Counter::BytesIn, 1_000_000);
        s.count(Counter::ConnectionsOpened, 3);
        MetricsSnapshot::merge_all([&s.snapshot()]).report()
    }

    #[test]
    fn table_shows_percentiles_per_stage() {
        let text = render_table("127.0.0.1:9644", &report(), None);
        let fsync = text
            .lines()
            .find(|l| l.trim_start().starts_with("append_fsync"))
            .unwrap_or_default();
        let cells: Vec<&str> = fsync.split_whitespace().collect();
        assert_eq!(
            cells,
            // HdrHistogram reports the top of each value's 0.1%-wide bucket, hence 500.2us
            // for 500us; the mean is exact.
            [
                "append_fsync",
                "1,000",
                "500.2us",
                "900.1us",
                "990.2us",
                "999.4us",
                "1.00ms",
                "500.5us"
            ],
            "{text}"
        );
        let empty = text
            .lines()
            .find(|l| l.trim_start().starts_with("cross_shard_hop"))
            .unwrap_or_default();
        assert_eq!(
            empty.split_whitespace().collect::<Vec<_>>(),
            ["cross_shard_hop", "0", "-", "-", "-", "-", "-", "-"]
        );
        assert!(text.contains("  Produce"), "{text}");
        assert!(text.contains("64.0KiB"), "{text}");
        assert!(text.contains("bytes_in 1,000,000"), "{text}");
        assert!(text.contains("connections 3"), "{text}");
        assert!(
            !text.contains("rates"),
            "no rates without a previous report"
        );
        // Columns line up: every stage row is as wide as its header.
        let widths: Vec<usize> = text
            .lines()
            .skip_while(|l| !l.starts_with("stage latency"))
            .take(1 + Stage::COUNT)
            .map(str::len)
            .collect();
        assert!(
            widths.windows(2).all(|w| w[0] == w[1]),
            "{widths:?}\n{text}"
        );
    }

    #[test]
    fn rates_come_from_counter_deltas() {
        let earlier = report();
        let mut later = earlier.clone();
        later.requests_total += 500;
        *later.counters.entry("bytes_in".into()).or_default() += 4_000_000;
        let rates = Rates::between(&earlier, &later, Duration::from_millis(500));
        let Some(rates) = rates else {
            panic!("rates expected")
        };
        assert_eq!(rates.requests_per_s, 1000.0);
        assert_eq!(rates.bytes_in_per_s, 8_000_000.0);
        let text = render_table("a:1", &later, Some(&rates));
        assert!(
            text.contains("requests/s 1,000  in 8.0 MB/s  out 0.0 MB/s"),
            "{text}"
        );
        // A restarted broker's counters go backwards: no rates rather than nonsense.
        assert_eq!(
            Rates::between(&later, &earlier, Duration::from_secs(1)),
            None
        );
        assert_eq!(Rates::between(&earlier, &later, Duration::ZERO), None);
    }

    #[test]
    fn report_from_an_older_or_newer_broker_still_renders() {
        let json = serde_json::json!({
            "shards": 4,
            "stages_ns": { "brand_new_stage": { "count": 2, "p50": 10, "max": 20 } },
            "future_field": true
        });
        let report: StatsReport = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(report.shards, 4);
        let text = render_table("a:1", &report, None);
        assert!(text.contains("brand_new_stage"), "{text}");
    }

    #[test]
    fn number_formats() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1_000), "1,000");
        assert_eq!(group_thousands(12_345_678), "12,345,678");
        assert_eq!(format_ns(850.0), "850ns");
        assert_eq!(format_ns(12_345.0), "12.3us");
        assert_eq!(format_ns(4_560_000.0), "4.56ms");
        assert_eq!(format_ns(1_230_000_000.0), "1.23s");
        assert_eq!(format_bytes(512.0), "512B");
        assert_eq!(format_bytes(1536.0 * 1024.0), "1.5MiB");
    }

    #[test]
    fn bad_responses_are_errors_not_panics() {
        assert!(split_response("a:1", b"").is_err());
        assert!(
            split_response("a:1", b"HTTP/1.1 503 Service Unavailable\r\n\r\nshard down").is_err()
        );
        assert!(split_response("a:1", b"garbage\r\n\r\n{}").is_err());
        assert_eq!(
            split_response("a:1", b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n{}").ok(),
            Some(b"{}".to_vec())
        );
    }
}
