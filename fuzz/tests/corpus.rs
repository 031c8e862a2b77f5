//! Runs every file of `corpus/<target>/` through its target's function: the seeds and the
//! minimised finds stay fixed on stable Rust, without libFuzzer.

use std::path::Path;

fn run(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("{target}: {}", path.display());
        body(&data);
        count += 1;
    }
    assert!(count > 0, "{} has no corpus files", dir.display());
}

#[test]
fn request_header() {
    run("request_header", sluice_fuzz::request_header);
}

#[test]
fn produce_request() {
    run("produce_request", sluice_fuzz::produce_request);
}

#[test]
fn fetch_request() {
    run("fetch_request", sluice_fuzz::fetch_request);
}

#[test]
fn record_batch() {
    run("record_batch", sluice_fuzz::record_batch);
}

#[test]
fn metadata_log() {
    run("metadata_log", sluice_fuzz::metadata_log);
}

#[test]
fn group_records() {
    run("group_records", sluice_fuzz::group_records);
}

#[test]
fn group_snapshot() {
    run("group_snapshot", sluice_fuzz::group_snapshot);
}

#[test]
fn dispatch() {
    run("dispatch", sluice_fuzz::dispatch_stream);
}

/// The seeds are real client sessions: the broker must answer them, not close on them.
#[test]
fn dispatch_seeds_are_answered() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/dispatch");
    let mut answered = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus/dispatch") {
        let path = entry.expect("entry").path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        {
            continue;
        }
        let data = std::fs::read(&path).expect("seed");
        let outcomes = sluice_fuzz::dispatch_outcomes(&data);
        assert!(
            !outcomes.contains(&sluice_fuzz::dispatch::Outcome::Close),
            "{}: {outcomes:?}",
            path.display()
        );
        answered += outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    sluice_fuzz::dispatch::Outcome::Frame(_)
                        | sluice_fuzz::dispatch::Outcome::Parts(_)
                )
            })
            .count();
    }
    assert!(
        answered >= 50,
        "only {answered} requests of the seeds were answered"
    );
}

/// An ApiVersions v0 request frame (size prefix, header with a null client id, empty body).
fn api_versions_frame(correlation_id: i32) -> Vec<u8> {
    let mut frame = 10i32.to_be_bytes().to_vec();
    frame.extend_from_slice(&18i16.to_be_bytes());
    frame.extend_from_slice(&0i16.to_be_bytes());
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    frame
}

/// A stream stops once its time budget is spent, so hundreds of frames that each wait up to
/// `REQUEST_WAIT` cannot run an input into libFuzzer's timeout.
#[test]
fn dispatch_stream_stops_when_its_time_is_spent() {
    let stream: Vec<u8> = (0..3).flat_map(api_versions_frame).collect();
    let mut broker = sluice_fuzz::dispatch::Broker::start();
    let all = broker.serve_stream_within(&stream, std::time::Duration::from_secs(60));
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all.iter()
            .all(|o| matches!(o, sluice_fuzz::dispatch::Outcome::Frame(_))),
        "{all:?}"
    );
    let spent = broker.serve_stream_within(&stream, std::time::Duration::ZERO);
    assert_eq!(spent.len(), 1, "{spent:?}");
    assert!(sluice_fuzz::dispatch::STREAM_TIME_MAX < std::time::Duration::from_secs(10));
}
