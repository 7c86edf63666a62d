//! A full (non-incremental) `btrfs send` stream generated in userspace, by
//! walking a read-only snapshot the way `tar c` does. The unchanged
//! `btrfs receive` applies it.
//!
//! Why not the kernel's `BTRFS_IOC_SEND`: for a full stream it walks the
//! same tree but pays per inode for what only an incremental send needs
//! (back references, orphan names `o<ino>-<gen>-0` and a rename per new
//! inode), and was slower than `tar c` on its own (docs/benchmarks.md,
//! "Snapshot export and import"). Incremental exports (`?parent=`) stay on
//! the kernel, which compares the two trees without reading what they share.
//!
//! Format (v1, `fs/btrfs/send.h`): `btrfs-stream\0`, le32 version 1, then
//! commands `le32 len, le16 cmd, le32 crc` + TLV attributes (`le16 type,
//! le16 len, value`); the crc is CRC-32C with seed 0 and no final
//! inversion over the header (crc zeroed) and attributes.
//!
//! What is emitted, in order: `subvol` (name, the snapshot's uuid and
//! ctransid, as the kernel does), the root's xattrs/owner/mode; then
//! depth-first, for each entry at its FINAL path (parents always exist
//! first, so no orphan names and no renames): create (`mkdir`, `mkfile`,
//! `symlink`, `mknod`, `mkfifo`, `mksock`) or `link` to the first path of
//! an inode already sent, xattrs, the data as 48 KiB `write`s of the
//! ranges `SEEK_DATA` finds (holes stay holes) and a `truncate` to the
//! size when a hole ends the file, `chown`, `chmod` (not for symlinks), `security.capability` again
//! (chown clears it), `utimes`. A directory's `utimes` comes after all its
//! entries (creating them changed its mtime), the root's last, then `end`.
//! Like the kernel, no `chmod`/`chown` reaches the receiver before the data.
//!
//! The walk reads only through the snapshot; the caller makes sure it
//! cannot be deleted meanwhile (see `ops/archive.rs`).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::send_proto::{attr, cmd, HEADER, MAGIC};

const VERSION: u32 = 1;
/// Data per `write` command: the kernel's `BTRFS_SEND_READ_SIZE`; a v1
/// command must fit in 64 KiB.
const WRITE_CHUNK: usize = 48 * 1024;
/// Files of a directory opened (and their reads queued) ahead of the one
/// being sent, and how much of each is queued.
const READ_AHEAD: usize = 64;
const READ_AHEAD_BYTES: i64 = 1 << 20;

const CAPABILITY: &[u8] = b"security.capability";

/// The identity the stream gives the received subvolume.
pub(crate) struct Subvol {
    pub name: Vec<u8>,
    pub uuid: [u8; 16],
    pub ctransid: u64,
}

/// Writes the full send stream of the read-only subvolume at `root`.
pub(crate) fn write_full_stream(
    root: &Path,
    subvol: &Subvol,
    out: &mut dyn Write,
) -> io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    let mut walk = Walk {
        em: Emitter {
            out,
            buf: Vec::with_capacity(WRITE_CHUNK + 4096),
        },
        links: HashMap::new(),
        data: vec![0u8; WRITE_CHUNK],
    };
    walk.em.begin(cmd::SUBVOL);
    walk.em.attr(attr::PATH, &subvol.name);
    walk.em.attr(attr::UUID, &subvol.uuid);
    walk.em.u64(attr::CTRANSID, subvol.ctransid);
    walk.em.end()?;
    let meta = fs::symlink_metadata(root)?;
    walk.attributes(root, b"", &meta)?;
    walk.dir(root, &mut Vec::new())?;
    walk.em.utimes(b"", &meta)?;
    walk.em.begin(cmd::END);
    walk.em.end()
}

/// Builds one command at a time in `buf`, then writes it with its crc.
struct Emitter<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
}

