//! `manifest.json` of a saved memory state, for every runtime: each other
//! file of the directory with its size and SHA-256, written last by the
//! runtime that saved the state. [`verify`] checks it before a restore or
//! fork uses the files, so a corrupt or truncated memory image is refused by
//! name instead of resuming processes on damaged memory; the snapshot
//! checksum hashes the manifest in place of the (large) files it lists.
//!
//! Each file has two digests, taken in one pass: SHA-256, which the
//! snapshot's recorded checksum covers, and XXH3-128, which [`verify_content`]
//! checks: a restore reads the image at memory speed (SHA-256 would cost it
//! about 0.7 s per GiB here, XXH3 under 0.1 s). Neither guards against
//! someone who can rewrite the manifest too; both catch a damaged or
//! replaced file. A manifest without XXH3 (older ones) is checked by SHA-256.
//!
//! A memory image is most of a memory snapshot's cost. [`Follower`] hashes
//! the big files while the checkpoint tool is still writing them, on another
//! core, so the digest costs almost nothing after the dump.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

pub const MANIFEST_FILE: &str = "manifest.json";

/// Read size for hashing: large reads keep the digests from waiting on
/// system calls.
const CHUNK: usize = 1 << 20;

/// How long the [`Follower`] sleeps when the writer has added nothing.
const FOLLOW_IDLE: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("saved state file {path} is damaged: {problem}")]
    Damaged { path: PathBuf, problem: String },
}

/// One file of a saved state as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
}

/// Both digests of one file, fed together.
#[derive(Default, Clone)]
struct Digests {
    sha256: Sha256,
    xxh3: Xxh3,
}

impl Digests {
    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.xxh3.update(bytes);
    }

    fn entry(self, name: String, size: u64) -> Entry {
        Entry {
            name,
            size,
            sha256: hex::encode(self.sha256.finalize()),
            xxh3: Some(format!("{:032x}", self.xxh3.digest128())),
        }
    }
}

