//! An append's bytes as the log stores them, built without copying the producer's request:
//! each batch is its stamped 61-byte header (the broker's base offset and leader epoch; for
//! LogAppendTime also the max timestamp and the CRC) followed by the rest of the batch, which
//! stays in the request's own buffer.
//!
//! Owns the sequence of pieces and slicing it by byte range. Must never copy record bytes:
//! the tail cache and the writer take its `Bytes` pieces (the writer copies them once, into
//! its aligned staging buffer, in O_DIRECT mode only).

use std::ops::Range;

use bytes::Bytes;

use crate::batch::{self, RecordBatchHeader};

/// A position in the pieces: the piece's index and the byte where it starts.
#[derive(Debug, Clone, Copy, Default)]
struct Place {
    index: usize,
    start: usize,
}

/// Consecutive bytes held as pieces of other buffers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stamped {
    pieces: Vec<Bytes>,
    len_bytes: usize,
}

impl Stamped {
    /// Stamps every batch of `records` (whose headers are `headers`, in order) with
    /// `stamp(index, header, rest_of_batch)`, which edits the header copy in place.
    pub(crate) fn stamp(
        records: &Bytes,
        headers: &[RecordBatchHeader],
        mut stamp: impl FnMut(usize, &mut [u8], &[u8]),
    ) -> Stamped {
        let mut stamped_headers = Vec::with_capacity(headers.len() * batch::HEADER_BYTES);
        let mut position = 0usize;
        for (index, header) in headers.iter().enumerate() {
            let size = header.size_bytes();
            let at = stamped_headers.len();
            stamped_headers.extend_from_slice(&records[position..position + batch::HEADER_BYTES]);
            stamp(
                index,
                &mut stamped_headers[at..],
                &records[position + batch::HEADER_BYTES..position + size],
            );
            position += size;
        }
        let stamped_headers = Bytes::from(stamped_headers);
        let mut out = Stamped {
            pieces: Vec::with_capacity(headers.len() * 2),
            len_bytes: 0,
        };
        let mut position = 0usize;
        for (index, header) in headers.iter().enumerate() {
            let size = header.size_bytes();
            let at = index * batch::HEADER_BYTES;
            // Both pieces of every batch, even an empty rest, so `batches` can pair them.
            out.pieces
                .push(stamped_headers.slice(at..at + batch::HEADER_BYTES));
            out.pieces
                .push(records.slice(position + batch::HEADER_BYTES..position + size));
            out.len_bytes += size;
            position += size;
        }
        out
    }

    /// (stamped header, rest of the batch) of every batch, in order. Only for a `Stamped`
    /// made by [`Stamped::stamp`], whose pieces come in exactly those pairs.
    pub(crate) fn batches(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        debug_assert!(self.pieces.len() % 2 == 0, "not a stamped sequence");
        self.pieces.chunks_exact(2).map(|pair| (&pair[0], &pair[1]))
    }

