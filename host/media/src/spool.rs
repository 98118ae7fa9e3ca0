//! Recordings on disk as they are made: each is a raw file of 8 kHz 16-bit little-endian
//! samples (`<dir>/<name>.pcm`), appended a second at a time by one writer thread per media
//! layer, so a call's memory stays flat however long it records, no media worker waits for the
//! disk, and a crash keeps all but the last second (the next start makes a recording of what
//! a crash left: see the engine's recovery).
//!
//! A [`Tape`] is one recording being made; [`Tape::finish`] gives a [`Taped`], read once its
//! writes are done. Without a spool (unit tests of the pure cores) a tape is kept in memory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Samples a tape holds before they are written (one second).
const BLOCK: usize = 8000;
/// Blocks waiting for the writer, at most (16 MB); past that a worker writes its block itself.
const QUEUED_BLOCKS: usize = 1024;
/// The spool files' extension.
pub const EXTENSION: &str = "pcm";

/// Where recordings are spooled, and the thread that writes them. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    dir: Arc<PathBuf>,
    tx: SyncSender<Job>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir).finish()
    }
}

/// One file being written, and the first error writing it.
#[derive(Debug)]
struct Sink {
    file: File,
    error: Mutex<Option<String>>,
}

impl Sink {
    /// Writes `bytes` at `offset`: positioned, so a block the worker writes itself (the queue
    /// full) cannot land before an earlier one still queued.
    fn append(&self, offset: u64, bytes: &[u8]) {
        if let Err(e) = self.file.write_all_at(bytes, offset)
            && let Ok(mut error) = self.error.lock()
        {
            error.get_or_insert_with(|| e.to_string());
        }
    }

    fn outcome(&self) -> Result<(), String> {
        match self.error.lock() {
            Ok(e) => e.clone().map_or(Ok(()), Err),
            Err(_) => Err("the spool writer failed".into()),
        }
    }
}

enum Job {
    /// Bytes to write at an offset.
    Append(Arc<Sink>, u64, Vec<u8>),
    /// Everything sent before is written: says how it went.
    Close(Arc<Sink>, oneshot::Sender<Result<(), String>>),
}

impl Spool {
    /// A spool in `dir` (created if missing), with its writer thread.
    pub fn start(dir: &Path) -> io::Result<Spool> {
        Spool::with_queue(dir, QUEUED_BLOCKS)
    }

