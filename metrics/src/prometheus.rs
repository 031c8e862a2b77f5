//! Prometheus text exposition (format 0.0.4) of a merged [`MetricsSnapshot`].
//!
//! Owns: metric family names, HELP/TYPE lines, label escaping, and the unit conversion from
//! the nanoseconds we record to the seconds Prometheus expects. Must never: emit a family
//! twice, emit a sample before its TYPE line, or emit a non-finite value other than `NaN` for
//! an empty summary's quantiles.
//!
//! Histograms are exposed as summaries: HdrHistogram already holds exact-to-0.1% quantiles,
//! which fixed Prometheus buckets would only blur. The quantiles are cumulative since start.

use std::fmt::Write as _;

use crate::hist::Distribution;
use crate::names::{Counter, Stage};
use crate::snapshot::MetricsSnapshot;

/// Quantiles every summary exposes.
pub const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

const NS_PER_SECOND: f64 = 1e9;

/// Renders the whole exposition.
pub(crate) fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::with_capacity(8 * 1024);

    family_header(
        &mut out,
        "sluice_stage_latency_seconds",
        "summary",
        "Time spent in each broker stage, cumulative since start.",
    );
    for stage in Stage::ALL {
        summary(
            &mut out,
            "sluice_stage_latency_seconds",
            &[("stage", stage.name())],
            snapshot.stage(stage),
            NS_PER_SECOND,
        );
    }

    family_header(
        &mut out,
        "sluice_request_latency_seconds",
        "summary",
        "End-to-end request latency per Kafka API, frame read to response written.",
    );
    for (api, hist) in snapshot.requests() {
        summary(
            &mut out,
            "sluice_request_latency_seconds",
            &[("api", api)],
            hist,
            NS_PER_SECOND,
        );
    }

    family_header(
        &mut out,
        "sluice_requests_total",
        "counter",
        "Requests answered per Kafka API.",
    );
    for (api, hist) in snapshot.requests() {
        sample(
            &mut out,
            "sluice_requests_total",
            &[("api", api)],
            hist.count() as f64,
        );
    }

    family_header(
        &mut out,
        "sluice_group_commit_bytes",
        "summary",
        "Bytes made durable by one group commit (write + fdatasync).",
    );
    summary(
        &mut out,
        "sluice_group_commit_bytes",
        &[],
        snapshot.group_commit_bytes(),
        1.0,
    );
    family_header(
        &mut out,
        "sluice_group_commit_records",
        "summary",
        "Records made durable by one group commit.",
    );
    summary(
        &mut out,
        "sluice_group_commit_records",
        &[],
        snapshot.group_commit_records(),
        1.0,
    );

    for counter in Counter::ALL {
        let name = format!("sluice_{}_total", counter.name());
        family_header(&mut out, &name, "counter", counter_help(counter));
        sample(&mut out, &name, &[], snapshot.counter(counter) as f64);
    }

    for (name, value) in snapshot.process_values() {
        let name = format!("sluice_{name}");
        family_header(
            &mut out,
            &name,
            "untyped",
            "Process-wide value (see /stats process).",
        );
        sample(&mut out, &name, &[], *value as f64);
    }

    for family in snapshot.labelled_families() {
        family_header(&mut out, &family.name, family.kind, family.help);
        for (labels, value) in &family.samples {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            sample(&mut out, &family.name, &labels, *value);
        }
    }

    family_header(
        &mut out,
        "sluice_connections_active",
        "gauge",
        "Client connections open now.",
    );
    sample(
        &mut out,
        "sluice_connections_active",
        &[],
        snapshot.connections_active() as f64,
    );
    family_header(
        &mut out,
        "sluice_blocking_jobs_in_flight",
        "gauge",
        "Blocking-pool jobs submitted by the storage engine and not done (queued or running).",
    );
    sample(
        &mut out,
        "sluice_blocking_jobs_in_flight",
        &[],
        snapshot.blocking_jobs_in_flight() as f64,
    );
    family_header(
        &mut out,
        "sluice_shards",
        "gauge",
        "Shards that answered this scrape.",
    );
    sample(
        &mut out,
        "sluice_shards",
        &[],
        snapshot.shard_count() as f64,
    );
    out
}

