//! Snapshot archives: export_snapshot, receive_archive, discard_received.
//!
//! An archive is self-contained and checked end to end:
//!
//! ```text
//! REWIND-ARCHIVE1\n              16-byte magic
//! <zstd frames>                  a full `btrfs send` stream of the snapshot
//! SHA256\0\0 <32 bytes>          trailer: SHA-256 of everything before it
//! ```
//!
//! The checksum is a trailer so an export streams without buffering; a
//! truncated archive has no valid trailer. Export uses the
//! `BTRFS_IOC_SEND` ioctl (no library wraps it); import uses the `btrfs
//! receive` CLI, confined with `--chroot` (no library receives). Import
//! verifies magic and checksum before it receives anything, and receives
//! into a staging directory `sandboxes/.import.<unique>/` that no listing
//! shows and recovery removes; the sandbox itself is then made by
//! [`Storage::create_workspace`] with [`CreateOptions::import`], whose
//! rename is the one commit point.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::btrfs;
use crate::error::StorageError;
use crate::failpoint;
use crate::names::{SandboxName, SnapshotName};
use crate::storage::Storage;

/// First bytes of every archive.
pub const ARCHIVE_MAGIC: &[u8; 16] = b"REWIND-ARCHIVE1\n";
const TRAILER_TAG: &[u8; 8] = b"SHA256\0\0";
const TRAILER_LEN: usize = 40;
const ARCHIVE_FILE: &str = "archive";
/// zstd level of exports (zstd's own default).
const ZSTD_LEVEL: i32 = 3;

/// A verified archive received into a staging directory; pass it to
/// [`CreateOptions::import`](crate::CreateOptions::import), then to
/// [`Storage::discard_received`].
#[derive(Clone, Debug)]
pub struct Received {
    dir: PathBuf,
    subvolume: PathBuf,
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
        let path = self.layout().snap(sb, name);
        let dir = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StorageError::not_found("snapshot", name),
            _ => StorageError::io("open", &path, e),
        })?;
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| StorageError::io("create a pipe for", &path, e.into()))?;
        let sender = std::thread::spawn(move || send(&dir, tx));
        let written = compress_stream(File::from(rx), out, &path);
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("send thread panicked")));
        sent.map_err(|e| StorageError::io("btrfs send", &path, e))?;
        let bytes = written?;
        tracing::info!(sandbox = %sb, snapshot = %name, bytes, "snapshot exported");
        Ok(bytes)
    }

    /// Verifies an archive (magic, checksum) and receives it into a staging
    /// directory. A bad archive is [`StorageError::BadArchive`] and leaves
    /// nothing behind.
    pub fn receive_archive(&self, input: &mut dyn Read) -> Result<Received, StorageError> {
        let dir = self.layout().importing();
        fs::create_dir(&dir).map_err(|e| StorageError::io("create", &dir, e))?;
        failpoint::hit("import:after_mkdir");
        match receive_into(&dir, input) {
            Ok(received) => Ok(received),
            Err(e) => {
                self.trash(&dir, "import-failed")?;
                Err(e)
            }
        }
    }

    /// Removes a received archive's staging directory.
    pub fn discard_received(&self, received: Received) -> Result<(), StorageError> {
        failpoint::hit("import:before_discard");
        self.trash(&received.dir, "import-done")
    }
}

