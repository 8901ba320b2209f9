//! The queue service's durable log: append-only segment files under one
//! directory, written by one thread with group commit (every append that
//! arrives while a write is in flight goes into the next write, then one
//! fsync acknowledges them all).
//!
//! On disk a segment is `<first sequence, 20 digits>.log`, a run of records
//! `[len u32][crc32 u32][seq u64][payload]` (little-endian; the CRC covers
//! seq and payload). Sequence numbers increase by one across segments.
//! Opening the log replays every record in order; a torn or corrupt tail of
//! the last segment (a crash mid-write) is cut off and reported, while
//! damage anywhere else is an error that names the file and position.
//! A failed write or fsync poisons the log: later appends are refused
//! (after a failed fsync the kernel may have dropped the dirty pages, so
//! retrying could acknowledge data that is not on disk).
//!
//! Every record has a `Position` (its sequence and where it starts in its
//! segment) that stays valid until compaction deletes the segment: the
//! store keeps only positions of queued payloads in memory and reads them
//! back (`read`, checked against sequence and CRC) when it delivers.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

const HEADER: usize = 16;
/// Largest record payload accepted (the queue caps messages far below).
pub const MAX_RECORD: usize = 64 << 20;
/// Appends folded into one write at most (bounds a batch's memory).
const MAX_BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("queue log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("queue log {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("record of {0} bytes is over the {MAX_RECORD}-byte limit")]
    TooLarge(usize),
    #[error("queue log failed earlier and refuses writes: {0}")]
    Poisoned(String),
    #[error("queue log writer has stopped")]
    Stopped,
    #[error("queue log has no record {0} (its segment was compacted away)")]
    Gone(u64),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    /// A new segment starts once the current one reaches this size.
    pub segment_bytes: u64,
    /// fsync before acknowledging (off only for benchmarks that say so).
    pub sync: bool,
}

impl Config {
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            sync: true,
        }
    }
}

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Records replayed.
    pub records: u64,
    /// The next sequence number.
    pub next: u64,
    /// A torn tail cut off: the segment, where, and how many bytes.
    pub truncated: Option<(PathBuf, u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub first: u64,
    pub path: PathBuf,
    pub bytes: u64,
}

/// Where a record is: its sequence number and its first byte in the
/// segment that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

type Reply = tokio::sync::oneshot::Sender<Result<Vec<Position>, LogError>>;

enum Cmd {
    Append(Vec<Vec<u8>>, Reply),
    /// Delete the segments whose every record is below the sequence.
    DropBefore(u64, tokio::sync::oneshot::Sender<Result<usize, LogError>>),
}

pub struct Log {
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<Stats>,
    segments: Arc<Mutex<Vec<Segment>>>,
    /// Open read handles by segment (first sequence), for `read`.
    readers: Mutex<HashMap<u64, Arc<File>>>,
}

#[derive(Debug, Default)]
pub struct Stats {
    /// fsyncs (or writes, without sync) done: fewer than appends when
    /// group commit folds them.
    pub commits: AtomicU64,
    pub records: AtomicU64,
}

