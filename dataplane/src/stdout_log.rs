//! Access-log and outlier lines on stdout, written in batches as Envoy writes its
//! file access log: a line costs an append under a lock, not a `write(2)` (in a pod,
//! each write also wakes the container runtime's log copier). A thread flushes
//! every 100 ms, a line that fills 64 KiB flushes at once, and the binary flushes
//! before it exits. Lines keep their order: one writer at a time takes the batch.

use std::io::Write as _;
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

/// How long a line may wait for its batch.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const FLUSH_SIZE: usize = 64 * 1024;

static BATCH: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Held from taking a batch until it is written, so batches leave in order.
static WRITER: Mutex<()> = Mutex::new(());
static FLUSHER: Once = Once::new();

/// Queues `line` for stdout. A closed stdout loses lines rather than failing
/// requests.
pub fn line(text: &str) {
    FLUSHER.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("stdout-log".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_INTERVAL);
                    flush();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "no log flush thread: lines wait for 64 KiB or exit");
        }
    });
    let full = {
        let mut batch = BATCH.lock().unwrap_or_else(PoisonError::into_inner);
        batch.extend_from_slice(text.as_bytes());
        batch.push(b'\n');
        batch.len() >= FLUSH_SIZE
    };
    if full {
        flush();
    }
}

/// Writes every queued line.
pub fn flush() {
    let _writer = WRITER.lock().unwrap_or_else(PoisonError::into_inner);
    let batch = std::mem::take(&mut *BATCH.lock().unwrap_or_else(PoisonError::into_inner));
    if batch.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&batch);
    let _ = out.flush();
}
