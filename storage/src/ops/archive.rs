//! Snapshot archives: export_snapshot, receive_archive, discard_received.
//!
//! An archive is self-contained and checked end to end:
//!
//! ```text
//! REWIND-ARCHIVE1\n              16-byte magic
//! [parent frame]                 incremental only: zstd skippable frame naming the parent
//! <zstd frames>                  a `btrfs send` stream of the snapshot
//! <size frame>                   zstd skippable frame: the send stream's length
//! SHA256\0\0 <32 bytes>          trailer: SHA-256 of everything before it
//! ```
//!
//! The checksum is a trailer so an export streams without buffering; a
//! truncated archive has no valid trailer, and an export whose stream
//! failed never gets one.
//!
//! **Export.** A full export generates the send stream in userspace
//! (`send_gen`, walking a private read-only clone of the snapshot: faster
//! than the kernel's send, see there); an incremental one (`?parent=`)
//! uses the `BTRFS_IOC_SEND` ioctl (no library wraps it).
//!
//! **Import**: `ops/import.rs`.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::btrfs;
use crate::error::StorageError;
use crate::names::{SandboxName, SnapshotName};
use crate::send_gen;
use crate::storage::Storage;

/// First bytes of every archive.
pub const ARCHIVE_MAGIC: &[u8; 16] = b"REWIND-ARCHIVE1\n";
const TRAILER_TAG: &[u8; 8] = b"SHA256\0\0";
pub(super) const TRAILER_LEN: usize = 40;
/// zstd level of exports. 1, not zstd's default 3: compression is the
/// export's bottleneck, and level 1 is about twice as fast for a few
/// percent more bytes (docs/benchmarks.md).
const ZSTD_LEVEL: i32 = 1;

/// A verified archive received into a staging directory; pass it to
/// [`CreateOptions::import`](crate::CreateOptions::import), then to
/// [`Storage::discard_received`].
#[derive(Clone, Debug)]
pub struct Received {
    pub(super) dir: PathBuf,
    pub(super) subvolume: PathBuf,
}

impl Received {
    pub(crate) fn subvolume(&self) -> &Path {
        &self.subvolume
    }
}

#[repr(C)]
struct SendArgs {
    send_fd: i64,
    clone_sources_count: u64,
    clone_sources: *mut u64,
    parent_root: u64,
    flags: u64,
    version: u32,
    reserved: [u8; 28],
}

nix::ioctl_write_ptr!(btrfs_ioc_send, 0x94, 38, SendArgs);

impl Storage {
    /// Writes snapshot `name` of `sb` to `out` as an archive; returns the
    /// bytes written. Nothing is written unless the kernel has started the
    /// send (a snapshot deleted meanwhile fails before the first byte, and
    /// the kernel refuses to delete a snapshot while it is being sent), so
    /// an error after the first byte is an I/O error of `out` or the pool.
    pub fn export_snapshot(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        out: &mut dyn Write,
    ) -> Result<u64, StorageError> {
        self.export_snapshot_from(sb, name, None, out)
    }

    /// Like [`Storage::export_snapshot`]; with `parent`, an incremental
    /// archive holding only what changed since that (hot) snapshot of the
    /// same sandbox. It can only be imported where the parent exists (this
    /// pool, while the parent snapshot is kept).
    pub fn export_snapshot_from(
        &self,
        sb: &SandboxName,
        name: &SnapshotName,
        parent: Option<&SnapshotName>,
        out: &mut dyn Write,
    ) -> Result<u64, StorageError> {
        let path = self.layout().snap(sb, name);
        let dir = open_snapshot(&path, name)?;
        let parent_id = match parent {
            Some(p) => {
                let ppath = self.layout().snap(sb, p);
                open_snapshot(&ppath, p)?;
                Some(btrfs::subvolume_meta(&ppath)?.id)
            }
            None => None,
        };
        let bytes = match parent_id {
            Some(_) => {
                let label = parent.map(|p| format!("{sb}/{p}"));
                write_archive(dir, parent_id, label.as_deref(), out, &path)?
            }
            None => {
                drop(dir);
                self.export_full(name, &path, out)?
            }
        };
        tracing::info!(sandbox = %sb, snapshot = %name, parent = ?parent, bytes, "snapshot exported");
        Ok(bytes)
    }