impl Log {
    /// Opens (or creates) the log in `config.dir`, replaying every record
    /// into `visit(position, payload)` in order.
    pub fn open(
        config: Config,
        mut visit: impl FnMut(Position, &[u8]),
    ) -> Result<(Log, Recovery), LogError> {
        std::fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let mut segments = list_segments(&config.dir)?;
        let mut next = segments.first().map_or(0, |s| s.first);
        let mut records = 0;
        let mut truncated = None;
        let count = segments.len();
        for (i, seg) in segments.iter_mut().enumerate() {
            if seg.first != next {
                return Err(LogError::Corrupt {
                    path: seg.path.clone(),
                    position: 0,
                    reason: format!("starts at sequence {} where {next} was due", seg.first),
                });
            }
            let last = i + 1 == count;
            let end = replay(&seg.path, &mut next, &mut records, &mut visit, last)?;
            if end.valid < end.len {
                // Only the last segment may end torn (checked in replay).
                let f = OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .map_err(io_err(&seg.path))?;
                f.set_len(end.valid).map_err(io_err(&seg.path))?;
                f.sync_all().map_err(io_err(&seg.path))?;
                truncated = Some((seg.path.clone(), end.valid, end.len - end.valid));
                tracing::warn!(segment = %seg.path.display(), at = end.valid, dropped_bytes = end.len - end.valid, "queue log: torn tail cut off");
            }
            seg.bytes = end.valid;
        }
        let current = match segments.last() {
            Some(s) => open_append(&s.path)?,
            None => {
                let s = new_segment(&config.dir, next)?;
                let f = open_append(&s.path)?;
                segments.push(s);
                f
            }
        };
        let stats = Arc::new(Stats::default());
        let segments = Arc::new(Mutex::new(segments));
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            config: config.clone(),
            file: current,
            next,
            stats: stats.clone(),
            segments: segments.clone(),
            poisoned: None,
        };
        let handle = std::thread::Builder::new()
            .name("weft-queue-log".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(&config.dir))?;
        Ok((
            Log {
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                stats,
                segments,
                readers: Mutex::new(HashMap::new()),
            },
            Recovery {
                records,
                next,
                truncated,
            },
        ))
    }

    /// Appends `records` in order; returns their positions once they are
    /// durable.
    pub async fn append(&self, records: Vec<Vec<u8>>) -> Result<Vec<Position>, LogError> {
        if let Some(big) = records.iter().find(|r| r.len() > MAX_RECORD) {
            return Err(LogError::TooLarge(big.len()));
        }
        let (reply, done) = tokio::sync::oneshot::channel();
        self.send(Cmd::Append(records, reply))?;
        done.await.map_err(|_| LogError::Stopped)?
    }

    /// Appends `records` without waiting for them to be durable: for
    /// records whose loss a restart tolerates (an ack lost in a crash only
    /// means the message is delivered again: at least once). They are
    /// written in order with the others, in the next group commit.
    pub fn append_detached(&self, records: Vec<Vec<u8>>) -> Result<(), LogError> {
        if let Some(big) = records.iter().find(|r| r.len() > MAX_RECORD) {
            return Err(LogError::TooLarge(big.len()));
        }
        let (reply, _) = tokio::sync::oneshot::channel();
        self.send(Cmd::Append(records, reply))
    }

    /// Deletes the segments (but the current one) whose records are all
    /// below `sequence`: compaction once those records are acked or
    /// expired. Returns how many were deleted.
    pub async fn drop_before(&self, sequence: u64) -> Result<usize, LogError> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.send(Cmd::DropBefore(sequence, reply))?;
        let dropped = done.await.map_err(|_| LogError::Stopped)??;
        if dropped > 0 {
            let first = self
                .segments
                .lock()
                .ok()
                .and_then(|s| s.first().map(|s| s.first));
            if let (Some(first), Ok(mut readers)) = (first, self.readers.lock()) {
                readers.retain(|seg, _| *seg >= first);
            }
        }
        Ok(dropped)
    }

    /// The record at `at` (appended earlier and not compacted away),
    /// checked against its sequence number and CRC.
    pub fn read(&self, at: Position) -> Result<Vec<u8>, LogError> {
        let (first, path) = {
            let segs = self.segments.lock().map_err(|_| LogError::Stopped)?;
            let i = segs.partition_point(|s| s.first <= at.seq);
            let seg = i
                .checked_sub(1)
                .and_then(|i| segs.get(i))
                .ok_or(LogError::Gone(at.seq))?;
            (seg.first, seg.path.clone())
        };
        let file = {
            let mut readers = self.readers.lock().map_err(|_| LogError::Stopped)?;
            match readers.get(&first) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(&path).map_err(io_err(&path))?);
                    readers.insert(first, f.clone());
                    f
                }
            }
        };
        let corrupt = |reason: String| LogError::Corrupt {
            path: path.clone(),
            position: at.offset,
            reason,
        };
        let mut header = [0u8; HEADER];
        file.read_exact_at(&mut header, at.offset)
            .map_err(io_err(&path))?;
        let (size, crc, seq) = parse_header(&header);
        if seq != at.seq {
            return Err(corrupt(format!(
                "sequence {seq} where {} was expected",
                at.seq
            )));
        }
        if size > MAX_RECORD {
            return Err(corrupt(format!("a record of {size} bytes")));
        }
        let mut payload = vec![0u8; size];
        file.read_exact_at(&mut payload, at.offset + HEADER as u64)
            .map_err(io_err(&path))?;
        if checksum(seq, &payload) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        Ok(payload)
    }

    fn send(&self, cmd: Cmd) -> Result<(), LogError> {
        let tx = self.tx.lock().map_err(|_| LogError::Stopped)?;
        tx.as_ref()
            .ok_or(LogError::Stopped)?
            .send(cmd)
            .map_err(|_| LogError::Stopped)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn segments(&self) -> Vec<Segment> {
        self.segments.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the writer after the appends already sent.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer {
    config: Config,
    file: File,
    next: u64,
    stats: Arc<Stats>,
    segments: Arc<Mutex<Vec<Segment>>>,
    poisoned: Option<String>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut pending = Some(first);
            while let Some(cmd) = pending.take() {
                match cmd {
                    Cmd::Append(records, reply) => {
                        bytes += records.iter().map(|r| r.len() + HEADER).sum::<usize>();
                        batch.push((records, reply));
                        if bytes < MAX_BATCH_BYTES {
                            pending = rx.try_recv().ok();
                        }
                    }
                    Cmd::DropBefore(seq, reply) => {
                        // Commit what came before, then compact.
                        self.commit(std::mem::take(&mut batch));
                        bytes = 0;
                        let _ = reply.send(self.drop_before(seq));
                        pending = rx.try_recv().ok();
                    }
                }
            }
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<(Vec<Vec<u8>>, Reply)>) {
        if batch.is_empty() {
            return;
        }
        if let Some(why) = &self.poisoned {
            for (_, reply) in batch {
                let _ = reply.send(Err(LogError::Poisoned(why.clone())));
            }
            return;
        }
        let start = self.next;
        let result = self.write(&batch);
        match result {
            Ok(mut offset) => {
                let mut seq = start;
                for (records, reply) in batch {
                    let positions = records
                        .iter()
                        .map(|r| {
                            let at = Position { seq, offset };
                            seq += 1;
                            offset += (HEADER + r.len()) as u64;
                            at
                        })
                        .collect();
                    let _ = reply.send(Ok(positions));
                }
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(error = %why, "queue log write failed; refusing further writes");
                self.poisoned = Some(why.clone());
                for (_, reply) in batch {
                    let _ = reply.send(Err(LogError::Poisoned(why.clone())));
                }
            }
        }
    }

    /// Writes (and syncs) the batch; returns where in the segment it starts.
    fn write(&mut self, batch: &[(Vec<Vec<u8>>, Reply)]) -> Result<u64, LogError> {
        self.roll_if_full()?;
        let path = self.current_path();
        let mut buf = Vec::with_capacity(
            batch
                .iter()
                .flat_map(|(r, _)| r)
                .map(|r| r.len() + HEADER)
                .sum(),
        );
        let mut seq = self.next;
        for payload in batch.iter().flat_map(|(r, _)| r) {
            encode(&mut buf, seq, payload);
            seq += 1;
        }
        self.file.write_all(&buf).map_err(io_err(&path))?;
        if self.config.sync {
            self.file.sync_data().map_err(io_err(&path))?;
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records
            .fetch_add(seq - self.next, Ordering::Relaxed);
        self.next = seq;
        let mut start = 0;
        if let Ok(mut segs) = self.segments.lock() {
            if let Some(last) = segs.last_mut() {
                start = last.bytes;
                last.bytes += buf.len() as u64;
            }
        }
        Ok(start)
    }

    fn current_path(&self) -> PathBuf {
        self.segments
            .lock()
            .ok()
            .and_then(|s| s.last().map(|s| s.path.clone()))
            .unwrap_or_else(|| self.config.dir.clone())
    }

    fn roll_if_full(&mut self) -> Result<(), LogError> {
        let full = self
            .segments
            .lock()
            .ok()
            .and_then(|s| s.last().map(|s| s.bytes >= self.config.segment_bytes))
            .unwrap_or(false);
        if !full {
            return Ok(());
        }
        let seg = new_segment(&self.config.dir, self.next)?;
        self.file = open_append(&seg.path)?;
        if let Ok(mut segs) = self.segments.lock() {
            segs.push(seg);
        }
        Ok(())
    }

    fn drop_before(&mut self, sequence: u64) -> Result<usize, LogError> {
        let mut segs = self.segments.lock().map_err(|_| LogError::Stopped)?;
        let mut dropped = 0;
        // A segment is dead when the next one starts at or below `sequence`.
        while segs.len() > 1 && segs[1].first <= sequence {
            let seg = segs.remove(0);
            std::fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            dropped += 1;
        }
        if dropped > 0 {
            sync_dir(&self.config.dir)?;
        }
        Ok(dropped)
    }
}

fn encode(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// The CRC of a record: over its sequence number and payload.
fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    crc.finalize()
}

/// (payload size, CRC, sequence) of a record header.
fn parse_header(h: &[u8; HEADER]) -> (usize, u32, u64) {
    let size = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let seq = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    (size, crc, seq)
}

struct End {
    /// Bytes of whole, valid records.
    valid: u64,
    len: u64,
}

/// Replays one segment; a bad record ends the last segment (a torn tail)
/// and is an error in any other.
fn replay(
    path: &Path,
    next: &mut u64,
    records: &mut u64,
    visit: &mut impl FnMut(Position, &[u8]),
    last: bool,
) -> Result<End, LogError> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut pos = 0u64;
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    loop {
        if pos == len {
            return Ok(End { valid: pos, len });
        }
        let bad = |reason: String| -> Result<End, LogError> {
            if last {
                Ok(End { valid: pos, len })
            } else {
                Err(LogError::Corrupt {
                    path: path.to_path_buf(),
                    position: pos,
                    reason,
                })
            }
        };
        if len - pos < HEADER as u64 {
            return bad("a partial record header".into());
        }
        r.read_exact(&mut header).map_err(io_err(path))?;
        let (size, crc, seq) = parse_header(&header);
        if size > MAX_RECORD || (len - pos - HEADER as u64) < size as u64 {
            return bad(format!("a record of {size} bytes runs past the end"));
        }
        payload.resize(size, 0);
        r.read_exact(&mut payload).map_err(io_err(path))?;
        if checksum(seq, &payload) != crc {
            return bad("checksum mismatch".into());
        }
        if seq != *next {
            return bad(format!("sequence {seq} where {} was due", *next));
        }
        visit(Position { seq, offset: pos }, &payload);
        *next += 1;
        *records += 1;
        pos += (HEADER + size) as u64;
    }
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>, LogError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let Some(first) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = entry.metadata().map_err(io_err(&path))?.len();
        out.push(Segment { first, path, bytes });
    }
    out.sort_by_key(|s| s.first);
    Ok(out)
}

fn new_segment(dir: &Path, first: u64) -> Result<Segment, LogError> {
    let path = dir.join(format!("{first:020}.log"));
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok(Segment {
        first,
        path,
        bytes: 0,
    })
}

fn open_append(path: &Path) -> Result<File, LogError> {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    f.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    Ok(f)
}

/// Makes a created or removed file name durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