/// Record size and SHA-256 of every file in `dir`: those in `known` (from a
/// [`Follower`]) as they are, the others read now.
pub fn write(dir: &Path, known: Vec<Entry>) -> Result<(), ManifestError> {
    let mut known: HashMap<String, Entry> =
        known.into_iter().map(|e| (e.name.clone(), e)).collect();
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("cannot read saved state", dir))? {
        let entry = entry.map_err(io("cannot read saved state", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST_FILE || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let entry = match known.remove(&name) {
            Some(e) => e,
            None => digest(&entry.path(), name)?,
        };
        entries.push(entry);
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let out = dir.join(MANIFEST_FILE);
    let text = serde_json::to_vec_pretty(&entries).expect("a manifest serializes");
    std::fs::write(&out, text).map_err(io("cannot write", &out))
}

/// The manifest of `dir`; `None` when it has none (saved before rewind
/// wrote one).
pub fn read(dir: &Path) -> Result<Option<Vec<Entry>>, ManifestError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("cannot read", &path)(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| ManifestError::Damaged {
            path,
            problem: format!("not a manifest: {e}"),
        })
}

/// [`verify_sizes`], then [`verify_content`].
pub fn verify(dir: &Path) -> Result<(), ManifestError> {
    let Some(entries) = listed(dir)? else {
        return Ok(());
    };
    check_sizes(dir, &entries)?;
    check_content(dir, &entries)
}

/// Every file the manifest lists is present with its size (cheap: catches a
/// missing or truncated image). A saved state without a manifest is accepted
/// as it is.
pub fn verify_sizes(dir: &Path) -> Result<(), ManifestError> {
    match listed(dir)? {
        Some(entries) => check_sizes(dir, &entries),
        None => Ok(()),
    }
}

fn check_sizes(dir: &Path, entries: &[Entry]) -> Result<(), ManifestError> {
    for entry in entries {
        let path = dir.join(&entry.name);
        let size = std::fs::metadata(&path)
            .map_err(|e| damaged(&path, format!("cannot read it: {e}")))?
            .len();
        if size != entry.size {
            let what = if size < entry.size {
                "truncated"
            } else {
                "grown"
            };
            return Err(damaged(
                &path,
                format!("{what}: {size} bytes, {} when saved", entry.size),
            ));
        }
    }
    Ok(())
}

/// Every file the manifest lists has the content it was saved with (its
/// XXH3-128, else its SHA-256). The error names the first damaged file.
pub fn verify_content(dir: &Path) -> Result<(), ManifestError> {
    match listed(dir)? {
        Some(entries) => check_content(dir, &entries),
        None => Ok(()),
    }
}

fn check_content(dir: &Path, entries: &[Entry]) -> Result<(), ManifestError> {
    let mut buf = vec![0u8; CHUNK];
    for entry in entries {
        let path = dir.join(&entry.name);
        let unreadable = |e: std::io::Error| damaged(&path, format!("cannot read it: {e}"));
        let mut file = std::fs::File::open(&path).map_err(unreadable)?;
        let (size, same, which) = match &entry.xxh3 {
            Some(want) => {
                let (size, got) = xxh3_of(&mut file, &mut buf).map_err(unreadable)?;
                (size, got == *want, "XXH3")
            }
            None => {
                let mut h = Sha256::new();
                let size = read_to_end(&mut file, &mut buf, |b| h.update(b)).map_err(unreadable)?;
                (size, hex::encode(h.finalize()) == entry.sha256, "SHA-256")
            }
        };
        if size != entry.size || !same {
            return Err(damaged(
                &path,
                format!("content differs from when it was saved ({which})"),
            ));
        }
    }
    Ok(())
}

fn listed(dir: &Path) -> Result<Option<Vec<Entry>>, ManifestError> {
    let entries = read(dir)?;
    if entries.is_none() {
        tracing::warn!(dir = %dir.display(), "saved memory state has no manifest; not verified");
    }
    Ok(entries)
}

/// Size and hex XXH3-128 of `file`, read through a mapping of its pages
/// (no copy: the check runs while a restore reads the same pages), else
/// through `buf`.
fn xxh3_of(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<(u64, String)> {
    let hex = |h: Xxh3| format!("{:032x}", h.digest128());
    let len = file.metadata()?.len();
    // SAFETY: the mapping is only read, and only for hashing; a concurrent
    // truncation (SIGBUS) is not expected of a saved state, whose files are
    // written once before it is recorded.
    let mapped = (len > CHUNK as u64).then(|| unsafe { memmap2::Mmap::map(&*file) });
    if let Some(Ok(map)) = mapped {
        let _ = map.advise(memmap2::Advice::Sequential);
        let mut h = Xxh3::new();
        h.update(&map);
        return Ok((map.len() as u64, hex(h)));
    }
    let mut h = Xxh3::new();
    let size = read_to_end(file, buf, |b| h.update(b))?;
    Ok((size, hex(h)))
}

/// The manifest entry of one file, named `name`.
fn digest(path: &Path, name: String) -> Result<Entry, ManifestError> {
    let mut file = std::fs::File::open(path).map_err(io("cannot open", path))?;
    let mut digests = Digests::default();
    let mut buf = vec![0u8; CHUNK];
    let size =
        read_to_end(&mut file, &mut buf, |b| digests.update(b)).map_err(io("cannot read", path))?;
    Ok(digests.entry(name, size))
}

/// Feed the content of the file at `path` into `hasher` (large reads).
pub fn hash_file_into(path: &Path, hasher: &mut Sha256) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    read_to_end(&mut std::fs::File::open(path)?, &mut buf, |b| {
        hasher.update(b)
    })
}

/// Feed `file` from its current offset to its end to `sink`, `buf` at a
/// time; returns the bytes read.
fn read_to_end(
    file: &mut std::fs::File,
    buf: &mut [u8],
    mut sink: impl FnMut(&[u8]),
) -> std::io::Result<u64> {
    let mut total = 0;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                sink(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Hashes the files of a directory that another process is writing, as
/// they grow, on its own thread: the files whose name `follow` accepts,
/// which the writer must only append to (CRIU's `pages-*.img`). After the
/// writer has exited, [`Follower::finish`] reads what is left and returns
/// their entries. A file that was replaced or shrank meanwhile is simply
/// left out, and [`write`] then reads it again whole.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Entry>>>,
}

struct Followed {
    file: std::fs::File,
    digests: Digests,
    offset: u64,
}

impl Follower {
    pub fn start(dir: &Path, follow: fn(&str) -> bool) -> Follower {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), dir.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("rewind-digest".into())
            .spawn(move || follow_dir(&dir, follow, &flag))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the digest thread"))
            .ok();
        Follower { stop, thread }
    }

    /// Entries of the followed files, complete: call once the writer is done.
    pub fn finish(mut self) -> Vec<Entry> {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.take();
        thread.and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn follow_dir(dir: &Path, follow: fn(&str) -> bool, stop: &AtomicBool) -> Vec<Entry> {
    let mut files: HashMap<String, Followed> = HashMap::new();
    let mut broken: Vec<String> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Read the flag first: this pass then sees all the writer wrote.
        let last = stop.load(Ordering::Acquire);
        let names = std::fs::read_dir(dir).into_iter().flatten().flatten();
        for name in names.filter_map(|e| e.file_name().into_string().ok()) {
            if !follow(&name) || files.contains_key(&name) || broken.contains(&name) {
                continue;
            }
            if let Ok(file) = std::fs::File::open(dir.join(&name)) {
                let (digests, offset) = (Digests::default(), 0);
                files.insert(
                    name,
                    Followed {
                        file,
                        digests,
                        offset,
                    },
                );
            }
        }
        let mut grew = false;
        for (name, f) in files.iter_mut() {
            let Followed { file, digests, .. } = f;
            match read_to_end(file, &mut buf, |b| digests.update(b)) {
                Ok(n) => {
                    f.offset += n;
                    grew |= n > 0;
                }
                Err(_) => broken.push(name.clone()),
            }
        }
        files.retain(|name, _| !broken.contains(name));
        if last {
            break;
        }
        if !grew {
            std::thread::sleep(FOLLOW_IDLE);
        }
    }
    files
        .into_iter()
        .filter(|(name, f)| still_the_same(&dir.join(name), f))
        .map(|(name, f)| f.digests.entry(name, f.offset))
        .collect()
}

/// The path still names the file that was followed, at the length read.
fn still_the_same(path: &Path, f: &Followed) -> bool {
    let (Ok(now), Ok(held)) = (std::fs::metadata(path), f.file.metadata()) else {
        return false;
    };
    now.ino() == held.ino() && now.dev() == held.dev() && held.len() == f.offset
}

fn damaged(path: &Path, problem: String) -> ManifestError {
    ManifestError::Damaged {
        path: path.to_path_buf(),
        problem,
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError {
    let path = path.to_path_buf();
    move |source| ManifestError::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pages(name: &str) -> bool {
        name.starts_with("pages-")
    }

    #[test]
    fn follower_digests_match_a_full_read_of_files_written_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let follower = Follower::start(dir.path(), pages);
        let mut big = std::fs::File::create(dir.path().join("pages-1.img")).unwrap();
        for i in 0..64u32 {
            big.write_all(&vec![i as u8; 300_001]).unwrap();
            if i % 8 == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
        drop(big);
        std::fs::write(dir.path().join("core-1.img"), b"small").unwrap();

        let followed = follower.finish();
        write(dir.path(), followed.clone()).unwrap();

        assert_eq!(followed.len(), 1);
        let whole = digest(&dir.path().join("pages-1.img"), "pages-1.img".into()).unwrap();
        assert_eq!(followed[0], whole);
        let listed = read(dir.path()).unwrap().unwrap();
        let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["core-1.img", "pages-1.img"]);
        verify(dir.path()).unwrap();
    }

    #[test]
    fn a_followed_file_replaced_meanwhile_is_read_again_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages-1.img");
        std::fs::write(&path, vec![1u8; 10_000]).unwrap();
        let follower = Follower::start(dir.path(), pages);
        std::thread::sleep(Duration::from_millis(20));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, vec![2u8; 5_000]).unwrap();

        let followed = follower.finish();
        write(dir.path(), followed).unwrap();

        verify(dir.path()).unwrap();
        let listed = read(dir.path()).unwrap().unwrap();
        assert_eq!(listed[0].size, 5_000);
    }

    #[test]
    fn a_manifest_without_xxh3_is_verified_by_sha256() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory-ranges"), vec![3u8; 5000]).unwrap();
        write(dir.path(), Vec::new()).unwrap();
        let mut entries = read(dir.path()).unwrap().unwrap();
        entries[0].xxh3 = None;
        let text = serde_json::to_vec(&entries).unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), text).unwrap();
        let intact = verify(dir.path());

        std::fs::write(dir.path().join("memory-ranges"), vec![4u8; 5000]).unwrap();
        let changed = verify(dir.path()).unwrap_err().to_string();

        assert!(intact.is_ok(), "{intact:?}");
        assert!(
            changed.contains("memory-ranges") && changed.contains("SHA-256"),
            "{changed}"
        );
    }

    #[test]
    fn verify_names_a_truncated_file_and_a_changed_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pages-1.img"), vec![7u8; 4096]).unwrap();
        std::fs::write(dir.path().join("core-1.img"), b"core").unwrap();
        write(dir.path(), Vec::new()).unwrap();

        std::fs::write(dir.path().join("pages-1.img"), vec![7u8; 100]).unwrap();
        let truncated = verify_sizes(dir.path()).unwrap_err().to_string();
        std::fs::write(dir.path().join("pages-1.img"), vec![8u8; 4096]).unwrap();
        let sizes_ok = verify_sizes(dir.path());
        let changed = verify_content(dir.path()).unwrap_err().to_string();

        assert!(truncated.contains("pages-1.img") && truncated.contains("truncated: 100 bytes"));
        assert!(sizes_ok.is_ok());
        assert!(
            changed.contains("pages-1.img") && changed.contains("XXH3"),
            "{changed}"
        );
    }
}
