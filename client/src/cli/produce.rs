//! `sluice produce TOPIC`: one record per input line (stdin or `--file`), optional key split at
//! a separator, headers and an explicit partition. Lines are sent in batches as they arrive, so
//! an interactive session sees each line acknowledged promptly. It must never count a record as
//! acknowledged before the broker said so, and must exit non-zero if any record failed.

use std::io::BufRead;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use tokio::sync::mpsc;

use super::{parse_key_value, ConnArgs};
use crate::producer::{Acks, Producer};
use crate::records::{parse_compression, ProduceRecord};

/// Arguments of `sluice produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to produce to
    pub topic: String,
    /// Split each line at the first SEP into key and value
    #[arg(long, short = 'K')]
    pub key_separator: Option<String>,
    /// Header KEY=VALUE added to every record (repeatable)
    #[arg(long = "header", short = 'H', value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// Send every record to this partition (default: by key hash, round robin without key)
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// Acknowledgements: 0, 1 or all
    #[arg(long, default_value = "all")]
    pub acks: Acks,
    /// Read lines from this file instead of stdin
    #[arg(long, short = 'f')]
    pub file: Option<std::path::PathBuf>,
    /// Compression: none, gzip, snappy, lz4, zstd
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Most records per request
    #[arg(long, default_value_t = 10_000)]
    pub batch_records_max: usize,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Runs `sluice produce`.
pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let compression = parse_compression(&args.compression)?;
    if args.key_separator.as_deref() == Some("") {
        anyhow::bail!("--key-separator must not be empty");
    }
    let reader: Box<dyn BufRead + Send> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let client = args.conn.connect().await?;
    // Fail fast on a missing topic or partition before reading any input.
    let info = client.topic(&args.topic).await?;
    if let Some(p) = args.partition {
        if !info.partitions.iter().any(|x| x.partition == p) {
            anyhow::bail!(
                "partition {p} of topic '{}' does not exist (it has {})",
                args.topic,
                info.partitions.len()
            );
        }
    }
    let producer = Producer::new(Arc::clone(&client), args.acks, compression);
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4096);
    std::thread::spawn(move || read_lines(reader, tx));
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
        .collect();
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    let mut acknowledged = 0u64;
    let verb = if args.acks == Acks::None {
        "sent"
    } else {
        "acknowledged"
    };
    while let Some(first) = rx.recv().await {
        let mut lines = vec![first];
        while lines.len() < args.batch_records_max.max(1) {
            match rx.try_recv() {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        let mut records = Vec::with_capacity(lines.len());
        for line in lines {
            let line = line.context("reading input")?;
            let (key, value) = split_key(&line, separator);
            records.push((
                args.partition,
                ProduceRecord {
                    key: key.map(Bytes::copy_from_slice),
                    value: Some(Bytes::copy_from_slice(value)),
                    headers: headers.clone(),
                    timestamp_ms: None,
                },
            ));
        }
        match producer.send(&args.topic, records).await {
            Ok(summary) => acknowledged += summary.records_ok,
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "{e} ({acknowledged} record(s) {verb} before the failure)"
                ))
            }
        }
    }
    println!("{acknowledged} record(s) {verb}");
    Ok(())
}

/// Splits a line at the first separator. Without a separator (or when the line lacks it) the
/// whole line is the value and there is no key.
pub fn split_key<'a>(line: &'a [u8], separator: Option<&[u8]>) -> (Option<&'a [u8]>, &'a [u8]) {
    let Some(sep) = separator.filter(|s| !s.is_empty()) else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (Some(&line[..i]), &line[i + sep.len()..]),
        None => (None, line),
    }
}

fn read_lines(mut reader: Box<dyn BufRead + Send>, tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if tx.blocking_send(Ok(line)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_split_at_first_separator() {
        assert_eq!(
            split_key(b"k:v:w", Some(b":")),
            (Some(&b"k"[..]), &b"v:w"[..])
        );
        assert_eq!(split_key(b"novalue", Some(b":")), (None, &b"novalue"[..]));
        assert_eq!(
            split_key(b"a::b", Some(b"::")),
            (Some(&b"a"[..]), &b"b"[..])
        );
        assert_eq!(split_key(b"k:v", None), (None, &b"k:v"[..]));
        assert_eq!(split_key(b":v", Some(b":")), (Some(&b""[..]), &b"v"[..]));
    }
}
