//! The writer: a bounded queue in front of a dedicated thread that chains, hashes and writes.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::error::AuditError;
use crate::jcs::{Canon, Key, sha256_hex, write_entries_split};
use crate::record::Record;
use crate::verify::{GENESIS, check_line};

/// Records the queue holds by default before [`Writer::try_append`] answers
/// [`AuditError::Full`].
pub const DEFAULT_CAPACITY: usize = 4096;

/// The record format version written in `v`.
pub const FORMAT_VERSION: i64 = 1;

/// Messages the writer thread drains in one go before writing them with one call.
const BATCH: usize = 1024;
/// First retry delay after the sink fails; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long shutdown keeps retrying a failing sink before reporting records as lost.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Longest last line read back when continuing an existing file.
const MAX_LINE: u64 = 1 << 20;

/// A destination for audit lines. [`Writer::open`] uses a file or stdout; implement this for
/// other destinations or tests and pass it to [`Writer::with_sink`].
pub trait Sink: Send {
    /// Writes some of `buf` and returns how many bytes were written (as [`io::Write::write`]).
    /// The writer retries the rest, so a short write followed by an error loses nothing.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Makes everything written so far durable (fsync for files).
    fn sync(&mut self) -> io::Result<()>;
    /// Closes and reopens the destination (log rotation). The default does nothing.
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The destination's name for messages (a path, or `stdout`).
    fn name(&self) -> String;
}

/// A file opened for appending, created with mode 0600, never through a symlink (a link planted
/// at the audit path, in a project directory say, makes opening fail instead of appending to
/// whatever it points at).
struct FileSink {
    path: PathBuf,
    file: File,
}

impl FileSink {
    fn open_file(path: &Path) -> io::Result<File> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
            let nofollow = rustix::fs::OFlags::NOFOLLOW.bits();
            options.custom_flags(i32::try_from(nofollow).unwrap_or(0));
        }
        options.open(path)
    }
}

impl Sink for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    /// The new file replaces the old one at once; the old one is synced on a thread of its
    /// own, so a rotation never stalls the queue behind an fsync of a large file.
    fn reopen(&mut self) -> io::Result<()> {
        let old = std::mem::replace(&mut self.file, Self::open_file(&self.path)?);
        // Every line was written to the old file before this; a thread that cannot start only
        // leaves its fsync to the kernel's own write-back.
        let _ = std::thread::Builder::new()
            .name("kz-audit-sync".into())
            .spawn(move || {
                let _ = old.sync_data();
            });
        Ok(())
    }
    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

struct StdoutSink;

impl Sink for StdoutSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        io::stdout().lock().flush()
    }
    fn name(&self) -> String {
        "stdout".into()
    }
}

/// State shared by the writer handle and its thread.
struct Shared {
    sink: String,
    healthy: AtomicBool,
    reason: Mutex<String>,
    /// Records accepted and not yet taken by the writer thread.
    queued: AtomicUsize,
}

impl Shared {
    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
    fn reason(&self) -> String {
        self.reason
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |r| r.clone())
    }
    fn unavailable(&self) -> AuditError {
        AuditError::Unavailable {
            sink: self.sink.clone(),
            reason: self.reason(),
        }
    }
    fn closed(&self) -> AuditError {
        AuditError::Closed {
            sink: self.sink.clone(),
        }
    }
}

type Ack = mpsc::Sender<Result<(), String>>;

enum Msg {
    Record(Record),
    /// Records accepted together (all or none), chained in order.
    Batch(Vec<Record>),
    Flush(Ack),
    Reopen(Ack),
}