    /// Appends `bytes` (empty pieces are skipped).
    pub(crate) fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len_bytes += bytes.len();
            self.pieces.push(bytes);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len_bytes
    }

    /// The pieces covering `range`, in order, cut at its ends (shares the buffers; allocates
    /// nothing: the writer plans every flush with it).
    pub(crate) fn slice(&self, range: Range<usize>) -> impl Iterator<Item = Bytes> + '_ {
        assert!(
            range.start <= range.end && range.end <= self.len_bytes,
            "slice {range:?} of {} bytes",
            self.len_bytes
        );
        let mut start = 0usize;
        self.pieces
            .iter()
            .map_while(move |piece| {
                let piece_start = start;
                start += piece.len();
                (piece_start < range.end).then(|| {
                    let from = range.start.saturating_sub(piece_start).min(piece.len());
                    let to = (range.end - piece_start).min(piece.len());
                    piece.slice(from..to)
                })
            })
            .filter(|piece| !piece.is_empty())
    }

    /// The bytes of `range` as a `Stamped` of their own.
    pub(crate) fn sub(&self, range: Range<usize>) -> Stamped {
        let mut out = Stamped::default();
        for piece in self.slice(range) {
            out.push(piece);
        }
        out
    }

    /// Copies `out.len()` bytes starting at `at` into `out`; false when they are not all there.
    #[cfg(test)]
    pub(crate) fn read_at(&self, at: usize, out: &mut [u8]) -> bool {
        self.copy_at(Place::default(), at, out)
    }

    /// [`Stamped::read_at`] starting the search at `from` (a piece at or before `at`), so a
    /// forward walk stays linear.
    fn copy_at(&self, from: Place, at: usize, out: &mut [u8]) -> bool {
        if at + out.len() > self.len_bytes {
            return false;
        }
        let mut place = from;
        let mut filled = 0usize;
        while filled < out.len() {
            let Some(piece) = self.pieces.get(place.index) else {
                return false;
            };
            let end = place.start + piece.len();
            if end > at + filled {
                let offset = at + filled - place.start;
                let take = (piece.len() - offset).min(out.len() - filled);
                out[filled..filled + take].copy_from_slice(&piece[offset..offset + take]);
                filled += take;
                if filled == out.len() {
                    break;
                }
            }
            place = Place {
                index: place.index + 1,
                start: end,
            };
        }
        true
    }

    /// The headers of the whole batches this holds, with their positions, in order.
    pub(crate) fn batch_headers(&self) -> impl Iterator<Item = (usize, RecordBatchHeader)> + '_ {
        let mut at = 0usize;
        let mut place = Place::default();
        std::iter::from_fn(move || {
            // Skip the pieces that end at or before `at`, so each header read starts near it.
            while let Some(piece) = self.pieces.get(place.index) {
                if place.start + piece.len() > at {
                    break;
                }
                place = Place {
                    index: place.index + 1,
                    start: place.start + piece.len(),
                };
            }
            let mut raw = [0u8; batch::HEADER_BYTES];
            if !self.copy_at(place, at, &mut raw) {
                return None;
            }
            let header = RecordBatchHeader::parse(&raw)?;
            let size = header.size_bytes();
            if size < batch::HEADER_BYTES || at + size > self.len_bytes {
                return None;
            }
            let found = (at, header);
            at += size;
            Some(found)
        })
    }

    /// All pieces, in order.
    #[cfg(test)]
    pub(crate) fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(parts: &[&[u8]]) -> Stamped {
        let mut out = Stamped::default();
        for part in parts {
            out.push(Bytes::copy_from_slice(part));
        }
        out
    }

    fn flat(pieces: Vec<Bytes>) -> Vec<u8> {
        pieces
            .iter()
            .flat_map(|piece| piece.iter().copied())
            .collect()
    }

    #[test]
    fn slices_cut_across_pieces_and_match_the_flat_bytes() {
        let s = stamped(&[b"abc", b"", b"defgh", b"ij"]);
        let all = b"abcdefghij";
        assert_eq!(s.len(), all.len());
        assert_eq!(s.pieces().len(), 3, "empty pieces are skipped");
        for start in 0..=all.len() {
            for end in start..=all.len() {
                assert_eq!(
                    flat(s.slice(start..end).collect()),
                    &all[start..end],
                    "{start}..{end}"
                );
                assert_eq!(
                    flat(s.sub(start..end).slice(0..end - start).collect()),
                    &all[start..end]
                );
            }
        }
        let mut out = [0u8; 4];
        assert!(s.read_at(2, &mut out));
        assert_eq!(&out, b"cdef");
        assert!(!s.read_at(7, &mut out), "past the end");
    }

    #[test]
    fn stamping_copies_only_headers_and_shares_the_request_buffer() {
        let one = batch::builder::batch(5, &[b"a", b"bb", b"ccc"]);
        let two = batch::builder::batch(6, &[b"dddd", b"e"]);
        let records = Bytes::from([one.clone(), two.clone()].concat());
        let headers: Vec<RecordBatchHeader> = [&one, &two]
            .iter()
            .map(|bytes| RecordBatchHeader::parse(bytes).expect("header"))
            .collect();
        let stamped = Stamped::stamp(&records, &headers, |index, header, _rest| {
            batch::assign(header, 1000 * (index as i64 + 1), 7);
        });
        assert_eq!(stamped.len(), records.len());
        assert_eq!(stamped.pieces().len(), 4);
        assert_eq!(stamped.batches().count(), 2);
        // Bodies point into the request's buffer: no copy.
        let body = &stamped.pieces()[1];
        assert_eq!(
            body.as_ptr(),
            records[batch::HEADER_BYTES..].as_ptr(),
            "the body was copied"
        );
        let found: Vec<_> = stamped.batch_headers().collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, 0);
        assert_eq!(found[0].1.base_offset, 1000);
        assert_eq!(found[1].0, one.len());
        assert_eq!(found[1].1.base_offset, 2000);
        assert_eq!(found[1].1.partition_leader_epoch, 7);
        // The request itself is untouched.
        assert_eq!(&records[..one.len()], &one[..]);
        // Headers are found wherever the pieces happen to be cut.
        let flat = flat(stamped.slice(0..stamped.len()).collect());
        let mut chopped = Stamped::default();
        for piece in flat.chunks(7) {
            chopped.push(Bytes::copy_from_slice(piece));
        }
        assert_eq!(chopped.batch_headers().collect::<Vec<_>>(), found);
    }
}