    /// A full archive of the snapshot at `path`, generated in userspace
    /// (`send_gen`) from a private read-only clone: the walk, unlike the
    /// kernel's send, would not stop a concurrent delete of the snapshot
    /// (thinning, `DELETE`), and a stream cut short must never look like an
    /// export. A snapshot gone before the clone is [`StorageError::NotFound`]
    /// before the first byte; the clone lives in `sandboxes/.export.<unique>/`,
    /// which recovery removes after a crash.
    fn export_full(
        &self,
        name: &SnapshotName,
        path: &Path,
        out: &mut dyn Write,
    ) -> Result<u64, StorageError> {
        let meta = btrfs::subvolume_meta(path).map_err(|e| gone_or(path, name, e))?;
        let dir = self.layout().exporting();
        fs::create_dir(&dir).map_err(|e| StorageError::io("create", &dir, e))?;
        let clone = dir.join(name.as_ref());
        let result = btrfs::snapshot(path, &clone, true, None)
            .map_err(|e| gone_or(path, name, e))
            .and_then(|()| {
                let subvol = send_gen::Subvol {
                    name: name.as_ref().as_bytes().to_vec(),
                    uuid: meta.uuid,
                    ctransid: meta.ctransid,
                };
                write_generated(clone, subvol, out, path)
            });
        self.trash(&dir, "export-done")?;
        result
    }
}

fn open_snapshot(path: &Path, name: &SnapshotName) -> Result<File, StorageError> {
    File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => StorageError::not_found("snapshot", name),
        _ => StorageError::io("open", path, e),
    })
}

/// Sends the subvolume open at `dir` (incrementally against the subvolume
/// with id `parent` when given, named `parent_label` in the archive) and
/// writes it to `out` as an archive.
pub(crate) fn write_archive(
    dir: File,
    parent: Option<u64>,
    parent_label: Option<&str>,
    out: &mut dyn Write,
    path: &Path,
) -> Result<u64, StorageError> {
    let produce = move |tx: OwnedFd| send(&dir, tx, parent);
    piped(produce, "btrfs send", parent_label, out, path)
}

/// `NotFound` for the snapshot when `path` is gone, else `e`.
fn gone_or(path: &Path, name: &SnapshotName, e: StorageError) -> StorageError {
    if path.exists() {
        e
    } else {
        StorageError::not_found("snapshot", name)
    }
}

/// Generates the full send stream of the read-only subvolume `root` in a
/// thread and writes it to `out` as an archive.
fn write_generated(
    root: PathBuf,
    subvol: send_gen::Subvol,
    out: &mut dyn Write,
    path: &Path,
) -> Result<u64, StorageError> {
    let produce = move |tx: OwnedFd| {
        let mut pipe = io::BufWriter::with_capacity(1 << 20, File::from(tx));
        send_gen::write_full_stream(&root, &subvol, &mut pipe)?;
        pipe.flush()
    };
    piped(produce, "generate the send stream of", None, out, path)
}

/// Runs `produce` in a thread writing a send stream into a pipe, and
/// writes what comes out of the pipe to `out` as an archive; `what` names
/// the producer in its error.
fn piped(
    produce: impl FnOnce(OwnedFd) -> io::Result<()> + Send + 'static,
    what: &'static str,
    parent_label: Option<&str>,
    out: &mut dyn Write,
    path: &Path,
) -> Result<u64, StorageError> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| StorageError::io("create a pipe for", path, e.into()))?;
    widen_pipe(&tx);
    let producer = std::thread::spawn(move || produce(tx));
    compress_stream(File::from(rx), out, parent_label, path, || {
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other(format!("{what} panicked"))));
        produced.map_err(|e| StorageError::io(what, path, e))
    })
}

/// A 1 MiB pipe (the default is 64 KiB): fewer wake-ups between the
/// kernel's send and the compressor. Best effort.
fn widen_pipe(fd: &OwnedFd) {
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own; the kernel only reads the int.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
}

