//! `sluice consume TOPIC`: prints records from chosen partitions and starting points, or as a
//! member of a consumer group that commits what it printed. It must never commit an offset past
//! a record it has not written to stdout, and exits cleanly (leaving its group) on Ctrl-C,
//! `--max-records` or the idle `--timeout-ms`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::format::{to_json, Format};
use super::ConnArgs;
use crate::admin::OffsetSpec;
use crate::client::{Client, TopicInfo};
use crate::consumer::{FetchOptions, PartitionReader};
use crate::group::{GroupMember, HeartbeatOutcome, MemberOptions};
use crate::records::ConsumedRecord;

/// Arguments of `sluice consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read
    pub topic: String,
    /// Start at the earliest offset (default: only new records)
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    pub from_beginning: bool,
    /// Start at this offset; negative N means N records before the end
    #[arg(
        long,
        short = 'o',
        allow_negative_numbers = true,
        conflicts_with = "from_time"
    )]
    pub offset: Option<i64>,
    /// Start at the first record at or after this time: ms since the epoch or
    /// YYYY-MM-DDTHH:MM:SS[.mmm]Z
    #[arg(long)]
    pub from_time: Option<String>,
    /// Read only this partition (default: all)
    #[arg(long, short = 'p', conflicts_with = "group")]
    pub partition: Option<i32>,
    /// Join this consumer group, read its assignment from the committed offsets and commit
    #[arg(long, short = 'g')]
    pub group: Option<String>,
    /// Exit after this many records
    #[arg(long, short = 'n')]
    pub max_records: Option<u64>,
    /// Exit when no record arrives for this long (default: wait forever)
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Output format with placeholders (see --help); default "%v\n"
    #[arg(long, short = 'F', conflicts_with = "json")]
    pub format: Option<String>,
    /// One JSON object per record
    #[arg(long)]
    pub json: bool,
    /// Most bytes per partition per fetch
    #[arg(long, default_value_t = 1_048_576)]
    pub fetch_partition_max_bytes: i32,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Parses `--from-time`: integer milliseconds or a UTC timestamp `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
pub fn parse_time_ms(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        format!("invalid time '{s}' (expected ms since the epoch or YYYY-MM-DDTHH:MM:SS[.mmm]Z)")
    };
    let s2 = s.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = s2.split_once('T').ok_or_else(bad)?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (Some(Ok(year)), Some(Ok(month)), Some(Ok(day)), None) =
        (d.next(), d.next(), d.next(), d.next())
    else {
        return Err(bad());
    };
    let (hms, millis) = match time.split_once('.') {
        Some((hms, frac)) => {
            let frac3: String = frac.chars().chain("000".chars()).take(3).collect();
            (hms, frac3.parse::<i64>().map_err(|_| bad())?)
        }
        None => (time, 0),
    };
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (Some(Ok(h)), Some(Ok(m)), Some(Ok(sec)), None) = (t.next(), t.next(), t.next(), t.next())
    else {
        return Err(bad());
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return Err(bad());
    }
    // Days from civil (proleptic Gregorian), after H. Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + h) * 60 + m) * 60_000 + sec * 1000 + millis)
}

enum Output {
    Format(Format),
    Json,
}

struct Printer {
    topic: String,
    output: Output,
    printed: u64,
    max_records: Option<u64>,
    /// Next offset to commit per partition: one past the last record printed.
    printed_next: BTreeMap<i32, i64>,
    buf: Vec<u8>,
}

impl Printer {
    fn done(&self) -> bool {
        self.max_records.is_some_and(|m| self.printed >= m)
    }

    /// Prints records until `--max-records`; returns Ok(false) when stdout is closed.
    fn print(&mut self, records: &[ConsumedRecord]) -> anyhow::Result<bool> {
        self.buf.clear();
        for r in records {
            if self.done() {
                break;
            }
            match &self.output {
                Output::Format(f) => f.render(&self.topic, r, &mut self.buf),
                Output::Json => {
                    self.buf
                        .extend_from_slice(to_json(&self.topic, r).to_string().as_bytes());
                    self.buf.push(b'\n');
                }
            }
            self.printed += 1;
            self.printed_next.insert(r.partition, r.offset + 1);
        }
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(&self.buf).and_then(|()| stdout.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
        }
    }
}

async fn start_positions(
    client: &Client,
    info: &TopicInfo,
    partitions: &[i32],
    args: &ConsumeArgs,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let latest = client
        .list_offsets(info, Some(partitions), OffsetSpec::Latest)
        .await?;
    let mut out = BTreeMap::new();
    if args.from_beginning {
        for (p, (o, _)) in client
            .list_offsets(info, Some(partitions), OffsetSpec::Earliest)
            .await?
        {
            out.insert(p, o);
        }
    } else if let Some(offset) = args.offset {
        let earliest = client
            .list_offsets(info, Some(partitions), OffsetSpec::Earliest)
            .await?;
        for p in partitions {
            let end = latest.get(p).map_or(0, |o| o.0);
            let start = earliest.get(p).map_or(0, |o| o.0);
            let wanted = if offset < 0 {
                (end + offset).max(start)
            } else {
                offset
            };
            out.insert(*p, wanted);
        }
    } else if let Some(time) = &args.from_time {
        let ms = parse_time_ms(time).map_err(anyhow::Error::msg)?;
        for (p, (o, _)) in client
            .list_offsets(info, Some(partitions), OffsetSpec::Timestamp(ms))
            .await?
        {
            let end = latest.get(&p).map_or(0, |x| x.0);
            out.insert(p, if o < 0 { end } else { o });
        }
    } else {
        for (p, (o, _)) in latest {
            out.insert(p, o);
        }
    }
    Ok(out)
}

/// Runs `sluice consume`.
pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let output = if args.json {
        Output::Json
    } else {
        Output::Format(
            Format::parse(args.format.as_deref().unwrap_or("%v\\n")).map_err(anyhow::Error::msg)?,
        )
    };
    if let Some(time) = &args.from_time {
        parse_time_ms(time).map_err(anyhow::Error::msg)?;
    }
    let client = args.conn.connect().await?;
    let info = client.topic(&args.topic).await?;
    let mut printer = Printer {
        topic: args.topic.clone(),
        output,
        printed: 0,
        max_records: args.max_records,
        printed_next: BTreeMap::new(),
        buf: Vec::new(),
    };
    let fetch = FetchOptions {
        partition_max_bytes: args.fetch_partition_max_bytes,
        ..FetchOptions::default()
    };
    let result = match args.group.clone() {
        Some(group) => consume_in_group(&client, info, &args, &group, fetch, &mut printer).await,
        None => consume_plain(&client, info, &args, fetch, &mut printer).await,
    };
    eprintln!("consumed {} record(s)", printer.printed);
    result
}

async fn consume_plain(
    client: &Arc<Client>,
    info: TopicInfo,
    args: &ConsumeArgs,
    fetch: FetchOptions,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let partitions: Vec<i32> = match args.partition {
        Some(p) => {
            if !info.partitions.iter().any(|x| x.partition == p) {
                anyhow::bail!(
                    "partition {p} of topic '{}' does not exist (it has {})",
                    info.name,
                    info.partitions.len()
                );
            }
            vec![p]
        }
        None => info.partitions.iter().map(|p| p.partition).collect(),
    };
    let positions = start_positions(client, &info, &partitions, args).await?;
    let mut reader = PartitionReader::new(Arc::clone(client), info, positions, fetch);
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut last_record = tokio::time::Instant::now();
    while !printer.done() {
        let records = tokio::select! {
            r = reader.poll() => r.map_err(|e| anyhow::anyhow!("{e}"))?,
            _ = tokio::signal::ctrl_c() => break,
        };
        if !records.is_empty() {
            last_record = tokio::time::Instant::now();
            if !printer.print(&records)? {
                break;
            }
        } else if idle.is_some_and(|d| last_record.elapsed() >= d) {
            break;
        }
    }
    Ok(())
}

async fn consume_in_group(
    client: &Arc<Client>,
    info: TopicInfo,
    args: &ConsumeArgs,
    group: &str,
    fetch: FetchOptions,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let mut member = GroupMember::join(
        Arc::clone(client),
        group,
        &args.topic,
        MemberOptions::default(),
    )
    .await
    .with_context(|| format!("joining group '{group}'"))?;
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut last_record = tokio::time::Instant::now();
    'generation: loop {
        let assigned = member.assignment().to_vec();
        let committed = member.committed().await?;
        let missing: Vec<i32> = assigned
            .iter()
            .copied()
            .filter(|p| !committed.contains_key(p))
            .collect();
        let mut positions = committed;
        if !missing.is_empty() {
            positions.extend(start_positions(client, &info, &missing, args).await?);
        }
        printer.printed_next.clear();
        let mut reader = PartitionReader::new(Arc::clone(client), info.clone(), positions, fetch);
        loop {
            if printer.done() {
                break 'generation;
            }
            let records = if assigned.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => Vec::new(),
                    _ = tokio::signal::ctrl_c() => break 'generation,
                }
            } else {
                tokio::select! {
                    r = reader.poll() => r.map_err(|e| anyhow::anyhow!("{e}"))?,
                    _ = tokio::signal::ctrl_c() => break 'generation,
                }
            };
            if !records.is_empty() {
                last_record = tokio::time::Instant::now();
                let open = printer.print(&records)?;
                member.commit(&printer.printed_next).await?;
                if !open {
                    break 'generation;
                }
            } else if idle.is_some_and(|d| last_record.elapsed() >= d) {
                break 'generation;
            }
            if member.heartbeat_if_due().await? == HeartbeatOutcome::Rebalance {
                // Commit what was printed under the old generation (may be fenced; harmless).
                let _ = member.commit(&printer.printed_next).await;
                member.rejoin().await?;
                continue 'generation;
            }
        }
    }
    member.commit(&printer.printed_next).await?;
    member.leave().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        assert_eq!(parse_time_ms("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time_ms("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time_ms("2024-02-29T12:00:00.5Z"),
            Ok(1_709_208_000_500)
        );
        assert!(parse_time_ms("yesterday").is_err());
        assert!(parse_time_ms("2024-13-01T00:00:00Z").is_err());
    }
}
