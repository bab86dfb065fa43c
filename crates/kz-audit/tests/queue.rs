#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The bounded queue refuses synchronously; a failing sink refuses new records and loses none.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kz_audit::{AuditError, Decision, Record, Sink, Transport, Writer, verify};

#[derive(Clone, Default)]
struct Memory {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// While set, writes fail.
    failing: Arc<AtomicBool>,
    syncs: Arc<Mutex<usize>>,
}

/// A sink that blocks in its first write until released.
struct Gated {
    memory: Memory,
    entered: Option<mpsc::Sender<()>>,
    release: mpsc::Receiver<()>,
}

impl Sink for Gated {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(entered) = self.entered.take() {
            entered.send(()).unwrap();
            self.release.recv().unwrap();
        }
        self.memory.write(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.memory.sync()
    }
    fn name(&self) -> String {
        "gated".into()
    }
}

impl Sink for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("No space left on device (simulated)"));
        }
        // Short writes: at most 100 bytes at a time.
        let n = buf.len().min(100);
        self.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn sync(&mut self) -> io::Result<()> {
        *self.syncs.lock().unwrap() += 1;
        Ok(())
    }
    fn name(&self) -> String {
        "memory".into()
    }
}

fn record(n: usize) -> Record {
    Record::new(Transport::Proxy)
        .decision(Decision::Allow)
        .reason(format!("r{n}"))
}

fn verify_bytes(bytes: &[u8]) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    std::fs::write(&path, bytes).unwrap();
    verify(&[path]).unwrap().records
}

#[test]
fn full_queue_refuses_synchronously_and_loses_nothing() {
    let memory = Memory::default();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let sink = Gated {
        memory: memory.clone(),
        entered: Some(entered_tx),
        release: release_rx,
    };
    let writer = Writer::with_sink(Box::new(sink), 1).unwrap();
    writer.try_append(record(0)).unwrap();
    // The thread now holds record 0 and is stuck writing it.
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    writer.try_append(record(1)).unwrap(); // fills the queue (capacity 1)
    let started = Instant::now();
    let err = writer.try_append(record(2)).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refusal must not wait"
    );
    match &err {
        AuditError::Full { sink, capacity } => {
            assert_eq!(sink, "gated");
            assert_eq!(*capacity, 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("full"), "{err}");
    release_tx.send(()).unwrap();
    writer.flush().unwrap();
    writer.try_append(record(3)).unwrap();
    writer.close().unwrap();
    let bytes = memory.bytes.lock().unwrap().clone();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.contains("\"r0\"") && text.contains("\"r1\"") && text.contains("\"r3\""));
    assert!(
        !text.contains("\"r2\""),
        "the refused record was not written"
    );
    assert_eq!(verify_bytes(&bytes), 3);
}

#[test]
fn failing_sink_refuses_new_records_and_retries_accepted_ones() {
    let memory = Memory::default();
    let writer = Writer::with_sink(Box::new(memory.clone()), 8).unwrap();
    writer.try_append(record(0)).unwrap();
    writer.flush().unwrap();
    assert!(writer.health().is_ok());

    memory.failing.store(true, Ordering::SeqCst);
    writer.try_append(record(1)).unwrap(); // accepted before the failure is known
    let err = writer.flush().unwrap_err();
    assert!(matches!(err, AuditError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(writer.health().is_err());
    let refused = writer.try_append(record(2)).unwrap_err();
    assert!(
        matches!(refused, AuditError::Unavailable { .. }),
        "{refused:?}"
    );
    assert!(matches!(
        writer.append_blocking(record(2)),
        Err(AuditError::Unavailable { .. })
    ));

    memory.failing.store(false, Ordering::SeqCst);
    // The thread retries in the background and becomes healthy again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer.health().is_err() {
        assert!(Instant::now() < deadline, "writer never recovered");
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.try_append(record(3)).unwrap();
    writer.flush().unwrap();
    let bytes = memory.bytes.lock().unwrap().clone();
    let text = String::from_utf8(bytes.clone()).unwrap();
    for kept in ["\"r0\"", "\"r1\"", "\"r3\""] {
        assert!(text.contains(kept), "{kept} missing");
    }
    assert!(!text.contains("\"r2\""));
    assert_eq!(verify_bytes(&bytes), 3);
    assert!(*memory.syncs.lock().unwrap() >= 2, "flush syncs");
    drop(writer);
}

#[test]
fn close_reports_records_it_could_not_write() {
    let memory = Memory::default();
    memory.failing.store(true, Ordering::SeqCst);
    let writer = Writer::with_sink(Box::new(memory.clone()), 8).unwrap();
    writer.try_append(record(0)).unwrap();
    writer.try_append(record(1)).unwrap_or(()); // may already be refused
    match writer.close().unwrap_err() {
        AuditError::Lost { count, sink, .. } => {
            assert!(count >= 1);
            assert_eq!(sink, "memory");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn drop_flushes() {
    let memory = Memory::default();
    let writer = Writer::with_sink(Box::new(memory.clone()), 64).unwrap();
    for n in 0..50 {
        writer.try_append(record(n)).unwrap();
    }
    drop(writer);
    assert_eq!(verify_bytes(&memory.bytes.lock().unwrap()), 50);
}

#[test]
fn a_batch_is_accepted_whole_or_refused_whole() {
    let memory = Memory::default();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let sink = Gated {
        memory: memory.clone(),
        entered: Some(entered_tx),
        release: release_rx,
    };
    let writer = Writer::with_sink(Box::new(sink), 4).unwrap();
    writer.try_append(record(0)).unwrap();
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(writer.capacity(), 4);
    // Three of four places are free: a batch of three fits, then one of two does not.
    writer
        .try_append_all(vec![record(1), record(2), record(3)])
        .unwrap();
    assert_eq!(writer.queue_depth(), 3);
    let err = writer
        .try_append_all(vec![record(4), record(5)])
        .unwrap_err();
    assert!(matches!(err, AuditError::Full { .. }), "{err:?}");
    assert_eq!(writer.queue_depth(), 3, "a refused batch takes no place");
    release_tx.send(()).unwrap();
    writer.flush().unwrap();
    assert_eq!(writer.queue_depth(), 0);
    writer.close().unwrap();
    let bytes = memory.bytes.lock().unwrap().clone();
    let text = String::from_utf8(bytes.clone()).unwrap();
    for n in 0..4 {
        assert!(text.contains(&format!("\"r{n}\"")), "r{n} missing");
    }
    assert!(!text.contains("\"r4\"") && !text.contains("\"r5\""));
    assert_eq!(verify_bytes(&bytes), 4);
}