/// `BTRFS_IOC_SEND` of the subvolume `dir` into `tx` (closed on return).
fn send(dir: &File, tx: OwnedFd, parent: Option<u64>) -> io::Result<()> {
    let mut clone_sources: [u64; 1] = [parent.unwrap_or(0)];
    let args = SendArgs {
        send_fd: i64::from(tx.as_raw_fd()),
        clone_sources_count: u64::from(parent.is_some()),
        clone_sources: if parent.is_some() {
            clone_sources.as_mut_ptr()
        } else {
            std::ptr::null_mut()
        },
        parent_root: parent.unwrap_or(0),
        flags: 0,
        version: 0,
        reserved: [0; 28],
    };
    // SAFETY: `dir` is an open subvolume directory and `args` a valid,
    // initialised btrfs_ioctl_send_args whose clone-source array (one id,
    // or none) outlives the call; the kernel only reads them. `tx` stays
    // open until the ioctl returns.
    unsafe { btrfs_ioc_send(dir.as_raw_fd(), &args) }?;
    drop(tx);
    Ok(())
}

/// A writer that hashes and counts what passes through.
struct Hashing<'a> {
    out: &'a mut dyn Write,
    hasher: Sha256,
    bytes: u64,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// magic, zstd(stream), trailer — the magic only once the stream has
/// produced its first byte (or ended empty); the trailer only once
/// `producer_done` (joining the producer of the stream) says it ended
/// without error, so a failed stream never gets a valid trailer.
fn compress_stream(
    rx: File,
    out: &mut dyn Write,
    parent_label: Option<&str>,
    path: &Path,
    producer_done: impl FnOnce() -> Result<(), StorageError>,
) -> Result<u64, StorageError> {
    let io_err = |e| StorageError::io("export", path, e);
    let mut stream = BufReader::with_capacity(1 << 20, rx);
    let first = io::BufRead::fill_buf(&mut stream).map_err(io_err)?;
    if first.is_empty() {
        return Err(io_err(io::Error::other("btrfs send produced no data")));
    }
    let mut hashing = Hashing {
        out,
        hasher: Sha256::new(),
        bytes: 0,
    };
    hashing.write_all(ARCHIVE_MAGIC).map_err(io_err)?;
    if let Some(label) = parent_label {
        hashing.write_all(&parent_frame(label)).map_err(io_err)?;
    }
    let mut encoder = zstd::Encoder::new(&mut hashing, ZSTD_LEVEL).map_err(io_err)?;
    let raw = io::copy(&mut stream, &mut encoder).map_err(io_err)?;
    producer_done()?;
    encoder.finish().map_err(io_err)?;
    hashing.write_all(&size_frame(raw)).map_err(io_err)?;
    let digest = hashing.hasher.finalize_reset();
    let mut trailer = TRAILER_TAG.to_vec();
    trailer.extend_from_slice(&digest);
    hashing.out.write_all(&trailer).map_err(io_err)?;
    hashing.out.flush().map_err(io_err)?;
    Ok(hashing.bytes + TRAILER_LEN as u64)
}

/// A zstd skippable frame recording the send stream's length (decoders
/// skip it), so an import can check free space before it receives.
const SIZE_FRAME_MAGIC: [u8; 4] = 0x184D_2A5E_u32.to_le_bytes();
const SIZE_FRAME_LEN: usize = 16;

/// A zstd skippable frame right after the magic of an incremental archive,
/// naming its parent (`<sandbox>/<snapshot>`) for the import's error.
pub(super) const PARENT_FRAME_MAGIC: [u8; 4] = 0x184D_2A51_u32.to_le_bytes();

fn parent_frame(label: &str) -> Vec<u8> {
    let mut frame = PARENT_FRAME_MAGIC.to_vec();
    frame.extend_from_slice(&(label.len() as u32).to_le_bytes());
    frame.extend_from_slice(label.as_bytes());
    frame
}

/// The parent named by a staged archive's parent frame, if it has one.
fn parent_of(archive: &Path) -> Option<String> {
    let mut file = File::open(archive).ok()?;
    let mut head = [0u8; 8];
    file.seek(SeekFrom::Start(ARCHIVE_MAGIC.len() as u64))
        .ok()?;
    file.read_exact(&mut head).ok()?;
    let len = u32::from_le_bytes(head[4..].try_into().ok()?) as usize;
    if head[..4] != PARENT_FRAME_MAGIC || len > 256 {
        return None;
    }
    let mut label = vec![0u8; len];
    file.read_exact(&mut label).ok()?;
    String::from_utf8(label).ok()
}