    fn with_queue(dir: &Path, blocks: usize) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let (tx, rx) = sync_channel(blocks);
        std::thread::Builder::new()
            .name("media-spool".into())
            .spawn(move || write(rx))?;
        Ok(Spool {
            dir: Arc::new(dir.to_owned()),
            tx,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new tape in `<dir>/<name>.pcm` (`name`: letters, digits, `-`, `_` and `.`; anything
    /// else is replaced). If the file cannot be made, the tape is kept in memory (logged: the
    /// recording is not lost, but it costs memory and a crash loses it).
    pub fn tape(&self, name: &str) -> Tape {
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self.dir.join(format!("{name}.{EXTENSION}"));
        match File::create(&path) {
            Ok(file) => Tape {
                kind: Kind::File {
                    path,
                    sink: Arc::new(Sink {
                        file,
                        error: Mutex::new(None),
                    }),
                    buf: Vec::with_capacity(BLOCK),
                    tx: self.tx.clone(),
                },
                samples: 0,
            },
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "a recording cannot be spooled to disk; it is kept in memory");
                Tape::memory()
            }
        }
    }
}

fn write(rx: Receiver<Job>) {
    for job in rx {
        match job {
            Job::Append(sink, offset, bytes) => sink.append(offset, &bytes),
            Job::Close(sink, done) => {
                let _ = done.send(sink.outcome());
            }
        }
    }
}

fn to_bytes(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// One recording being made.
#[derive(Debug)]
pub struct Tape {
    kind: Kind,
    samples: u64,
}

#[derive(Debug)]
enum Kind {
    Memory(Vec<i16>),
    File {
        path: PathBuf,
        sink: Arc<Sink>,
        /// Less than a block, not yet handed to the writer.
        buf: Vec<i16>,
        tx: SyncSender<Job>,
    },
}

impl Tape {
    /// A tape kept in memory.
    pub fn memory() -> Tape {
        Tape {
            kind: Kind::Memory(Vec::new()),
            samples: 0,
        }
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.samples
    }

    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    pub fn extend(&mut self, mut pcm: &[i16]) {
        let before = self.samples;
        self.samples += pcm.len() as u64;
        match &mut self.kind {
            Kind::Memory(v) => v.extend_from_slice(pcm),
            Kind::File { buf, sink, tx, .. } => {
                // where `buf` starts in the file
                let mut at = (before - buf.len() as u64) * 2;
                while !pcm.is_empty() {
                    let n = (BLOCK - buf.len()).min(pcm.len());
                    buf.extend_from_slice(&pcm[..n]);
                    pcm = &pcm[n..];
                    if buf.len() == BLOCK {
                        let block = to_bytes(buf);
                        buf.clear();
                        hand_over(tx, Job::Append(sink.clone(), at, block));
                        at += BLOCK as u64 * 2;
                    }
                }
            }
        }
    }

    pub fn extend_zeros(&mut self, samples: usize) {
        const ZEROS: [i16; 160] = [0; 160];
        let mut left = samples;
        while left > 0 {
            let n = left.min(ZEROS.len());
            self.extend(&ZEROS[..n]);
            left -= n;
        }
    }

    /// Ends the tape: what is buffered goes to the writer.
    pub fn finish(self) -> Taped {
        match self.kind {
            Kind::Memory(v) => Taped {
                samples: self.samples,
                kind: TapedKind::Memory(v),
            },
            Kind::File {
                path,
                sink,
                buf,
                tx,
            } => {
                if !buf.is_empty() {
                    let at = (self.samples - buf.len() as u64) * 2;
                    hand_over(&tx, Job::Append(sink.clone(), at, to_bytes(&buf)));
                }
                let (done, written) = oneshot::channel();
                hand_over(&tx, Job::Close(sink, done));
                Taped {
                    samples: self.samples,
                    kind: TapedKind::File {
                        path,
                        written: Some(written),
                    },
                }
            }
        }
    }
}

/// Gives `job` to the writer. When its queue is full (the disk is behind), a block is written
/// here, on the caller's thread, rather than held in memory; a close waits for room (it must
/// come after the blocks queued before it).
fn hand_over(tx: &SyncSender<Job>, job: Job) {
    match tx.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(Job::Append(sink, offset, bytes))) => sink.append(offset, &bytes),
        Err(TrySendError::Full(close)) => {
            if let Err(std::sync::mpsc::SendError(Job::Close(sink, done))) = tx.send(close) {
                let _ = done.send(sink.outcome());
            }
        }
        // the writer is gone (shutdown): the caller writes, and answers the close itself
        Err(TrySendError::Disconnected(job)) => match job {
            Job::Append(sink, offset, bytes) => sink.append(offset, &bytes),
            Job::Close(sink, done) => {
                let _ = done.send(sink.outcome());
            }
        },
    }
}

/// A finished recording's audio. Dropped, it removes its spool file (a recording nobody
/// stored is not wanted), unless [`Taped::leave`] kept it for the next start.
#[derive(Debug)]
pub struct Taped {
    samples: u64,
    kind: TapedKind,
}

impl Drop for Taped {
    fn drop(&mut self) {
        if let TapedKind::File { path, .. } = &self.kind
            && !path.as_os_str().is_empty()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Debug)]
enum TapedKind {
    Memory(Vec<i16>),
    File {
        path: PathBuf,
        /// Until the writer said how the writes went (taken by the first read).
        written: Option<oneshot::Receiver<Result<(), String>>>,
    },
}

impl Taped {
    /// The audio of a tape kept in memory (`samples` of it).
    pub fn in_memory(pcm: Vec<i16>) -> Taped {
        Taped {
            samples: pcm.len() as u64,
            kind: TapedKind::Memory(pcm),
        }
    }

