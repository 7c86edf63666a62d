//! Export of a snapshot as an archive, and import of an archive as a new
//! sandbox whose `initial` snapshot is the archived state. The archive
//! format and its checks live in `rewind_storage` (`ops/archive.rs`).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use rewind_storage::Received;
use tokio::sync::mpsc;

use super::{parse_sandbox_name, SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::SandboxRow;

/// Chunks handed from the blocking export to the response body.
const CHUNK: usize = 256 * 1024;

/// An export in progress: the chunks of the archive, in order. An `Err`
/// item means the export failed after it had started (the response must
/// then be aborted, never ended as if complete).
pub type ExportStream = mpsc::Receiver<io::Result<Bytes>>;

impl Sandboxes {
    /// Starts exporting `snapshot` of `name` (incrementally against
    /// `parent`, another snapshot of the same sandbox, when given). Answers
    /// once the first chunk is ready, so an unknown or vanished snapshot is
    /// an error (404), not an empty or truncated 200.
    pub async fn export_snapshot(
        &self,
        caller: &Caller,
        name: &str,
        snapshot: &str,
        parent: Option<&str>,
    ) -> Result<(Bytes, ExportStream), SandboxError> {
        let snap = super::parse_snapshot_name("snapshot", snapshot)?;
        let parent = parent
            .map(|p| super::parse_snapshot_name("parent", p))
            .transpose()?;
        let row = self.find(caller, name).await?;
        let sandbox = parse_sandbox_name(&row.name)?;
        let (tx, mut rx) = mpsc::channel(8);
        let storage = self.storage.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut out = ChannelWriter::new(tx.clone());
            let exported = storage.export_snapshot_from(&sandbox, &snap, parent.as_ref(), &mut out);
            let result = match exported {
                Ok(_) => out.finish().map_err(|source| SandboxError::Io {
                    op: "stream the export",
                    source,
                }),
                Err(e) => Err(SandboxError::from(e)),
            };
            if let Err(e) = &result {
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
            result
        });
        if let Some(Ok(first)) = rx.recv().await {
            return Ok((first, rx));
        }
        task.await??;
        Err(SandboxError::NotFound(format!(
            "snapshot \"{snapshot}\" produced no data"
        )))
    }

    /// Creates sandbox `name` from an archive read from `body`: the archive
    /// is verified and received before anything is created (a bad one is a
    /// 400 and leaves nothing), then the sandbox is created from it as by
    /// `POST /vms`.
    pub async fn import(
        &self,
        caller: &Caller,
        name: &str,
        declared_len: Option<u64>,
        body: impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
    ) -> Result<SandboxRow, SandboxError> {
        parse_sandbox_name(name)?;
        let cap = self.config.storage.max_import_mb.saturating_mul(1 << 20);
        if cap > 0 && declared_len.is_some_and(|len| len > cap) {
            return Err(too_large(self.config.storage.max_import_mb));
        }
        let over = Arc::new(AtomicBool::new(false));
        let capped_body = capped(body, cap, Arc::clone(&over));
        let received = match self.receive(capped_body, declared_len).await {
            Err(_) if over.load(Ordering::SeqCst) => {
                return Err(too_large(self.config.storage.max_import_mb))
            }
            other => other?,
        };
        let created = self.create_imported(caller, name, received.clone()).await;
        let storage = self.storage.clone();
        let discarded = tokio::task::spawn_blocking(move || storage.discard_received(received));
        if let Ok(Err(e)) = discarded.await {
            tracing::warn!(error = %e, "removing an import's staging dir failed; recovery removes it");
        }
        created
    }

    async fn receive(
        &self,
        mut body: impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
        declared_len: Option<u64>,
    ) -> Result<Received, SandboxError> {
        let (tx, rx) = mpsc::channel(8);
        let pump = tokio::spawn(async move {
            while let Some(chunk) = body.next().await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        let storage = self.storage.clone();
        let received = tokio::task::spawn_blocking(move || {
            storage.receive_archive_sized(&mut ChannelReader::new(rx), declared_len)
        })
        .await?;
        pump.abort();
        Ok(received?)
    }
}

fn too_large(mb: u64) -> SandboxError {
    SandboxError::TooLarge {
        field: "body",
        message: format!("the archive is larger than storage.max_import_mb ({mb} MiB)"),
    }
}

/// `body`, ending in an error (and setting `over`) once it passes `cap`
/// bytes (0: no cap).
fn capped(
    body: impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
    cap: u64,
    over: Arc<AtomicBool>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static {
    let mut seen = 0u64;
    body.map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if cap > 0 && seen > cap {
            over.store(true, Ordering::SeqCst);
            return Err(io::Error::other("the archive is over the import cap"));
        }
        Ok(chunk)
    })
}

/// `Write` for the blocking export: collects `CHUNK` bytes, then sends.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }

    fn finish(mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        Ok(data.len())
    }

    /// Sends nothing early: the first chunk only goes out once the export
    /// has produced a full one (or finished).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `Read` for the blocking import, fed by the request body.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