/// `BTRFS_IOC_SEND` of the subvolume `dir` into `tx` (closed on return).
fn send(dir: &File, tx: OwnedFd) -> io::Result<()> {
    let args = SendArgs {
        send_fd: i64::from(tx.as_raw_fd()),
        clone_sources_count: 0,
        clone_sources: std::ptr::null_mut(),
        parent_root: 0,
        flags: 0,
        version: 0,
        reserved: [0; 28],
    };
    // SAFETY: `dir` is an open subvolume directory and `args` a valid,
    // initialised btrfs_ioctl_send_args that outlives the call; the kernel
    // only reads it. `tx` stays open until the ioctl returns.
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
/// produced its first byte (or ended empty).
fn compress_stream(rx: File, out: &mut dyn Write, path: &Path) -> Result<u64, StorageError> {
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
    let mut encoder = zstd::Encoder::new(&mut hashing, ZSTD_LEVEL).map_err(io_err)?;
    io::copy(&mut stream, &mut encoder).map_err(io_err)?;
    encoder.finish().map_err(io_err)?;
    let digest = hashing.hasher.finalize_reset();
    let mut trailer = TRAILER_TAG.to_vec();
    trailer.extend_from_slice(&digest);
    hashing.out.write_all(&trailer).map_err(io_err)?;
    hashing.out.flush().map_err(io_err)?;
    Ok(hashing.bytes + TRAILER_LEN as u64)
}

fn bad(reason: impl Into<String>) -> StorageError {
    StorageError::BadArchive {
        reason: reason.into(),
    }
}

/// Copy + verify, then `btrfs receive`, then find the one subvolume.
fn receive_into(dir: &Path, input: &mut dyn Read) -> Result<Received, StorageError> {
    let archive = dir.join(ARCHIVE_FILE);
    let body_len = stage_verified(&archive, input)?;
    failpoint::hit("import:after_verify");
    btrfs_receive(dir, &archive, body_len)?;
    fs::remove_file(&archive).map_err(|e| StorageError::io("remove", &archive, e))?;
    let subvolume = only_subvolume(dir)?;
    failpoint::hit("import:after_receive");
    Ok(Received {
        dir: dir.to_owned(),
        subvolume,
    })
}

/// Copies `input` to `path` without its trailer, checking magic and
/// checksum; returns the length of the zstd body.
fn stage_verified(path: &Path, input: &mut dyn Read) -> Result<u64, StorageError> {
    let io_err = |e| StorageError::io("write", path, e);
    let mut file = File::create(path).map_err(io_err)?;
    let (mut hasher, mut held, mut written) = (Sha256::new(), Vec::new(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(format!("reading the archive failed: {e}"))),
        };
        held.extend_from_slice(&buf[..n]);
        let spill = held.len().saturating_sub(TRAILER_LEN);
        if written == 0 && spill > 0 && !held.starts_with(ARCHIVE_MAGIC) {
            return Err(bad("not a rewind snapshot archive (bad magic)"));
        }
        hasher.update(&held[..spill]);
        file.write_all(&held[..spill]).map_err(io_err)?;
        written += spill as u64;
        held.drain(..spill);
    }
    check_trailer(written, &held, hasher)?;
    file.sync_all().map_err(io_err)?;
    Ok(written - ARCHIVE_MAGIC.len() as u64)
}

fn check_trailer(written: u64, trailer: &[u8], hasher: Sha256) -> Result<(), StorageError> {
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

/// Decompresses the staged body into `btrfs receive --chroot -e dir`.
fn btrfs_receive(dir: &Path, archive: &Path, body_len: u64) -> Result<(), StorageError> {
    let io_err = |e| StorageError::io("btrfs receive into", dir, e);
    let mut file = File::open(archive).map_err(io_err)?;
    file.seek(SeekFrom::Start(ARCHIVE_MAGIC.len() as u64))
        .map_err(io_err)?;
    let mut child = Command::new("btrfs")
        .args(["receive", "--chroot", "-e"])
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
        return Err(bad(format!("not a receivable btrfs send stream: {last}")));
    }
    Ok(())
}

/// The single read-only subvolume a full send stream creates.
fn only_subvolume(dir: &Path) -> Result<PathBuf, StorageError> {
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| StorageError::io("read", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    match entries.as_slice() {
        [one] if btrfs::is_subvolume(one) => Ok(one.clone()),
        _ => Err(bad(format!(
            "the stream must hold exactly one full snapshot, it made {} entries",
            entries.len()
        ))),
    }
}