fn counter_help(counter: Counter) -> &'static str {
    match counter {
        Counter::BytesIn => "Request bytes read from client sockets.",
        Counter::BytesOut => "Response bytes written to client sockets.",
        Counter::RecordsIn => "Records accepted by produce requests.",
        Counter::RecordsOut => "Records returned by fetch responses.",
        Counter::Errors => "Requests answered with an error, and connections closed for bad input.",
        Counter::ConnectionsOpened => "Client connections accepted.",
        Counter::ConnectionsClosed => "Client connections closed.",
        Counter::UringSubmissions => "io_uring submission queue entries submitted.",
        Counter::UringCompletions => "io_uring completion queue entries reaped.",
        Counter::FetchCacheBudgetFileReads => "Fetch reads of cached data served from segment files because fetch.response.cache.bytes.max was spent.",
        Counter::BlockingJobsSubmitted => "Jobs the storage engine handed to the blocking pool.",
        Counter::BlockingJobsDone => "Blocking-pool jobs whose result is back on the shard.",
        Counter::FetchSessionsCreated => "Incremental fetch sessions (KIP-227) created.",
        Counter::FetchSessionsClosed => "Fetch sessions closed by their client or evicted; created minus closed are open.",
        Counter::IncrementalFetches => "Incremental fetches of an existing fetch session.",
        Counter::SaslAuthentications => "SASL authentications and re-authentications that succeeded.",
        Counter::SaslAuthenticationFailures => "SASL authentications that failed (answered SASL_AUTHENTICATION_FAILED, connection closed after connection.failed.authentication.delay.ms).",
    }
}

