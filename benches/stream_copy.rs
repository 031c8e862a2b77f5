//! Copy-rate benchmark for `sluice_storage::stream_copy`: blocks of batch size copied from a
//! hot source (as a request buffer just received is) into a destination ring far larger than
//! the caches (as the staging buffer and the tail cache are), with `copy_from_slice` and with
//! streaming stores, alternated.
//!
//! Usage: cargo bench -p sluice-storage --bench stream_copy -- [BLOCK_BYTES ...]
//!        (default 16384 262144). One line per block size and copy:
//!        `RESULT copy=plain|streaming block_bytes=B gb_per_s=median`.

use std::time::Instant;

use sluice_storage::stream_copy::copy_streaming;

const RING_BYTES: usize = 256 << 20;
const SOURCE_BYTES: usize = (1 << 20) + 300_000;
const BYTES_PER_RUN: usize = 4 << 30;
const RUNS: usize = 5;

fn run(streaming: bool, block_bytes: usize, ring: &mut [u8], source: &[u8]) -> f64 {
    let started = Instant::now();
    let (mut to, mut from, mut done) = (0usize, 0usize, 0usize);
    while done < BYTES_PER_RUN {
        if to + block_bytes > ring.len() {
            to = 0;
        }
        if from + block_bytes > source.len() {
            from = 0;
        }
        let (dst, src) = (
            &mut ring[to..to + block_bytes],
            &source[from..from + block_bytes],
        );
        if streaming {
            copy_streaming(dst, src);
        } else {
            dst.copy_from_slice(src);
        }
        // Batches follow 61-byte stamped headers: destinations are not line-aligned.
        to += block_bytes + 61;
        from += block_bytes;
        done += block_bytes;
    }
    std::hint::black_box(&ring);
    BYTES_PER_RUN as f64 / started.elapsed().as_secs_f64() / 1e9
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mut blocks: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|word| !word.starts_with('-'))
        .filter_map(|word| word.parse().ok())
        .collect();
    if blocks.is_empty() {
        blocks = vec![16 << 10, 256 << 10];
    }
    let mut ring = vec![1u8; RING_BYTES];
    let source: Vec<u8> = (0..SOURCE_BYTES).map(|i| i as u8).collect();
    for block_bytes in blocks {
        let block_bytes = block_bytes.clamp(1, SOURCE_BYTES);
        let (mut plain, mut streamed) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            plain.push(run(false, block_bytes, &mut ring, &source));
            streamed.push(run(true, block_bytes, &mut ring, &source));
        }
        for (name, rates) in [("plain", plain), ("streaming", streamed)] {
            println!(
                "RESULT copy={name} block_bytes={block_bytes} gb_per_s={:.2}",
                median(rates)
            );
        }
    }
}
