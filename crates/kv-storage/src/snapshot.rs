//! The snapshot stream: a group's key/value data as a byte stream that can be written to a file
//! and sent over the network in chunks without holding it in memory.
//!
//! Layout: the magic `KVSNAP01`, then one frame per record, one frame per remembered client
//! outcome (`0x02`, client u64 LE, seq u64 LE, outcome length u32 LE, encoded outcome), then
//! the trailer (`0x00`, frame count u64 LE, CRC-32 u32 LE of every preceding byte).
//!
//! A record frame is `0x01`, key length u32 LE, key, version u64 LE, value length u32 LE,
//! value for a permanent key, and `0x03`, key length u32 LE, key, version u64 LE, deadline
//! u64 LE, value length u32 LE, value for a key with a deadline. Expired records are
//! exported too: the state machine is copied exactly, and their removal is the `Expire`
//! entry that follows in the log.
//!
//! The change history follows: `0x04`, history start u64 LE, once; then one `0x05` frame per
//! row, log index u64 LE, ordinal u32 LE, change length u32 LE, encoded change. A replica
//! that installs the snapshot gets the rows too, so a watch cursor from before the snapshot
//! stays valid on it.
//!
//! Streams of earlier versions import unchanged: one without deadlines (frame `0x03`) or
//! history (`0x04`, `0x05`) reads as permanent keys and no rows. A node of an earlier version
//! refuses a stream with frames it does not know, as an unknown frame, rather than dropping
//! them silently; in a cluster being upgraded, its snapshot install then fails and is
//! retried once it runs the new version.

use std::io::{Read, Write};

use crate::change::{Change, ChangePos};
use crate::record::MAX_VERSION;
use crate::{Outcome, Record, Result, StorageError};

const MAGIC: &[u8; 8] = b"KVSNAP01";
const TAG_RECORD: u8 = 1;
const TAG_SESSION: u8 = 2;
const TAG_RECORD_WITH_DEADLINE: u8 = 3;
const TAG_HISTORY_START: u8 = 4;
const TAG_CHANGE: u8 = 5;
const TAG_END: u8 = 0;
/// Keys and values larger than this are refused as corrupt rather than allocated.
const MAX_FIELD: u32 = 256 << 20;

/// Writes the snapshot stream.
pub(crate) struct SnapshotWriter<'a> {
    out: &'a mut dyn Write,
    crc: crc32fast::Hasher,
    /// Frames, as the trailer counts them.
    count: u64,
    /// Record frames: the group's keys.
    records: u64,
    bytes: u64,
}

impl<'a> SnapshotWriter<'a> {
    pub(crate) fn new(out: &'a mut dyn Write) -> Result<Self> {
        let mut w = SnapshotWriter {
            out,
            crc: crc32fast::Hasher::new(),
            count: 0,
            records: 0,
            bytes: 0,
        };
        w.put(MAGIC)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes)?;
        Ok(())
    }

    pub(crate) fn record(&mut self, key: &[u8], record: &Record) -> Result<()> {
        let tag = match record.expires_at {
            None => TAG_RECORD,
            Some(_) => TAG_RECORD_WITH_DEADLINE,
        };
        self.put(&[tag])?;
        self.put(&len_u32(key.len())?.to_le_bytes())?;
        self.put(key)?;
        self.put(&record.version.to_le_bytes())?;
        if let Some(deadline) = record.expires_at {
            self.put(&deadline.to_le_bytes())?;
        }
        self.put(&len_u32(record.value.len())?.to_le_bytes())?;
        self.put(&record.value)?;
        self.count += 1;
        self.records += 1;
        Ok(())
    }

    pub(crate) fn session(&mut self, client: u64, seq: u64, outcome: &Outcome) -> Result<()> {
        let encoded = outcome.encode();
        self.put(&[TAG_SESSION])?;
        self.put(&client.to_le_bytes())?;
        self.put(&seq.to_le_bytes())?;
        self.put(&len_u32(encoded.len())?.to_le_bytes())?;
        self.put(&encoded)?;
        self.count += 1;
        Ok(())
    }

    /// Where the history that follows starts; written once, before the first [`Self::change`].
    pub(crate) fn history_start(&mut self, start: u64) -> Result<()> {
        self.put(&[TAG_HISTORY_START])?;
        self.put(&start.to_le_bytes())?;
        self.count += 1;
        Ok(())
    }

    /// One change history row, already encoded (see `Change::encode`).
    pub(crate) fn change(&mut self, pos: ChangePos, encoded: &[u8]) -> Result<()> {
        self.put(&[TAG_CHANGE])?;
        self.put(&pos.index.to_le_bytes())?;
        self.put(&pos.sub.to_le_bytes())?;
        self.put(&len_u32(encoded.len())?.to_le_bytes())?;
        self.put(encoded)?;
        self.count += 1;
        Ok(())
    }

    /// Write the trailer; returns (records, bytes written).
    pub(crate) fn finish(mut self) -> Result<(u64, u64)> {
        self.put(&[TAG_END])?;
        let count = self.count;
        self.put(&count.to_le_bytes())?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok((self.records, self.bytes + 4))
    }
}