    /// A spool file a previous run left (after a crash): all of it.
    pub fn left_over(path: PathBuf) -> io::Result<Taped> {
        let samples = std::fs::metadata(&path)?.len() / 2;
        Ok(Taped {
            samples,
            kind: TapedKind::File {
                path,
                written: None,
            },
        })
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The samples of `range` (clamped to what there is), once every write is done. Runs the
    /// file read on a blocking thread.
    pub async fn read(&mut self, range: Range<u64>) -> Result<Vec<i16>, String> {
        let end = range.end.min(self.samples);
        let start = range.start.min(end);
        match &mut self.kind {
            TapedKind::Memory(v) => Ok(v[start as usize..end as usize].to_vec()),
            TapedKind::File { path, written } => {
                if let Some(written) = written.take() {
                    match written.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(format!("writing the recording: {e}")),
                        Err(_) => return Err("the recording spool stopped".into()),
                    }
                }
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_range(&path, start..end))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("reading the recording: {e}"))
            }
        }
    }

    /// The spool file, if the audio is in one.
    pub fn path(&self) -> Option<&Path> {
        match &self.kind {
            TapedKind::File { path, .. } => Some(path),
            TapedKind::Memory(_) => None,
        }
    }

    /// Removes the spool file (once the recording is stored, or was not wanted).
    pub fn discard(self) {}

    /// Leaves the spool file where it is, for the next start to make a recording of.
    pub fn leave(mut self) {
        if let TapedKind::File { path, .. } = &mut self.kind {
            *path = PathBuf::new();
        }
    }

    /// The audio of a memory tape, for tests of the pure cores.
    #[cfg(test)]
    pub(crate) fn memory(&self) -> &[i16] {
        match &self.kind {
            TapedKind::Memory(v) => v,
            TapedKind::File { .. } => &[],
        }
    }
}

fn read_range(path: &Path, range: Range<u64>) -> io::Result<Vec<i16>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(range.start * 2))?;
    let mut bytes = Vec::new();
    f.take((range.end - range.start) * 2)
        .read_to_end(&mut bytes)?;
    Ok(bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tape_is_on_disk_a_second_at_a_time_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::start(dir.path()).unwrap();
        let mut tape = spool.tape("CA1.Record/1");
        let pcm: Vec<i16> = (0..20_000).map(|i| (i % 3000) as i16 - 1500).collect();
        tape.extend(&pcm[..12_000]);
        tape.extend_zeros(100);
        tape.extend(&pcm[12_000..]);
        let path = dir.path().join("CA1.Record_1.pcm");
        // two whole seconds were handed to the writer; the rest waits in the tape
        let on_disk = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        for _ in 0..200 {
            if on_disk() == 2 * 16_000 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(on_disk(), 2 * 16_000);
        let mut taped = tape.finish();
        assert_eq!(taped.samples(), 20_100);
        let all = taped.read(0..u64::MAX).await.unwrap();
        let mut want = pcm[..12_000].to_vec();
        want.extend([0; 100]);
        want.extend_from_slice(&pcm[12_000..]);
        assert_eq!(all, want);
        assert_eq!(
            taped.read(11_990..12_010).await.unwrap(),
            want[11_990..12_010]
        );
        taped.discard();
        assert!(!path.exists());
        // one left for the next start stays
        let mut tape = spool.tape("kept");
        tape.extend(&[1; 10]);
        tape.finish().leave();
        assert!(dir.path().join("kept.pcm").exists());
    }

    #[tokio::test]
    async fn blocks_written_by_the_worker_when_the_queue_is_full_land_in_their_place() {
        let dir = tempfile::tempdir().unwrap();
        // no queue: most blocks are written by the caller, some by the writer thread
        let spool = Spool::with_queue(dir.path(), 0).unwrap();
        let mut tape = spool.tape("full");
        let pcm: Vec<i16> = (0..10 * 8000 + 77).map(|i| (i % 30011) as i16).collect();
        for chunk in pcm.chunks(160) {
            tape.extend(chunk);
        }
        let mut taped = tape.finish();
        assert_eq!(taped.read(0..u64::MAX).await.unwrap(), pcm);
    }

    #[tokio::test]
    async fn what_a_crash_left_reads_as_a_whole_recording() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("left.pcm");
        std::fs::write(&path, to_bytes(&[1, -2, 3])).unwrap();
        let mut taped = Taped::left_over(path).unwrap();
        assert_eq!(taped.read(0..10).await.unwrap(), vec![1, -2, 3]);
    }

    #[test]
    fn an_unwritable_spool_keeps_the_tape_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::start(dir.path()).unwrap();
        std::fs::remove_dir(dir.path()).unwrap();
        let mut tape = spool.tape("x");
        tape.extend(&[5; 10]);
        assert_eq!(tape.finish().memory(), &[5; 10]);
    }
}
