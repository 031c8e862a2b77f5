//! Crash recovery: after writing, files are cut at random positions, extended with garbage,
//! or have bytes flipped; reopening keeps exactly the longest valid prefix of batches and
//! reports what it cut.

mod common;

use std::path::Path;

use common::*;
use rand::{Rng, SeedableRng};
use sluice_storage::{Ack, LogConfig, ShardStorage};

/// Writes `count` batches without a clean shutdown; returns the stored bytes of each.
fn write_unclean(dir: &Path, direct_io: bool, count: u64, config: LogConfig) -> Vec<Vec<u8>> {
    let mut stored = Vec::new();
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir, direct_io)).expect("open");
        let partition = storage.open_partition("c", 0, config).expect("partition");
        for round in 0..count {
            let batch = make_batch(
                round,
                1 + (round % 3) as usize,
                50 + (round as usize * 131) % 900,
                round as i64,
            );
            let info = partition
                .append(bytes(batch.clone()), Ack::Durable, 2)
                .await
                .expect("append");
            stored.push(expected_stored(&batch, info.base_offset, 2));
        }
    });
    stored
}

/// Where the batches of a segment's bytes end (the rest is padding): each batch is its
/// 12-byte offset-and-length prefix plus the length it states; a zero length ends them.
fn batches_end(bytes: &[u8]) -> u64 {
    let mut at = 0usize;
    while at + 12 <= bytes.len() {
        let length = i32::from_be_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        let next = at + 12 + usize::try_from(length).unwrap_or(0);
        if length <= 0 || next > bytes.len() {
            break;
        }
        at = next;
    }
    at as u64
}