fn len_u32(len: usize) -> Result<u32> {
    u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_FIELD)
        .ok_or_else(|| StorageError::Corrupt(format!("field of {len} bytes is too large")))
}

/// One decoded frame of the stream.
pub(crate) enum Frame {
    Record(Vec<u8>, Record),
    Session {
        client: u64,
        seq: u64,
        outcome: Outcome,
    },
    /// A change history row, checked to lie inside the stream's history.
    Change(ChangePos, Change),
}

/// Reads the snapshot stream record by record. The checksum is verified when the trailer is
/// reached, so callers must apply records in a transaction they commit only after `next`
/// returned `Ok(None)`.
pub(crate) struct SnapshotReader<'a> {
    input: &'a mut dyn Read,
    crc: crc32fast::Hasher,
    count: u64,
    done: bool,
    /// The snapshot's last log index + 1: where its history must end, and its start when the
    /// stream carries none.
    history_end: u64,
    /// The stream's history start, once read, and the last row read.
    history: Option<(u64, Option<ChangePos>)>,
}

impl<'a> SnapshotReader<'a> {
    /// A reader of the snapshot that ends at log index `history_end - 1`.
    pub(crate) fn new(input: &'a mut dyn Read, history_end: u64) -> Result<Self> {
        let mut r = SnapshotReader {
            input,
            crc: crc32fast::Hasher::new(),
            count: 0,
            done: false,
            history_end,
            history: None,
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(StorageError::Corrupt("not a snapshot stream".into()));
        }
        Ok(r)
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<()> {
        self.input.read_exact(buf).map_err(|e| {
            StorageError::Corrupt(format!("snapshot stream ended early or unreadable: {e}"))
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn take_u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn take_u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.take(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn take_field(&mut self) -> Result<Vec<u8>> {
        let len = self.take_u32()?;
        if len > MAX_FIELD {
            return Err(StorageError::Corrupt(format!("field of {len} bytes")));
        }
        let mut v = vec![0u8; len as usize];
        self.take(&mut v)?;
        Ok(v)
    }

    /// The history start the importing group takes: the stream's, or the end of the snapshot
    /// for a stream without history.
    pub(crate) fn history_start(&self) -> u64 {
        self.history.map_or(self.history_end, |(start, _)| start)
    }

    /// The next frame, or `None` once the trailer has been read and verified.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(frame) = self.frame()? {
                return Ok(Some(frame));
            }
        }
    }

    /// One frame; `None` for a frame the reader consumes itself (the history start) and for
    /// the trailer.
    fn frame(&mut self) -> Result<Option<Frame>> {
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        match tag[0] {
            tag @ (TAG_RECORD | TAG_RECORD_WITH_DEADLINE) => {
                let key = self.take_field()?;
                let version = self.take_u64()?;
                if version > MAX_VERSION {
                    return Err(StorageError::Corrupt(format!(
                        "snapshot record version {version} is out of range"
                    )));
                }
                let expires_at = match tag {
                    TAG_RECORD_WITH_DEADLINE => Some(self.take_u64()?),
                    _ => None,
                };
                let value = self.take_field()?;
                self.count += 1;
                Ok(Some(Frame::Record(
                    key,
                    Record {
                        version,
                        value,
                        expires_at,
                    },
                )))
            }
            TAG_SESSION => {
                let client = self.take_u64()?;
                let seq = self.take_u64()?;
                let outcome = Outcome::decode(&self.take_field()?)?;
                self.count += 1;
                Ok(Some(Frame::Session {
                    client,
                    seq,
                    outcome,
                }))
            }
            TAG_HISTORY_START => {
                let start = self.take_u64()?;
                if self.history.is_some() || start == 0 || start > self.history_end {
                    return Err(StorageError::Corrupt(format!(
                        "snapshot history start {start} is repeated or outside 1..={}",
                        self.history_end
                    )));
                }
                self.history = Some((start, None));
                self.count += 1;
                Ok(None)
            }
            TAG_CHANGE => {
                let index = self.take_u64()?;
                let sub = self.take_u32()?;
                let change = Change::decode(&self.take_field()?)?;
                let pos = ChangePos { index, sub };
                let end = self.history_end;
                match &mut self.history {
                    Some((start, last)) if index >= *start && index < end && *last < Some(pos) => {
                        *last = Some(pos);
                    }
                    _ => {
                        return Err(StorageError::Corrupt(format!(
                            "snapshot history row at {index}.{sub} is out of order or outside \
                             its history (ends before {end})"
                        )))
                    }
                }
                self.count += 1;
                Ok(Some(Frame::Change(pos, change)))
            }
            TAG_END => {
                let count = self.take_u64()?;
                let expected = self.crc.clone().finalize();
                let mut crc = [0u8; 4];
                self.input.read_exact(&mut crc).map_err(|e| {
                    StorageError::Corrupt(format!("snapshot trailer unreadable: {e}"))
                })?;
                if u32::from_le_bytes(crc) != expected {
                    return Err(StorageError::Corrupt("snapshot checksum mismatch".into()));
                }
                if count != self.count {
                    return Err(StorageError::Corrupt(format!(
                        "snapshot says {count} records, stream had {}",
                        self.count
                    )));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(StorageError::Corrupt(format!("unknown frame tag {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum_catches_a_flipped_byte() {
        let mut buf = Vec::new();
        let mut w = SnapshotWriter::new(&mut buf).unwrap();
        w.record(b"a", &Record::new(3, "one")).unwrap();
        w.record(b"b", &Record::new(9, "")).unwrap();
        let (n, bytes) = w.finish().unwrap();
        assert_eq!(n, 2);
        assert_eq!(bytes as usize, buf.len());

        let mut input = &buf[..];
        let mut r = SnapshotReader::new(&mut input, 1).unwrap();
        let mut got = Vec::new();
        while let Some(frame) = r.next_frame().unwrap() {
            if let Frame::Record(k, rec) = frame {
                got.push((k, rec));
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, b"a");
        assert_eq!(got[0].1.version, 3);

        let mut bad = buf.clone();
        bad[12] ^= 0xff;
        let mut input = &bad[..];
        let mut r = SnapshotReader::new(&mut input, 1).unwrap();
        let mut result = r.next_frame();
        while let Ok(Some(_)) = result {
            result = r.next_frame();
        }
        assert!(result.is_err(), "a corrupted stream must be refused");
    }

    fn frames(stream: &[u8]) -> Result<Vec<Frame>> {
        let mut input = stream;
        let mut r = SnapshotReader::new(&mut input, 1)?;
        let mut out = Vec::new();
        while let Some(frame) = r.next_frame()? {
            out.push(frame);
        }
        Ok(out)
    }

    fn records(stream: &[u8]) -> Vec<(Vec<u8>, Record)> {
        frames(stream)
            .unwrap()
            .into_iter()
            .filter_map(|f| match f {
                Frame::Record(k, r) => Some((k, r)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_stream_from_before_deadlines_reads_as_permanent_records() {
        let old = crate::testing::fixtures::snapshot_from_before_deadlines();
        assert_eq!(records(&old), vec![(b"k".to_vec(), Record::new(7, "v"))]);
        // And permanent records are still written in exactly that form.
        let mut again = Vec::new();
        let mut w = SnapshotWriter::new(&mut again).unwrap();
        w.record(b"k", &Record::new(7, "v")).unwrap();
        w.session(1, 2, &Outcome::Written { version: 7 }).unwrap();
        w.finish().unwrap();
        assert_eq!(again, old);
    }

    #[test]
    fn deadlines_round_trip_next_to_permanent_records() {
        let expiring = Record {
            expires_at: Some(1_700_000_000_123),
            ..Record::new(5, "soon")
        };
        let mut buf = Vec::new();
        let mut w = SnapshotWriter::new(&mut buf).unwrap();
        w.record(b"a", &Record::new(3, "kept")).unwrap();
        w.record(b"b", &expiring).unwrap();
        w.finish().unwrap();
        assert_eq!(
            records(&buf),
            vec![
                (b"a".to_vec(), Record::new(3, "kept")),
                (b"b".to_vec(), expiring)
            ]
        );
    }
}