fn family_header(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Quantile lines then `_sum` and `_count`, values divided by `scale` (1e9 turns ns into s).
fn summary(out: &mut String, name: &str, labels: &[(&str, &str)], hist: &Distribution, scale: f64) {
    let empty = hist.count() == 0;
    for q in QUANTILES {
        let q_label = format_value(q);
        let mut with_q: Vec<(&str, &str)> = labels.to_vec();
        with_q.push(("quantile", &q_label));
        let value = if empty {
            f64::NAN
        } else {
            hist.value_at_quantile(q) as f64 / scale
        };
        sample(out, name, &with_q, value);
    }
    sample(
        out,
        &format!("{name}_sum"),
        labels,
        hist.sum() as f64 / scale,
    );
    sample(out, &format!("{name}_count"), labels, hist.count() as f64);
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            escape_label_into(out, val);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

/// Label values escape backslash, double quote and newline, per the exposition format.
fn escape_label_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Go-style float text: `NaN`, `+Inf`, `-Inf`, or Rust's shortest round-trip decimal.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShardMetrics;
    use std::collections::{BTreeMap, BTreeSet};

    /// One parsed sample line: name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);
    /// A series without its quantile label: name and the other labels.
    type SeriesKey = (String, Vec<(String, String)>);

    /// A strict reader of the subset of the text format we emit. Returns an error naming the
    /// first bad line, so a failing test says what was wrong.
    fn parse(text: &str) -> Result<(BTreeMap<String, String>, Vec<Sample>), String> {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad("TYPE needs name and kind"));
                };
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(bad("family declared twice"));
                }
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                return Err(bad("unexpected line"));
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
            let value: f64 = value.parse().map_err(|_| bad("value is not a float"))?;
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .ok_or_else(|| bad("unclosed labels"))?;
                    let mut labels = BTreeMap::new();
                    for pair in body.split(',') {
                        let (k, v) = pair.split_once('=').ok_or_else(|| bad("label w/o ="))?;
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .ok_or_else(|| bad("label value not quoted"))?;
                        labels.insert(k.to_string(), v.to_string());
                    }
                    (name, labels)
                }
            };
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid_name {
                return Err(bad("bad metric name"));
            }
            let family = ["_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
                .unwrap_or(name);
            if !types.contains_key(family) {
                return Err(bad("sample before its TYPE line"));
            }
            samples.push((name.to_string(), labels, value));
        }
        Ok((types, samples))
    }

    fn loaded_snapshot() -> MetricsSnapshot {
        let s = ShardMetrics::new(0);
        for v in 1..=10_000u64 {
            s.record_stage_ns(Stage::AppendFsync, v * 1_000);
            s.record_stage_ns(Stage::AppendWrite, v * 37);
        }
        s.record_request_ns(0, 2_000_000);
        s.record_request_ns(18, 40_000);
        s.record_group_commit(1 << 20, 1024);
        s.count(Counter::BytesIn, 12_345);
        s.count(Counter::ConnectionsOpened, 2);
        s.count(Counter::BlockingJobsSubmitted, 5);
        s.count(Counter::BlockingJobsDone, 3);
        s.record_stage_ns(Stage::BlockingJob, 250_000);
        s.snapshot()
    }

    #[test]
    fn exposition_parses_and_quantiles_are_monotone() {
        let text = loaded_snapshot().to_prometheus();
        let (types, samples) = match parse(&text) {
            Ok(parsed) => parsed,
            Err(e) => panic!("{e}\n{text}"),
        };
        assert_eq!(types["sluice_stage_latency_seconds"], "summary");
        assert_eq!(types["sluice_bytes_in_total"], "counter");
        assert_eq!(types["sluice_connections_active"], "gauge");
        assert_eq!(types["sluice_blocking_jobs_in_flight"], "gauge");

        // Within each series, quantile values never decrease as the quantile rises.
        let mut by_series: BTreeMap<SeriesKey, Vec<(f64, f64)>> = BTreeMap::new();
        for (name, labels, value) in &samples {
            if let Some(q) = labels.get("quantile") {
                let rest: Vec<(String, String)> = labels
                    .iter()
                    .filter(|(k, _)| *k != "quantile")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let q: f64 = q.parse().unwrap_or(f64::NAN);
                assert!((0.0..=1.0).contains(&q), "bad quantile {q}");
                by_series
                    .entry((name.clone(), rest))
                    .or_default()
                    .push((q, *value));
            }
        }
        assert!(!by_series.is_empty());
        for (series, points) in &by_series {
            let finite: Vec<f64> = points.iter().map(|p| p.1).filter(|v| !v.is_nan()).collect();
            assert!(
                finite.windows(2).all(|w| w[0] <= w[1]),
                "{series:?}: {points:?}"
            );
        }

        let find = |name: &str, label: Option<(&str, &str)>| -> f64 {
            samples
                .iter()
                .find(|(n, l, _)| {
                    n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
                })
                .map(|s| s.2)
                .unwrap_or(f64::NAN)
        };
        // 1..=10,000 microseconds: p50 = 5 ms, max = 10 ms (within HdrHistogram's 0.1%).
        let fsync_p50 = samples
            .iter()
            .find(|(n, l, _)| {
                n == "sluice_stage_latency_seconds"
                    && l.get("stage").map(String::as_str) == Some("append_fsync")
                    && l.get("quantile").map(String::as_str) == Some("0.5")
            })
            .map(|s| s.2)
            .unwrap_or(f64::NAN);
        assert!((fsync_p50 - 0.005).abs() < 0.005 * 0.001, "{fsync_p50}");
        let fsync_sum = find(
            "sluice_stage_latency_seconds_sum",
            Some(("stage", "append_fsync")),
        );
        assert!(
            (fsync_sum - 50.005).abs() < 1e-9,
            "exact sum in seconds: {fsync_sum}"
        );
        assert_eq!(
            find(
                "sluice_stage_latency_seconds_count",
                Some(("stage", "append_fsync"))
            ),
            10_000.0
        );
        assert_eq!(find("sluice_requests_total", Some(("api", "Produce"))), 1.0);
        assert_eq!(find("sluice_bytes_in_total", None), 12_345.0);
        assert_eq!(find("sluice_connections_active", None), 2.0);
        assert_eq!(find("sluice_blocking_jobs_in_flight", None), 2.0);
        assert_eq!(find("sluice_blocking_jobs_submitted_total", None), 5.0);
        assert_eq!(
            find(
                "sluice_stage_latency_seconds_count",
                Some(("stage", "blocking_job"))
            ),
            1.0
        );
        assert_eq!(find("sluice_group_commit_bytes_sum", None), 1_048_576.0);
    }

    #[test]
    fn empty_summaries_expose_nan_quantiles_and_zero_counts() {
        let text = MetricsSnapshot::empty().to_prometheus();
        let (_, samples) = parse(&text).unwrap_or_default();
        assert!(!samples.is_empty(), "{text}");
        let stages: BTreeSet<&str> = samples
            .iter()
            .filter(|(n, _, _)| n == "sluice_stage_latency_seconds_count")
            .filter_map(|(_, l, _)| l.get("stage").map(String::as_str))
            .collect();
        assert_eq!(stages.len(), Stage::COUNT, "every stage is always exposed");
        assert!(samples
            .iter()
            .filter(|(_, l, _)| l.contains_key("quantile"))
            .all(|(_, _, v)| v.is_nan()));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("l", "a\"b\\c\nd")], 1.0);
        assert_eq!(out, "m{l=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn floats_use_prometheus_spellings() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(0.000_001_5), "0.0000015");
        assert_eq!(format_value(3.0), "3");
    }
}