fn reopen(dir: &Path, config: LogConfig) -> (Vec<Vec<u8>>, Vec<sluice_storage::RecoveryCut>, i64) {
    tokio_uring::start(async {
        let storage = ShardStorage::open(storage_config(dir, true)).expect("reopen");
        let partition = storage.open_partition("c", 0, config).expect("partition");
        let batches = read_all(&partition, partition.log_start_offset()).await;
        // The recovered log accepts appends at the recovered end.
        let end = partition.log_end_offset();
        let info = partition
            .append(bytes(make_batch(999, 1, 10, 0)), Ack::Durable, 2)
            .await
            .expect("append after recovery");
        assert_eq!(info.base_offset, end);
        (batches, partition.recovery_cuts(), end)
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// Batches wholly before `position` of a segment holding `batches` in order.
fn prefix_before(batches: &[Vec<u8>], position: u64) -> usize {
    let mut end = 0u64;
    batches
        .iter()
        .take_while(|batch| {
            end += batch.len() as u64;
            end <= position
        })
        .count()
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Cut(u64),
    Garbage(usize),
    Flip(u64),
}

fn damage_and_check(direct_io: bool, seed: u64, rounds: usize) {
    let source = tempfile::tempdir().expect("tempdir");
    let stored = write_unclean(source.path(), direct_io, 60, LogConfig::default());
    let logical_bytes: u64 = stored.iter().map(|batch| batch.len() as u64).sum();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..rounds {
        let work = tempfile::tempdir().expect("tempdir");
        copy_dir(source.path(), work.path());
        let segment = work.path().join("c-0").join("00000000000000000000.log");
        let damage = match round % 3 {
            0 => Damage::Cut(rng.gen_range(0..logical_bytes)),
            1 => Damage::Garbage(rng.gen_range(1..5000)),
            _ => loop {
                let position = rng.gen_range(0..logical_bytes);
                // The leader epoch (bytes 12..16 of a batch) is outside the CRC in Kafka's
                // format, so a flip there is undetectable by design; pick another byte.
                let mut start = 0u64;
                let within = stored
                    .iter()
                    .find_map(|batch| {
                        let here = position
                            .checked_sub(start)
                            .filter(|&at| at < batch.len() as u64);
                        start += batch.len() as u64;
                        here
                    })
                    .unwrap_or(0);
                if !(12..16).contains(&within) {
                    break Damage::Flip(position);
                }
            },
        };
        let mut contents = std::fs::read(&segment).expect("read segment");
        let expected_count = match damage {
            Damage::Cut(position) => {
                contents.truncate(position as usize);
                prefix_before(&stored, position)
            }
            Damage::Garbage(len) => {
                contents.truncate(logical_bytes as usize);
                contents.extend((0..len).map(|_| rng.gen_range(1..=255u8)));
                stored.len()
            }
            Damage::Flip(position) => {
                contents[position as usize] ^= 1 << rng.gen_range(0..8);
                prefix_before(&stored, position)
            }
        };
        std::fs::write(&segment, &contents).expect("write damaged segment");
        let (recovered, cuts, end) = reopen(work.path(), LogConfig::default());
        assert_eq!(recovered.len(), expected_count, "round {round} {damage:?}");
        assert!(
            recovered[..] == stored[..expected_count],
            "round {round} {damage:?}: longest valid prefix, byte for byte"
        );
        let kept_bytes: u64 = stored[..expected_count]
            .iter()
            .map(|batch| batch.len() as u64)
            .sum();
        let expected_cut = contents.len() as u64 - kept_bytes;
        if expected_cut > 0 {
            assert_eq!(cuts.len(), 1, "round {round} {damage:?}: cut reported");
            assert_eq!(cuts[0].bytes_cut, expected_cut, "round {round} {damage:?}");
            assert_eq!(
                cuts[0].offset, end,
                "round {round} {damage:?}: first offset not kept"
            );
        } else {
            assert!(cuts.is_empty(), "round {round} {damage:?}: nothing to cut");
        }
    }
}

#[test]
fn random_damage_direct() {
    damage_and_check(true, 7, 45);
}

#[test]
fn random_damage_buffered() {
    damage_and_check(false, 11, 45);
}

#[test]
fn damage_in_an_older_segment_drops_the_segments_after_it() {
    let source = tempfile::tempdir().expect("tempdir");
    let config = small_segments(4000);
    let stored = write_unclean(source.path(), true, 40, config.clone());
    let partition_dir = source.path().join("c-0");
    let mut bases: Vec<String> = std::fs::read_dir(&partition_dir)
        .expect("dir")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".log"))
        .collect();
    bases.sort();
    assert!(bases.len() >= 4, "{bases:?}");
    // Without the recovery point every segment is scanned (as after a crash right after a roll).
    let _ = std::fs::remove_file(partition_dir.join("recovery-point-offset-checkpoint"));
    let second = partition_dir.join(&bases[1]);
    // Cut into its last batch, not into the O_DIRECT padding after it: a segment whose
    // finalization (which trims the padding) had not run when the runtime stopped still ends
    // in zeros, and cutting only those would tear nothing.
    let second_len = batches_end(&std::fs::read(&second).expect("read"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .expect("open");
    file.set_len(second_len - 10).expect("cut");
    drop(file);
    let second_base: i64 = bases[1].trim_end_matches(".log").parse().expect("base");
    let (recovered, cuts, end) = reopen(source.path(), config);
    let first_len = std::fs::metadata(partition_dir.join(&bases[0]))
        .map(|meta| meta.len())
        .unwrap_or(0);
    assert!(first_len > 0);
    assert!(
        end > second_base,
        "the intact part of the second segment is kept"
    );
    let kept = stored
        .iter()
        .take_while(|batch| {
            sluice_storage::batch::RecordBatchHeader::parse(batch)
                .is_some_and(|header| header.last_offset() < end)
        })
        .count();
    assert!(
        recovered[..] == stored[..kept],
        "longest valid prefix: {} batches recovered, {kept} expected",
        recovered.len()
    );
    assert!(
        cuts.len() >= 2,
        "the cut and every later segment are reported: {cuts:?}"
    );
    assert_eq!(cuts[0].segment_base_offset, second_base);
}

/// Regression (found by the SIGKILL test): a roll creates the next segment's file at enqueue,
/// so a crash can leave that file while the previous segment lost its last, unacknowledged
/// batches. Recovery must end the log where the data ends, without a hole in the offsets.
#[test]
fn segment_ending_short_of_the_next_base_drops_the_later_segments() {
    let source = tempfile::tempdir().expect("tempdir");
    let config = small_segments(4000);
    let stored = write_unclean(source.path(), true, 30, config.clone());
    let partition_dir = source.path().join("c-0");
    let mut bases: Vec<i64> = std::fs::read_dir(&partition_dir)
        .expect("dir")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".log")?.parse().ok())
        .collect();
    bases.sort_unstable();
    assert!(bases.len() >= 3, "{bases:?}");
    let _ = std::fs::remove_file(partition_dir.join("recovery-point-offset-checkpoint"));
    // Drop the last batch of the second-to-last segment at its exact start: no torn bytes.
    let victim_base = bases[bases.len() - 2];
    let last_base = bases[bases.len() - 1];
    let in_victim: Vec<&Vec<u8>> = stored
        .iter()
        .filter(|batch| {
            let header = sluice_storage::batch::RecordBatchHeader::parse(batch).expect("header");
            header.base_offset >= victim_base && header.base_offset < last_base
        })
        .collect();
    let keep_bytes: u64 = in_victim[..in_victim.len() - 1]
        .iter()
        .map(|batch| batch.len() as u64)
        .sum();
    let victim = partition_dir.join(format!("{victim_base:020}.log"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .expect("open");
    file.set_len(keep_bytes).expect("cut at a batch boundary");
    drop(file);
    let lost = sluice_storage::batch::RecordBatchHeader::parse(in_victim[in_victim.len() - 1])
        .expect("header");
    let (recovered, cuts, end) = reopen(source.path(), config);
    assert_eq!(end, lost.base_offset, "the log ends where the data ends");
    let kept = stored
        .iter()
        .take_while(|batch| {
            sluice_storage::batch::RecordBatchHeader::parse(batch)
                .is_some_and(|header| header.base_offset < end)
        })
        .count();
    assert!(
        recovered[..] == stored[..kept],
        "contiguous prefix: {} batches, {kept} expected",
        recovered.len()
    );
    assert!(
        cuts.iter().any(|cut| cut.segment_base_offset == last_base),
        "the later segment is reported: {cuts:?}"
    );
}