/// Appends hash-chained records to an audit log from any number of threads.
///
/// Records pass through a bounded queue to a dedicated thread, so appending never waits on
/// disk. A record is either accepted (and then written, in chain order, retrying while the sink
/// fails) or refused at once with an error; none is dropped silently. `Writer` is `Send + Sync`:
/// share it with an `Arc`.
pub struct Writer {
    tx: Option<SyncSender<Msg>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), AuditError>>>,
    capacity: usize,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("sink", &self.shared.sink)
            .field("capacity", &self.capacity)
            .field("healthy", &self.shared.healthy())
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Opens `path` (`-` for stdout) with the [`DEFAULT_CAPACITY`] queue. See
    /// [`open_with_capacity`](Self::open_with_capacity).
    ///
    /// # Errors
    /// As [`open_with_capacity`](Self::open_with_capacity).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        Self::open_with_capacity(path, DEFAULT_CAPACITY)
    }

    /// Opens `path` for appending (created with mode 0600), or stdout for `-`, with a queue of
    /// `capacity` records (at least 1).
    ///
    /// When the file already holds records, the chain continues from its last line, which must
    /// be a valid record; a new or empty file (and stdout) starts a new chain.
    ///
    /// # Errors
    /// [`AuditError::Open`] when the file cannot be opened or read, [`AuditError::Corrupt`]
    /// when its last line is not a valid record, [`AuditError::Spawn`].
    pub fn open_with_capacity(path: impl AsRef<Path>, capacity: usize) -> Result<Self, AuditError> {
        let path = path.as_ref();
        if path == Path::new("-") {
            return Self::start(Box::new(StdoutSink), GENESIS.to_owned(), capacity);
        }
        let open_err = |source| AuditError::Open {
            path: path.to_owned(),
            source,
        };
        let file = FileSink::open_file(path).map_err(open_err)?;
        let last = match read_last_line(path).map_err(open_err)? {
            None => GENESIS.to_owned(),
            Some(last) => {
                let checked = if last.terminated {
                    check_line(&last.bytes).map_err(|(_, problem)| problem)
                } else {
                    Err(crate::verify::Problem::Truncated)
                };
                match checked {
                    Ok(c) => c.hash,
                    Err(problem) => {
                        return Err(AuditError::Corrupt {
                            path: path.to_owned(),
                            line: count_lines(path).map_err(open_err)?,
                            problem,
                        });
                    }
                }
            }
        };
        let sink = FileSink {
            path: path.to_owned(),
            file,
        };
        Self::start(Box::new(sink), last, capacity)
    }

    /// A writer on a custom sink, starting a new chain (`prev` of the first record is 64 zeros).
    ///
    /// # Errors
    /// [`AuditError::Spawn`].
    pub fn with_sink(sink: Box<dyn Sink>, capacity: usize) -> Result<Self, AuditError> {
        Self::start(sink, GENESIS.to_owned(), capacity)
    }

    fn start(sink: Box<dyn Sink>, last: String, capacity: usize) -> Result<Self, AuditError> {
        let capacity = capacity.max(1);
        let shared = Arc::new(Shared {
            sink: sink.name(),
            healthy: AtomicBool::new(true),
            reason: Mutex::new(String::new()),
            queued: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::sync_channel(capacity);
        let worker = Worker {
            sink,
            shared: Arc::clone(&shared),
            last,
            pending: Vec::new(),
            done: 0,
            needs_reopen: false,
            backoff: MIN_BACKOFF,
        };
        let thread = std::thread::Builder::new()
            .name("kz-audit".into())
            .spawn(move || worker.run(&rx))
            .map_err(AuditError::Spawn)?;
        Ok(Self {
            tx: Some(tx),
            shared,
            thread: Some(thread),
            capacity,
        })
    }

    fn sender(&self) -> Result<&SyncSender<Msg>, AuditError> {
        self.tx.as_ref().ok_or_else(|| self.shared.closed())
    }

    /// Fills `v`, `ts` (now) and `id`.
    fn stamp(mut record: Record) -> Record {
        let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let id = format!("{:032x}", rand::random::<u128>());
        for (key, value) in [
            ("v", Canon::Int(FORMAT_VERSION)),
            ("ts", Canon::Str(ts)),
            ("id", Canon::Str(id)),
        ] {
            record.fields.insert(Key(key.into()), value);
        }
        record
    }

    /// Queues `record` without waiting.
    ///
    /// # Errors
    /// The record was NOT accepted (answer the request 503): [`AuditError::Full`] when the queue
    /// is full, [`AuditError::Unavailable`] while the sink is failing, [`AuditError::Closed`]
    /// when the writer thread has stopped.
    pub fn try_append(&self, record: Record) -> Result<(), AuditError> {
        if !self.shared.healthy() {
            return Err(self.shared.unavailable());
        }
        let tx = self.sender()?;
        // Counted before the send, so the writer thread never takes it before it is counted.
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        let sent = tx.try_send(Msg::Record(Self::stamp(record)));
        if sent.is_err() {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(AuditError::Full {
                sink: self.shared.sink.clone(),
                capacity: self.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(self.shared.closed()),
        }
    }

    /// Accepts `records` together or refuses them all, at once (as
    /// [`try_append`](Self::try_append)): a caller that answers only when its records are
    /// accepted never leaves some of them behind.
    ///
    /// # Errors
    /// As [`try_append`](Self::try_append).
    pub fn try_append_all(&self, records: Vec<Record>) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        if !self.shared.healthy() {
            return Err(self.shared.unavailable());
        }
        let n = records.len();
        let full = || AuditError::Full {
            sink: self.shared.sink.clone(),
            capacity: self.capacity,
        };
        // The batch takes one slot of the channel; the records it holds count against the
        // capacity too, so a queue of batches stays as bounded as one of records.
        if self.shared.queued.load(Ordering::Relaxed).saturating_add(n) > self.capacity {
            return Err(full());
        }
        let tx = self.sender()?;
        self.shared.queued.fetch_add(n, Ordering::Relaxed);
        let stamped = records.into_iter().map(Self::stamp).collect();
        let sent = tx.try_send(Msg::Batch(stamped));
        if sent.is_err() {
            self.shared.queued.fetch_sub(n, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(full()),
            Err(TrySendError::Disconnected(_)) => Err(self.shared.closed()),
        }
    }

    /// The queue's capacity, in records.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues `record`, waiting for room in the queue (for the CLI, where waiting is fine).
    ///
    /// # Errors
    /// [`AuditError::Unavailable`] while the sink is failing, [`AuditError::Closed`].
    pub fn append_blocking(&self, record: Record) -> Result<(), AuditError> {
        if !self.shared.healthy() {
            return Err(self.shared.unavailable());
        }
        let tx = self.sender()?;
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        tx.send(Msg::Record(Self::stamp(record))).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.closed()
        })
    }

    /// Records accepted and not yet taken from the queue by the writer thread (a metric).
    pub fn queue_depth(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    fn request(&self, make: fn(Ack) -> Msg) -> Result<(), AuditError> {
        let (ack, done) = mpsc::channel();
        self.sender()?
            .send(make(ack))
            .map_err(|_| self.shared.closed())?;
        match done.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(AuditError::Unavailable {
                sink: self.shared.sink.clone(),
                reason,
            }),
            Err(_) => Err(self.shared.closed()),
        }
    }

    /// Waits until every record accepted before this call is written and synced to disk.
    ///
    /// # Errors
    /// [`AuditError::Unavailable`] when the sink fails (the records stay queued and are
    /// retried), [`AuditError::Closed`].
    pub fn flush(&self) -> Result<(), AuditError> {
        self.request(Msg::Flush)
    }

    /// Log rotation (`SIGUSR1`): writes and syncs what is queued, closes the file and opens the
    /// path again (creating it). The chain continues: the new file's first record has `prev` =
    /// the old file's last hash. A no-op for stdout.
    ///
    /// # Errors
    /// [`AuditError::Unavailable`] when the path cannot be reopened (retried in the background;
    /// appends are refused meanwhile), [`AuditError::Closed`].
    pub fn reopen(&self) -> Result<(), AuditError> {
        self.request(Msg::Reopen)
    }

    /// `Ok` while the sink is writable (for `/readyz`); otherwise the last failure.
    ///
    /// # Errors
    /// [`AuditError::Unavailable`].
    pub fn health(&self) -> Result<(), AuditError> {
        if self.shared.healthy() {
            Ok(())
        } else {
            Err(self.shared.unavailable())
        }
    }

    /// Writes and syncs everything accepted, then stops the thread. Dropping the writer does
    /// the same but cannot report failure.
    ///
    /// # Errors
    /// [`AuditError::Lost`] when accepted records could not be written within a short grace
    /// period, [`AuditError::Unavailable`] when the final sync failed.
    pub fn close(mut self) -> Result<(), AuditError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), AuditError> {
        drop(self.tx.take());
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| Err(self.shared.closed())),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The writer thread.
struct Worker {
    sink: Box<dyn Sink>,
    shared: Arc<Shared>,
    /// Hash of the last record chained.
    last: String,
    /// Chained lines not yet (completely) written; `done` bytes of it are written.
    pending: Vec<u8>,
    done: usize,
    needs_reopen: bool,
    backoff: Duration,
}

impl Worker {
    fn run(mut self, rx: &Receiver<Msg>) -> Result<(), AuditError> {
        loop {
            let first = if self.shared.healthy() && self.pending.is_empty() {
                match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(self.backoff) {
                    Ok(msg) => Some(msg),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            if let Some(msg) = first {
                self.handle(msg);
                for _ in 0..BATCH {
                    match rx.try_recv() {
                        Ok(msg) => self.handle(msg),
                        Err(_) => break,
                    }
                }
            }
            let _ = self.progress(false);
        }
        self.finish()
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Record(record) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                self.chain(record);
            }
            Msg::Batch(records) => {
                self.shared
                    .queued
                    .fetch_sub(records.len(), Ordering::Relaxed);
                for record in records {
                    self.chain(record);
                }
            }
            Msg::Flush(ack) => {
                let _ = ack.send(self.progress(true));
            }
            Msg::Reopen(ack) => {
                // Finish writing to the old file (its sync runs beside the queue, see
                // `FileSink::reopen`); whatever fails here is retried on the new one.
                let _ = self.progress(false);
                self.needs_reopen = true;
                let _ = ack.send(self.progress(true));
            }
        }
    }

    fn chain(&mut self, mut record: Record) {
        record
            .fields
            .insert(Key("prev".into()), Canon::Str(self.last.clone()));
        // Serialised once: the hashed text is the object without `hash`, and the line is the
        // same entries with `hash` in its canonical place.
        let (before, after) = write_entries_split(&record.fields, &Key("hash".into()));
        let join = |middle: Option<&str>| {
            let mut out = String::with_capacity(before.len() + after.len() + 80);
            out.push('{');
            for part in [Some(before.as_str()), middle, Some(after.as_str())]
                .into_iter()
                .flatten()
                .filter(|p| !p.is_empty())
            {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(part);
            }
            out.push('}');
            out
        };
        let hash = sha256_hex(join(None).as_bytes());
        let mut line = join(Some(&format!("\"hash\":\"{hash}\"")));
        line.push('\n');
        self.pending.extend_from_slice(line.as_bytes());
        self.last = hash;
    }

    /// Writes what is pending (and syncs when `durable`, or when recovering from a failure),
    /// updating the shared health.
    fn progress(&mut self, durable: bool) -> Result<(), String> {
        let result = self.progress_inner(durable);
        match &result {
            Ok(()) => {
                if !self.shared.healthy() {
                    self.shared.healthy.store(true, Ordering::Release);
                }
                self.backoff = MIN_BACKOFF;
            }
            Err(reason) => {
                if let Ok(mut r) = self.shared.reason.lock() {
                    r.clone_from(reason);
                }
                if self.shared.healthy.swap(false, Ordering::AcqRel) {
                    self.backoff = MIN_BACKOFF;
                } else {
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        result
    }

    fn progress_inner(&mut self, durable: bool) -> Result<(), String> {
        if self.needs_reopen {
            self.sink
                .reopen()
                .map_err(|e| format!("cannot reopen: {e}"))?;
            self.needs_reopen = false;
        }
        while let Some(rest) = self.pending.get(self.done..).filter(|r| !r.is_empty()) {
            match self.sink.write(rest) {
                Ok(0) => return Err("write failed: wrote zero bytes".into()),
                Ok(n) => self.done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write failed: {e}")),
            }
        }
        self.pending.clear();
        self.done = 0;
        if self.pending.capacity() > MAX_LINE as usize {
            self.pending.shrink_to(64 * 1024);
        }
        if durable || !self.shared.healthy() {
            self.sink.sync().map_err(|e| format!("sync failed: {e}"))?;
        }
        Ok(())
    }

    /// Shutdown: everything accepted is written and synced, retrying for a short while.
    fn finish(mut self) -> Result<(), AuditError> {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        loop {
            let Err(reason) = self.progress(true) else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let rest = self.pending.get(self.done..).unwrap_or_default();
                let count = rest.iter().filter(|&&b| b == b'\n').count();
                return Err(if count == 0 {
                    AuditError::Unavailable {
                        sink: self.shared.sink.clone(),
                        reason,
                    }
                } else {
                    AuditError::Lost {
                        sink: self.shared.sink.clone(),
                        count,
                        reason,
                    }
                });
            }
            std::thread::sleep(self.backoff);
        }
    }
}

struct LastLine {
    bytes: Vec<u8>,
    terminated: bool,
}

/// The file's last line (without its newline), reading backwards from the end.
fn read_last_line(path: &Path) -> io::Result<Option<LastLine>> {
    const CHUNK: u64 = 8192;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    loop {
        let start = pos.saturating_sub(CHUNK);
        let size = usize::try_from(pos - start).map_err(io::Error::other)?;
        let mut chunk = vec![0; size];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        pos = start;
        let terminated = tail.last() == Some(&b'\n');
        let body = if terminated {
            tail.get(..tail.len() - 1).unwrap_or_default()
        } else {
            tail.as_slice()
        };
        if let Some(nl) = body.iter().rposition(|&b| b == b'\n') {
            let bytes = body.get(nl + 1..).unwrap_or_default().to_vec();
            return Ok(Some(LastLine { bytes, terminated }));
        }
        if pos == 0 {
            let bytes = body.to_vec();
            return Ok(Some(LastLine { bytes, terminated }));
        }
        if len - pos > MAX_LINE {
            return Err(io::Error::other(format!(
                "last line is longer than {MAX_LINE} bytes"
            )));
        }
    }
}

/// Number of the file's last line (for error messages only).
fn count_lines(path: &Path) -> io::Result<u64> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut lines = 0u64;
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf)? > 0 {
        lines += 1;
        buf.clear();
    }
    Ok(lines)
}