fn size_frame(raw: u64) -> [u8; SIZE_FRAME_LEN] {
    let mut frame = [0u8; SIZE_FRAME_LEN];
    frame[..4].copy_from_slice(&SIZE_FRAME_MAGIC);
    frame[4..8].copy_from_slice(&8u32.to_le_bytes());
    frame[8..].copy_from_slice(&raw.to_le_bytes());
    frame
}

pub(super) fn bad(reason: impl Into<String>) -> StorageError {
    StorageError::BadArchive {
        reason: reason.into(),
    }
}

pub(super) fn check_trailer(
    written: u64,
    trailer: &[u8],
    hasher: Sha256,
) -> Result<(), StorageError> {
    if written < ARCHIVE_MAGIC.len() as u64 || trailer.len() < TRAILER_LEN {
        return Err(bad("truncated: shorter than the header and trailer"));
    }
    if !trailer.starts_with(TRAILER_TAG) {
        return Err(bad("truncated or corrupt: no checksum trailer at the end"));
    }
    if hasher.finalize()[..] != trailer[TRAILER_TAG.len()..] {
        return Err(bad(
            "checksum mismatch: the archive is corrupt or truncated",
        ));
    }
    Ok(())
}

/// Checks the magic and checksum of the archive file at `path` (one this
/// pool wrote: a cold-history stream); returns the length of its zstd body.
pub(crate) fn verify_file(path: &Path) -> Result<u64, StorageError> {
    let mut file = File::open(path).map_err(|e| StorageError::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    let body = len.saturating_sub(TRAILER_LEN as u64);
    let mut hasher = Sha256::new();
    let mut head = [0u8; 16];
    let mut reader = BufReader::with_capacity(1 << 20, (&mut file).take(body));
    reader
        .read_exact(&mut head)
        .map_err(|_| bad(format!("{}: truncated", path.display())))?;
    if &head != ARCHIVE_MAGIC {
        return Err(bad(format!("{}: bad magic", path.display())));
    }
    hasher.update(head);
    io::copy(&mut reader, &mut HashSink(&mut hasher))
        .map_err(|e| StorageError::io("read", path, e))?;
    let mut trailer = Vec::with_capacity(TRAILER_LEN);
    file.read_to_end(&mut trailer)
        .map_err(|e| StorageError::io("read", path, e))?;
    check_trailer(body, &trailer, hasher)?;
    Ok(body - ARCHIVE_MAGIC.len() as u64)
}

/// `Write` into a hasher.
struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decompresses the staged body into `btrfs receive -e dir`: confined
/// with `--chroot` for archives from outside; without it for the pool's
/// own (checksummed) cold-history streams, whose parents `btrfs receive`
/// must find elsewhere in the pool.
pub(crate) fn btrfs_receive(
    dir: &Path,
    archive: &Path,
    body_len: u64,
    confined: bool,
) -> Result<(), StorageError> {
    let io_err = |e| StorageError::io("btrfs receive into", dir, e);
    let mut file = File::open(archive).map_err(io_err)?;
    file.seek(SeekFrom::Start(ARCHIVE_MAGIC.len() as u64))
        .map_err(io_err)?;
    let mut command = Command::new("btrfs");
    command.arg("receive");
    if confined {
        command.arg("--chroot");
    }
    let mut child = command
        .arg("-e")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err)?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let feeder = std::thread::spawn(move || -> io::Result<u64> {
        let mut decoder = zstd::Decoder::new(file.take(body_len))?;
        io::copy(&mut decoder, &mut stdin)
    });
    let output = child.wait_with_output().map_err(io_err)?;
    let fed = feeder
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("feeder panicked")));
    if let Err(e) = fed {
        if e.kind() != io::ErrorKind::BrokenPipe || output.status.success() {
            return Err(bad(format!("the zstd body does not decompress: {e}")));
        }
    }
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_owned();
        if last.contains("cannot find parent subvolume") {
            let parent = parent_of(archive).unwrap_or_else(|| "(unnamed)".into());
            return Err(bad(format!(
                "the archive is incremental against parent snapshot {parent}, which is \
                 not on this host; export it without ?parent"
            )));
        }
        return Err(bad(format!("not a receivable btrfs send stream: {last}")));
    }
    Ok(())
}
