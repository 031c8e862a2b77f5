//! kill -9 durability: a real child process appends with acks=all through the real ring and
//! group commit (O_DIRECT and buffered rounds alternate), printing every acknowledged append;
//! the parent SIGKILLs it at a random moment, reopens the log (unclean recovery), and checks
//! that every acknowledged batch is present byte for byte at its offset. Many rounds on the
//! same directory.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use sluice_storage::batch::RecordBatchHeader;
use sluice_storage::{Ack, LogConfig, ShardStorage};

const CHILD_DIR_ENV: &str = "SLUICE_KILL_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "SLUICE_KILL_CHILD_ROUND";
const PARTITIONS: i32 = 2;
const APPENDERS: u64 = 6;
const ROUNDS: u64 = 20;

fn log_config() -> LogConfig {
    // Small segments so kills also land around rolls and finalizations.
    small_segments(256 << 10)
}

/// What the child appends for `tag`: deterministic, so the parent can rebuild it.
fn child_batch(tag: u64) -> Vec<u8> {
    let sequence = tag & 0xffff_ffff;
    make_batch(
        tag,
        1 + (sequence % 4) as usize,
        100 + (sequence as usize * 977) % 6000,
        tag as i64,
    )
}

/// Runs only as the child of `acknowledged_appends_survive_sigkill`.
#[test]
#[ignore = "child process of acknowledged_appends_survive_sigkill"]
fn child_appender() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND_ENV)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    tokio_uring::start(async move {
        let storage =
            // Odd rounds write buffered, even rounds O_DIRECT, into the same log.
            ShardStorage::open(storage_config(Path::new(&dir), round % 2 == 0))
                .expect("child open");
        let mut tasks = Vec::new();
        for appender in 0..APPENDERS {
            let partition = storage
                .open_partition("k", (appender % PARTITIONS as u64) as i32, log_config())
                .expect("child partition");
            tasks.push(tokio::task::spawn_local(async move {
                for sequence in 0u64.. {
                    let tag = round << 40 | appender << 32 | sequence;
                    let info = partition
                        .append(bytes(child_batch(tag)), Ack::Durable, 1)
                        .await
                        .expect("child append");
                    println!(
                        "ACK {} {} {} END",
                        appender % PARTITIONS as u64,
                        info.base_offset,
                        tag
                    );
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
}

fn verify(dir: &Path, acked: &[(i32, i64, u64)], clean_shutdown: bool) -> usize {
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir, true)).expect("parent open");
        let mut checked = 0usize;
        for partition_index in 0..PARTITIONS {
            let partition = storage
                .open_partition("k", partition_index, log_config())
                .expect("parent partition");
            let mut by_offset = HashMap::new();
            let mut next = 0i64;
            for batch in read_all(&partition, 0).await {
                let header = RecordBatchHeader::parse(&batch).expect("header");
                assert_eq!(header.base_offset, next, "offsets are contiguous");
                next = header.last_offset() + 1;
                by_offset.insert(header.base_offset, batch);
            }
            assert_eq!(next, partition.log_end_offset());
            for &(_, offset, tag) in acked
                .iter()
                .filter(|(partition, _, _)| *partition == partition_index)
            {
                let stored = by_offset.get(&offset).unwrap_or_else(|| panic!("acknowledged offset {offset} (tag {tag:#x}) of partition {partition_index} is missing"));
                let expected = expected_stored(&child_batch(tag), offset, 1);
                assert!(
                    *stored == expected,
                    "acknowledged offset {offset} of partition {partition_index} differs"
                );
                checked += 1;
            }
        }
        if clean_shutdown {
            storage.shutdown().await.expect("parent shutdown");
        }
        checked
    })
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let executable = std::env::current_exe().expect("test binary");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acked: Vec<(i32, i64, u64)> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(&executable)
            .args([
                "child_appender",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (sender, receiver) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let fields: Vec<&str> = line.split_whitespace().collect();
                // A line cut by the kill lacks its END marker and is not an acknowledgement.
                if fields.len() == 5 && fields[0] == "ACK" && fields[4] == "END" {
                    if let (Ok(partition), Ok(offset), Ok(tag)) =
                        (fields[1].parse(), fields[2].parse(), fields[3].parse())
                    {
                        let _ = sender.send((partition, offset, tag));
                    }
                }
            }
        });
        let first = receiver
            .recv_timeout(Duration::from_secs(20))
            .expect("child acknowledged nothing");
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..250)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap child");
        reader.join().expect("reader");
        let before = acked.len();
        acked.push(first);
        acked.extend(receiver.try_iter());
        assert!(acked.len() > before, "round {round} acknowledged appends");
        let checked = verify(dir.path(), &acked, round % 2 == 1);
        assert_eq!(
            checked,
            acked.len(),
            "round {round}: every acknowledged append checked"
        );
    }
    eprintln!(
        "kill test: {} acknowledged appends verified over {ROUNDS} SIGKILL rounds",
        acked.len()
    );
    assert!(
        acked.len() >= 100,
        "enough acknowledged appends to mean something: {}",
        acked.len()
    );
}