impl Emitter<'_> {
    fn begin(&mut self, cmd: u16) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&cmd.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        self.buf.extend_from_slice(&kind.to_le_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    fn u64(&mut self, kind: u16, value: u64) {
        self.attr(kind, &value.to_le_bytes());
    }

    fn time(&mut self, kind: u16, sec: i64, nsec: i64) {
        let mut v = [0u8; 12];
        v[..8].copy_from_slice(&sec.to_le_bytes());
        v[8..].copy_from_slice(&(nsec as u32).to_le_bytes());
        self.attr(kind, &v);
    }

    fn end(&mut self) -> io::Result<()> {
        let len = (self.buf.len() - HEADER) as u32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        let crc = !crc32c::crc32c_append(!0, &self.buf);
        self.buf[6..10].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.buf)
    }

    /// A command whose only attribute is the path.
    fn with_path(&mut self, cmd: u16, path: &[u8]) {
        self.begin(cmd);
        self.attr(attr::PATH, path);
    }

    fn utimes(&mut self, path: &[u8], meta: &Metadata) -> io::Result<()> {
        self.with_path(cmd::UTIMES, path);
        self.time(attr::ATIME, meta.atime(), meta.atime_nsec());
        self.time(attr::MTIME, meta.mtime(), meta.mtime_nsec());
        self.time(attr::CTIME, meta.ctime(), meta.ctime_nsec());
        self.end()
    }
}

struct Walk<'a> {
    em: Emitter<'a>,
    /// (dev, ino) of a multiply linked inode → the path it was sent at.
    links: HashMap<(u64, u64), Vec<u8>>,
    data: Vec<u8>,
}

impl Walk<'_> {
    /// Sends the entries of directory `abs` (at stream path `rel`). The
    /// files [`READ_AHEAD`] entries ahead are already open with their reads
    /// queued (`POSIX_FADV_WILLNEED`), so a cold tree is read with many
    /// requests in flight instead of one file's latency after another.
    fn dir(&mut self, abs: &Path, rel: &mut Vec<u8>) -> io::Result<()> {
        let entries = fs::read_dir(abs)?
            .map(|e| e.and_then(|e| Ok((e.path(), e.metadata()?))))
            .collect::<io::Result<Vec<_>>>()?;
        let mut opened: Vec<Option<File>> = Vec::with_capacity(entries.len());
        for (i, (path, meta)) in entries.iter().enumerate() {
            while opened.len() < entries.len().min(i + READ_AHEAD) {
                let (path, meta) = &entries[opened.len()];
                opened.push(if meta.is_file() {
                    Some(prefetch(path)?)
                } else {
                    None
                });
            }
            let len = rel.len();
            if len > 0 {
                rel.push(b'/');
            }
            rel.extend_from_slice(path.file_name().unwrap_or_default().as_bytes());
            self.entry(path, rel, meta, opened[i].take())?;
            rel.truncate(len);
        }
        Ok(())
    }

    fn entry(
        &mut self,
        abs: &Path,
        rel: &mut Vec<u8>,
        meta: &Metadata,
        file: Option<File>,
    ) -> io::Result<()> {
        let ft = meta.file_type();
        if ft.is_file() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                self.em.with_path(cmd::LINK, rel);
                self.em.attr(attr::PATH_LINK, first);
                return self.em.end();
            }
            self.links.insert((meta.dev(), meta.ino()), rel.clone());
        }
        self.create(abs, rel, meta)?;
        if ft.is_dir() {
            self.attributes(abs, rel, meta)?;
            self.dir(abs, rel)?;
        } else {
            if let Some(file) = file {
                self.data(&file, rel, meta)?;
            }
            self.attributes(abs, rel, meta)?;
        }
        self.em.utimes(rel, meta)
    }

    fn create(&mut self, abs: &Path, rel: &[u8], meta: &Metadata) -> io::Result<()> {
        let ft = meta.file_type();
        let command = if ft.is_dir() {
            cmd::MKDIR
        } else if ft.is_file() {
            cmd::MKFILE
        } else if ft.is_symlink() {
            cmd::SYMLINK
        } else if ft.is_fifo() {
            cmd::MKFIFO
        } else if ft.is_socket() {
            cmd::MKSOCK
        } else {
            cmd::MKNOD
        };
        self.em.with_path(command, rel);
        self.em.u64(attr::INO, meta.ino());
        if ft.is_symlink() {
            let target = fs::read_link(abs)?;
            self.em.attr(attr::PATH_LINK, target.as_os_str().as_bytes());
        } else if !ft.is_dir() && !ft.is_file() {
            self.em.u64(attr::RDEV, meta.rdev());
            self.em.u64(attr::MODE, u64::from(meta.mode()));
        }
        self.em.end()
    }

    /// xattrs, owner, mode, and the capability chown cleared.
    fn attributes(&mut self, abs: &Path, rel: &[u8], meta: &Metadata) -> io::Result<()> {
        let xattrs = xattrs(abs)?;
        for (name, value) in xattrs.iter().filter(|(n, _)| n != CAPABILITY) {
            self.set_xattr(rel, name, value)?;
        }
        self.em.with_path(cmd::CHOWN, rel);
        self.em.u64(attr::UID, u64::from(meta.uid()));
        self.em.u64(attr::GID, u64::from(meta.gid()));
        self.em.end()?;
        if !meta.file_type().is_symlink() {
            self.em.with_path(cmd::CHMOD, rel);
            self.em.u64(attr::MODE, u64::from(meta.mode() & 0o7777));
            self.em.end()?;
        }
        for (name, value) in xattrs.iter().filter(|(n, _)| n == CAPABILITY) {
            self.set_xattr(rel, name, value)?;
        }
        Ok(())
    }

    fn set_xattr(&mut self, rel: &[u8], name: &[u8], value: &[u8]) -> io::Result<()> {
        self.em.with_path(cmd::SET_XATTR, rel);
        self.em.attr(attr::XATTR_NAME, name);
        self.em.attr(attr::XATTR_DATA, value);
        self.em.end()
    }

    /// The data ranges of the file (holes skipped), then its size.
    fn data(&mut self, file: &File, rel: &[u8], meta: &Metadata) -> io::Result<()> {
        let size = meta.size();
        let (mut pos, mut written) = (0, 0);
        while pos < size {
            let Some((start, end)) = next_data(file, pos)? else {
                break;
            };
            written = end.min(size);
            self.write_range(file, rel, start, written)?;
            pos = end;
        }
        if written == size {
            // The writes made it this long already (a trailing hole needs
            // the truncate): one syscall less per file for the receive.
            return Ok(());
        }
        self.em.with_path(cmd::TRUNCATE, rel);
        self.em.u64(attr::SIZE, size);
        self.em.end()
    }

    fn write_range(&mut self, file: &File, rel: &[u8], start: u64, end: u64) -> io::Result<()> {
        let mut off = start;
        while off < end {
            let want = ((end - off) as usize).min(WRITE_CHUNK);
            let n = file.read_at(&mut self.data[..want], off)?;
            if n == 0 {
                return Err(io::Error::other(format!(
                    "{}: file shrank while sent (the snapshot is read-only)",
                    String::from_utf8_lossy(rel)
                )));
            }
            self.em.with_path(cmd::WRITE, rel);
            self.em.u64(attr::FILE_OFFSET, off);
            self.em.attr(attr::DATA, &self.data[..n]);
            self.em.end()?;
            off += n as u64;
        }
        Ok(())
    }
}

