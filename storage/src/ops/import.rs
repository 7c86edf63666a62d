//! Import of snapshot archives: receive_archive, discard_received. The
//! archive format is in `ops/archive.rs`.
//!
//! Import streams: one pass over the bytes as they arrive checks the
//! magic, hashes, decompresses and feeds `btrfs receive --chroot -e` (the
//! CLI: no library receives) into a quarantine, a staging directory
//! `sandboxes/.import.<unique>/` that no listing shows and recovery
//! removes. Only when the input has ended and the trailer's checksum
//! verifies does the received subvolume count; on a bad, truncated or
//! foreign archive the staging dir (with whatever was received) is
//! deleted, and the error names the checksum or trailer problem before any
//! receive error, as when verification came first. The sandbox itself is
//! then made by [`Storage::create_workspace`] with
//! [`CreateOptions::import`](crate::CreateOptions::import), whose rename is the one commit point.
//!
//! Why receiving before verifying is as safe as verifying first: the
//! checksum is integrity, not authentication: anyone can compute it, so a
//! hostile archive passes it either way, and what keeps the host safe is
//! the receive itself, confined by `--chroot` to the staging dir, run as for
//! any verified archive. Verification only tells a damaged archive from a
//! whole one, and a damaged one is still never used: its quarantine is
//! deleted, no sandbox is created from it (the same outcome as refusing it
//! up front, minus the time to stage a copy). The receive dies with the
//! importer (`PR_SET_PDEATHSIG`), so after a kill -9 recovery removes a
//! quarantine nothing writes to any more.
//!
//! Free space: with a declared length (HTTP Content-Length) the pool must
//! have that much free first; that is the compressed size, a lower bound,
//! and a receive that runs out of space anyway is [`StorageError::NoSpace`]
//! too, not a bad archive.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::archive::{
    bad, check_trailer, Received, ARCHIVE_MAGIC, PARENT_FRAME_MAGIC, TRAILER_LEN,
};
use crate::btrfs;
use crate::error::StorageError;
use crate::failpoint;
use crate::storage::Storage;

impl Storage {
    /// Verifies an archive (magic, checksum) and receives it into a staging
    /// directory. A bad archive is [`StorageError::BadArchive`] and leaves
    /// nothing behind.
    pub fn receive_archive(&self, input: &mut dyn Read) -> Result<Received, StorageError> {
        self.receive_archive_sized(input, None)
    }

