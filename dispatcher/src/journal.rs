//! The durable half of the dedupe barrier: a local journal of every message whose data
//! (final dot included) was handed to a receiving server, written the moment the write
//! returns and before the reply is read.
//!
//! The Redis barrier records outcomes, but only after the reply has been read and a round
//! trip made: a crash in between (kill -9, power) would leave a delivered message with no
//! record, and its redelivered record would be sent again. The journal entry is one
//! synchronous `write(2)` right after the data left, so it survives any crash of the
//! process (it sits in the page cache) and a redelivered message found in it is not sent
//! again. It also stands in for Redis when Redis lost its data.
//!
//! Files are segments of 16-byte message ids; the newest `segments` are kept (and
//! loaded into memory at start), so the journal covers the most recent
//! `segments × segment_entries` sends — far longer than any redelivery takes.

use sendmill_wire::MessageId;
use std::{
    collections::{HashSet, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::Mutex,
};

pub struct Journal {
    inner: Mutex<Inner>,
}

struct Inner {
    dir: PathBuf,
    file: File,
    written: usize,
    per_segment: usize,
    keep: usize,
    /// Oldest first: (sequence number, ids).
    segments: VecDeque<(u64, HashSet<u128>)>,
}

impl Journal {
    /// Opens the journal in `dir`, loading the kept segments and starting a new one.
    pub fn open(dir: &Path, per_segment: usize, keep: usize) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut found: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("segment-")?
                    .strip_suffix(".ids")?
                    .parse()
                    .ok()
            })
            .collect();
        found.sort_unstable();
        let mut segments = VecDeque::new();
        let stale = found.len().saturating_sub(keep);
        for (i, &seq) in found.iter().enumerate() {
            let path = segment_path(dir, seq);
            if i < stale {
                fs::remove_file(&path)?;
            } else {
                segments.push_back((seq, read_segment(&path)?));
            }
        }
        let next = found.last().map_or(0, |s| s + 1);
        let file = create_segment(dir, next)?;
        segments.push_back((next, HashSet::new()));
        let mut inner = Inner {
            dir: dir.to_owned(),
            file,
            written: 0,
            per_segment,
            keep,
            segments,
        };
        inner.trim()?;
        let loaded: usize = inner.segments.iter().map(|(_, s)| s.len()).sum();
        tracing::info!(dir = %dir.display(), loaded, "dedupe journal open");
        Ok(Self {
            inner: Mutex::new(inner),
        })
    }

    /// Records that `id`'s data reached a receiver.
    pub fn record(&self, id: MessageId) -> io::Result<()> {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.file.write_all(id.0.as_bytes())?;
        let value = id.0.as_u128();
        inner
            .segments
            .back_mut()
            .expect("there is always a current segment")
            .1
            .insert(value);
        inner.written += 1;
        if inner.written >= inner.per_segment {
            inner.rotate()?;
        }
        Ok(())
    }

    /// Whether `id`'s data was handed to a receiver since the oldest kept segment.
    pub fn contains(&self, id: MessageId) -> bool {
        let value = id.0.as_u128();
        let inner = self.inner.lock().expect("not poisoned");
        inner.segments.iter().any(|(_, ids)| ids.contains(&value))
    }
}

impl Inner {
    fn rotate(&mut self) -> io::Result<()> {
        let next = self.segments.back().map_or(0, |(s, _)| s + 1);
        self.file = create_segment(&self.dir, next)?;
        self.segments.push_back((next, HashSet::new()));
        self.written = 0;
        self.trim()
    }

    fn trim(&mut self) -> io::Result<()> {
        while self.segments.len() > self.keep {
            if let Some((seq, _)) = self.segments.pop_front() {
                fs::remove_file(segment_path(&self.dir, seq))?;
            }
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("segment-{seq:020}.ids"))
}

fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, seq))
}

fn read_segment(path: &Path) -> io::Result<HashSet<u128>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    // A torn last record (a crash mid-write) is ignored: its data write had not returned.
    Ok(bytes
        .chunks_exact(16)
        .map(|c| u128::from_be_bytes(c.try_into().expect("16 bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_forgets_old_segments() {
        let dir = std::env::temp_dir().join(format!("journal-{}", uuid::Uuid::now_v7()));
        let first = MessageId::generate();
        {
            let journal = Journal::open(&dir, 2, 2).unwrap();
            journal.record(first).unwrap();
            assert!(journal.contains(first));
        }
        let journal = Journal::open(&dir, 2, 2).unwrap();
        assert!(journal.contains(first), "kept across a restart");
        assert!(!journal.contains(MessageId::generate()));
        // Four more entries rotate twice: the first segment is gone.
        for _ in 0..4 {
            journal.record(MessageId::generate()).unwrap();
        }
        assert!(!journal.contains(first));
        let files = fs::read_dir(&dir).unwrap().count();
        assert!(files <= 2, "{files} segment files kept");
        fs::remove_dir_all(&dir).unwrap();
    }
}
