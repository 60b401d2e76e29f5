//! `LocalStateFs`: the `StateFs` port on the local filesystem. Every call
//! runs std::fs on tokio's blocking pool; nothing is cached or retried.
//!
//! - `fsync` is `File::sync_all` (fsync(2): data and metadata);
//!   `fsync_dir` opens the directory read-only (`O_DIRECTORY`) and syncs it.
//! - `move_aside` is `renameat2(RENAME_NOREPLACE)`: the kernel refuses an
//!   existing target atomically, for files and directories alike. Where
//!   the filesystem does not support the flag (`EINVAL`), a hard link then
//!   an unlink of the source (files only; `link` refuses an existing
//!   target just as atomically).
//! - `lock` is `flock(LOCK_EX)` on the opened lock file, kept open in the
//!   guard: closing it releases the lock, also when the process dies.
//!
//! A failed fsync is returned as it is and never retried: after a
//! writeback error Linux may drop the dirty pages and report the next
//! fsync as a success.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::ports::state_fs::{parent_dir, StateFs, StateFsError, StateLock};

#[derive(Debug, Clone, Default)]
pub struct LocalStateFs;

impl LocalStateFs {
    pub fn new() -> Self {
        LocalStateFs
    }
}

/// Runs `f` on the blocking pool; an I/O error is reported as `op path`.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StateFsError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|source| StateFsError::io(op, path, source)),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Err(StateFsError::io(op, path, io::Error::other(join))),
    }
}

/// Opens `dir` read-only (`O_DIRECTORY`: a file is `ENOTDIR`) and syncs it.
fn sync_dir(dir: &Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)?
        .sync_all()
}

fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    // The missing directories, deepest first.
    let mut missing = Vec::new();
    let mut current = dir.to_path_buf();
    loop {
        match fs::metadata(&current) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                let errno = if current == dir {
                    libc::EEXIST
                } else {
                    libc::ENOTDIR
                };
                return Err(io::Error::from_raw_os_error(errno));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let parent = parent_dir(&current);
                missing.push(current);
                if parent == Path::new(".") || parent.parent().is_none() {
                    // `.` and `/` exist.
                    break;
                }
                current = parent;
            }
            Err(error) => return Err(error),
        }
    }
    for created in missing.iter().rev() {
        match fs::create_dir(created) {
            Ok(()) => {}
            // Made meanwhile by someone else, who may not have synced it.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && created.is_dir() => {}
            Err(error) => return Err(error),
        }
        sync_dir(&parent_dir(created))?;
    }
    Ok(())
}

fn move_aside(from: &Path, to: &Path) -> io::Result<()> {
    match rename_noreplace(from, to) {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            // The filesystem does not know the flag: link(2) never replaces.
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        other => other,
    }
}

#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // The raw syscall: glibc's wrapper needs 2.28, musl's 1.2.
    // SAFETY: both pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(_from: &Path, _to: &Path) -> io::Result<()> {
    // Take the hard-link path.
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

fn flock_exclusive(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: the descriptor belongs to `file`, open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[async_trait]
impl StateFs for LocalStateFs {
    async fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, StateFsError> {
        let owned = path.to_path_buf();
        blocking("read", path, move || match fs::read(&owned) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        })
        .await
    }

    async fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), StateFsError> {
        let (owned, bytes) = (path.to_path_buf(), bytes.to_vec());
        blocking("write", path, move || {
            File::create(&owned)?.write_all(&bytes)
        })
        .await
    }

    async fn append(&self, path: &Path, bytes: &[u8]) -> Result<(), StateFsError> {
        let (owned, bytes) = (path.to_path_buf(), bytes.to_vec());
        blocking("append", path, move || {
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(&owned)?
                .write_all(&bytes)
        })
        .await
    }

    async fn fsync(&self, path: &Path) -> Result<(), StateFsError> {
        let owned = path.to_path_buf();
        blocking("fsync", path, move || File::open(&owned)?.sync_all()).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), StateFsError> {
        let (owned_from, owned_to) = (from.to_path_buf(), to.to_path_buf());
        blocking("rename", from, move || fs::rename(&owned_from, &owned_to)).await
    }

    async fn fsync_dir(&self, dir: &Path) -> Result<(), StateFsError> {
        let owned = dir.to_path_buf();
        blocking("fsync_dir", dir, move || sync_dir(&owned)).await
    }

    async fn move_aside(&self, from: &Path, to: &Path) -> Result<(), StateFsError> {
        let (owned_from, owned_to) = (from.to_path_buf(), to.to_path_buf());
        blocking("move_aside", from, move || {
            move_aside(&owned_from, &owned_to)
        })
        .await
    }

    async fn create_dir_all(&self, dir: &Path) -> Result<(), StateFsError> {
        let owned = dir.to_path_buf();
        blocking("create_dir_all", dir, move || {
            create_dir_all_durable(&owned)
        })
        .await
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, StateFsError> {
        let owned = dir.to_path_buf();
        blocking("list", dir, move || {
            let entries = match fs::read_dir(&owned) {
                Ok(entries) => entries,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(error) => return Err(error),
            };
            let mut names = Vec::new();
            for entry in entries {
                let name = entry?.file_name().into_string().map_err(|name| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("entry name {name:?} is not UTF-8"),
                    )
                })?;
                names.push(name);
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn remove_file(&self, path: &Path) -> Result<(), StateFsError> {
        let owned = path.to_path_buf();
        blocking("remove_file", path, move || match fs::remove_file(&owned) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
    }

    async fn lock(&self, lock_file: &Path) -> Result<StateLock, StateFsError> {
        let owned: PathBuf = lock_file.to_path_buf();
        let file = blocking("lock", lock_file, move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&owned)?;
            flock_exclusive(&file)?;
            Ok(file)
        })
        .await?;
        // Closing the file (dropping the guard) releases the flock.
        Ok(StateLock::new(file))
    }
}