    /// [`Storage::receive_archive`] of an archive announced as `declared`
    /// bytes long (an HTTP Content-Length): the pool must have that much
    /// free before anything is received ([`StorageError::NoSpace`]). It is
    /// the compressed size, so a lower bound; a receive that still runs
    /// out of space is `NoSpace` too.
    pub fn receive_archive_sized(
        &self,
        input: &mut dyn Read,
        declared: Option<u64>,
    ) -> Result<Received, StorageError> {
        let dir = self.layout().importing();
        fs::create_dir(&dir).map_err(|e| StorageError::io("create", &dir, e))?;
        failpoint::hit("import:after_mkdir");
        match receive_into(&dir, input, declared) {
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

/// Refuses to receive `needed` bytes into the pool holding `dir` when the
/// filesystem reports less free space (Btrfs' estimate: data only; the
/// metadata a receive also writes is not counted).
fn check_space(dir: &Path, needed: u64) -> Result<(), StorageError> {
    let available = free_space(dir)?;
    if needed > available {
        return Err(StorageError::NoSpace { needed, available });
    }
    Ok(())
}

/// Free bytes of the filesystem holding `dir`.
fn free_space(dir: &Path) -> Result<u64, StorageError> {
    let stat =
        nix::sys::statvfs::statvfs(dir).map_err(|e| StorageError::io("statvfs", dir, e.into()))?;
    Ok(stat.blocks_available() * stat.fragment_size())
}

/// Receives while the bytes arrive, verifies, then finds the one
/// subvolume (see the module doc for why this order is sound).
fn receive_into(
    dir: &Path,
    input: &mut dyn Read,
    declared: Option<u64>,
) -> Result<Received, StorageError> {
    if let Some(len) = declared {
        check_space(dir, len)?;
    }
    let mut body = Verifying::start(input)?;
    let received = stream_to_receive(dir, &mut body);
    body.drain()?;
    let parent = body.parent();
    check_trailer(body.passed, &body.held, body.hasher)?;
    match received {
        Err(Refused::Parent) => {
            let parent = parent.unwrap_or_else(|| "(unnamed)".into());
            return Err(bad(format!(
                "the archive is incremental against parent snapshot {parent}, which is \
                 not on this host; export it without ?parent"
            )));
        }
        Err(Refused::Full(raw)) => {
            let available = free_space(dir)?;
            let needed = declared.unwrap_or(0).max(raw);
            return Err(StorageError::NoSpace { needed, available });
        }
        Err(Refused::Other(e)) => return Err(e),
        Ok(()) => {}
    }
    failpoint::hit("import:after_verify");
    let subvolume = only_subvolume(dir)?;
    failpoint::hit("import:after_receive");
    Ok(Received {
        dir: dir.to_owned(),
        subvolume,
    })
}

/// The archive's bytes as they arrive, minus the magic (checked first) and
/// the last [`TRAILER_LEN`] bytes (held back: the trailer, once the input
/// ends); everything passed on is hashed.
struct Verifying<'a> {
    input: &'a mut dyn Read,
    hasher: Sha256,
    held: Vec<u8>,
    /// Bytes hashed and passed on (the magic included).
    passed: u64,
    /// The first bytes after the magic: a parent frame, if any.
    head: Vec<u8>,
    eof: bool,
}

impl<'a> Verifying<'a> {
    /// Reads and checks the magic.
    fn start(input: &'a mut dyn Read) -> Result<Self, StorageError> {
        let mut v = Verifying {
            input,
            hasher: Sha256::new(),
            held: Vec::with_capacity(2 << 20),
            passed: 0,
            head: Vec::new(),
            eof: false,
        };
        while !v.eof && v.held.len() < ARCHIVE_MAGIC.len() + TRAILER_LEN {
            v.fill().map_err(reading_failed)?;
        }
        if v.held.len() >= ARCHIVE_MAGIC.len() && !v.held.starts_with(ARCHIVE_MAGIC) {
            return Err(bad("not a rewind snapshot archive (bad magic)"));
        }
        if v.held.len() < ARCHIVE_MAGIC.len() + TRAILER_LEN {
            return Err(bad("truncated: shorter than the header and trailer"));
        }
        v.hasher.update(ARCHIVE_MAGIC);
        v.held.drain(..ARCHIVE_MAGIC.len());
        v.passed = ARCHIVE_MAGIC.len() as u64;
        Ok(v)
    }

    fn fill(&mut self) -> io::Result<()> {
        let len = self.held.len();
        self.held.resize(len + (1 << 20), 0);
        let n = loop {
            match self.input.read(&mut self.held[len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.held.truncate(len + *n.as_ref().unwrap_or(&0));
        self.eof = n? == 0;
        Ok(())
    }

    /// Reads (and hashes) whatever the receive did not consume.
    fn drain(&mut self) -> Result<(), StorageError> {
        io::copy(self, &mut io::sink()).map_err(reading_failed)?;
        Ok(())
    }

    /// The parent named by the archive's parent frame, if it has one.
    fn parent(&self) -> Option<String> {
        let head = &self.head;
        if head.len() < 8 || head[..4] != PARENT_FRAME_MAGIC {
            return None;
        }
        let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
        let label = head.get(8..8 + len)?;
        String::from_utf8(label.to_vec()).ok()
    }
}

impl Read for Verifying<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.held.len() <= TRAILER_LEN && !self.eof {
            self.fill()?;
        }
        let n = self.held.len().saturating_sub(TRAILER_LEN).min(buf.len());
        buf[..n].copy_from_slice(&self.held[..n]);
        self.hasher.update(&buf[..n]);
        if self.head.len() < 264 {
            let more = (264 - self.head.len()).min(n);
            self.head.extend_from_slice(&buf[..more]);
        }
        self.held.drain(..n);
        self.passed += n as u64;
        Ok(n)
    }
}

fn reading_failed(e: io::Error) -> StorageError {
    bad(format!("reading the archive failed: {e}"))
}

/// Why a streamed receive failed.
enum Refused {
    /// The stream is incremental against a parent this host lacks.
    Parent,
    /// The pool ran out of space after this many stream bytes.
    Full(u64),
    Other(StorageError),
}

/// Decompresses `body` into `btrfs receive --chroot -e dir` as it arrives.
fn stream_to_receive(dir: &Path, body: &mut Verifying<'_>) -> Result<(), Refused> {
    let io_err = |e| Refused::Other(StorageError::io("btrfs receive into", dir, e));
    let mut command = Command::new("btrfs");
    command
        .args(["receive", "--chroot", "-e"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes one async-signal-safe syscall.
    unsafe {
        command.pre_exec(|| {
            // The receive dies with its importer (kill -9 included), so
            // recovery never races a receive still writing.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = command.spawn().map_err(io_err)?;
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdin = child.stdin.take().expect("piped stdin");
    let fed = feed(body, &mut stdin);
    drop(stdin);
    let status = child.wait().map_err(io_err)?;
    let stderr = errors.join().unwrap_or_default();
    let (raw, fed) = fed;
    if status.success() {
        return fed
            .map_err(|e| Refused::Other(bad(format!("the zstd body does not decompress: {e}"))));
    }
    let last = stderr.lines().last().unwrap_or("").trim().to_owned();
    if last.contains("cannot find parent subvolume") {
        return Err(Refused::Parent);
    }
    if stderr.contains("No space left on device") {
        return Err(Refused::Full(raw));
    }
    Err(Refused::Other(bad(format!(
        "not a receivable btrfs send stream: {last}"
    ))))
}

/// Decompresses `body` into `stdin`; the stream bytes written, and how it
/// ended.
fn feed(body: &mut Verifying<'_>, stdin: &mut dyn Write) -> (u64, io::Result<()>) {
    let mut decoder = match zstd::Decoder::new(body) {
        Ok(d) => d,
        Err(e) => return (0, Err(e)),
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut raw = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return (raw, Ok(())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (raw, Err(e)),
        };
        if let Err(e) = stdin.write_all(&buf[..n]) {
            return (raw, Err(e));
        }
        raw += n as u64;
        if raw >= 1 << 20 {
            failpoint::hit("import:while_receiving");
        }
    }
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