/// Opens a file to send and queues the reads of its first
/// [`READ_AHEAD_BYTES`] without waiting for them.
fn prefetch(path: &Path) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
        .open(path)?;
    // SAFETY: fadvise on an fd we hold open; no memory is passed. Advice
    // only: its result does not matter.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            0,
            READ_AHEAD_BYTES,
            libc::POSIX_FADV_WILLNEED,
        )
    };
    Ok(file)
}

/// The data range at or after `pos`: `(SEEK_DATA, SEEK_HOLE)`, or `None`
/// when only a hole follows.
fn next_data(file: &File, pos: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on an fd we hold open; no memory is passed.
    let start = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
    if start < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some((start as u64, end as u64)))
}

/// All extended attributes of `path` (not following symlinks), by name.
fn xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let names = read_sized(|buf, len| {
        // SAFETY: `c` is a NUL-terminated path; `buf` is writable for `len` bytes (or null with len 0).
        unsafe { libc::llistxattr(c.as_ptr(), buf, len) }
    })?;
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)?;
        let value = read_sized(|buf, len| {
            // SAFETY: NUL-terminated path and name; `buf` writable for `len` bytes (or null with len 0).
            unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), buf.cast(), len) }
        })?;
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

/// Calls a `*xattr` function with a growing buffer until the value fits.
fn read_sized(mut call: impl FnMut(*mut libc::c_char, usize) -> isize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = call(buf.as_mut_ptr().cast(), buf.len());
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
        let needed = call(std::ptr::null_mut(), 0);
        if needed < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.resize(needed as usize + 1, 0);
    }
}
