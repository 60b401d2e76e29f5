//! The file operations of a state-store batch, one call per step, so that
//! a fake can stop the "process" at any step boundary and model what
//! survives a crash. The real adapter is `adapters::state_fs::LocalStateFs`
//! (std::fs on a blocking thread); the fake is `fakes::FakeStateFs`, an
//! in-memory filesystem with a durability model. Both pass
//! `tests/state_fs_contract.rs`.
//!
//! Durability is the caller's business and is spelled out step by step:
//! `write` and `append` do not fsync; `rename` is durable only after an
//! fsync of the directory (both directories when it moves between two);
//! only `create_dir_all` fsyncs on its own. [`write_durable`] is the one
//! composed recipe: temp file, write, fsync, rename, fsync of the directory.
//!
//! A failed fsync is never retried, here or by a caller: after a writeback
//! error Linux may drop the dirty pages and report the *next* fsync as a
//! success, so a retry that succeeds proves nothing. Treat the batch as
//! failed and start over from what is known to be durable.

use std::any::Any;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum StateFsError {
    /// The operation failed; `source` is the OS error (its `kind()` is what
    /// callers match on: `NotFound`, `AlreadyExists`, …).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Only from the fake: an injected crash stopped the process before
    /// this call; nothing of it happened, and every later call fails so.
    #[error("the process was stopped (injected crash) before {op} {path}")]
    Crashed { op: &'static str, path: PathBuf },
}

impl StateFsError {
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        StateFsError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether this is the fake's injected crash (the process is dead).
    pub fn is_crash(&self) -> bool {
        matches!(self, StateFsError::Crashed { .. })
    }

    /// The OS error's kind, for an `Io` error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            StateFsError::Io { source, .. } => Some(source.kind()),
            StateFsError::Crashed { .. } => None,
        }
    }
}

/// Proof of holding a state lock: while it lives, its holder is the only
/// writer (across processes for the real adapter). Released on drop.
pub struct StateLock(
    // Never read: held for what its drop releases.
    #[allow(dead_code)] Box<dyn Any + Send + Sync>,
);

impl StateLock {
    /// Wraps whatever releases the lock when dropped (an open file holding
    /// an `flock`, a mutex guard).
    pub fn new(guard: impl Any + Send + Sync) -> Self {
        StateLock(Box::new(guard))
    }
}

impl std::fmt::Debug for StateLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateLock")
    }
}

#[async_trait]
pub trait StateFs: Send + Sync + 'static {
    /// The file's content; `None` when it does not exist.
    async fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, StateFsError>;

    /// Creates the file or truncates it, and writes `bytes`. No fsync. The
    /// parent directory must exist (`NotFound` otherwise).
    async fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), StateFsError>;

    /// Appends `bytes`, creating the file if absent. No fsync. The parent
    /// directory must exist (`NotFound` otherwise).
    async fn append(&self, path: &Path, bytes: &[u8]) -> Result<(), StateFsError>;

    /// Makes the file's data and metadata durable (not its directory
    /// entry: see [`StateFs::fsync_dir`]). Never retry a failed fsync.
    async fn fsync(&self, path: &Path) -> Result<(), StateFsError>;

    /// Renames `from` to `to`, replacing `to` atomically if it exists.
    /// `to`'s parent must exist (`NotFound` otherwise); a missing `from` is
    /// `NotFound`. Durable only after `fsync_dir` of the directories.
    async fn rename(&self, from: &Path, to: &Path) -> Result<(), StateFsError>;

    /// Makes the directory's entries (creations, renames, removals)
    /// durable. Never retry a failed fsync.
    async fn fsync_dir(&self, dir: &Path) -> Result<(), StateFsError>;

    /// A rename that never replaces: if `to` exists the call fails with
    /// `AlreadyExists` and changes nothing. Works for directories. The
    /// caller fsyncs the directories.
    async fn move_aside(&self, from: &Path, to: &Path) -> Result<(), StateFsError>;

    /// Creates `dir` and its missing parents, durably: the parent of every
    /// directory it creates is fsynced. Succeeds if `dir` already exists.
    async fn create_dir_all(&self, dir: &Path) -> Result<(), StateFsError>;

    /// The names of `dir`'s entries, sorted; empty when `dir` is absent.
    async fn list(&self, dir: &Path) -> Result<Vec<String>, StateFsError>;

    /// Removes a file; an absent one is fine. For cleaning up temp files
    /// (not durable until the directory is fsynced).
    async fn remove_file(&self, path: &Path) -> Result<(), StateFsError>;

    /// Waits for, then takes, the exclusive lock of `lock_file` (created,
    /// empty, if absent; its parent must exist).
    async fn lock(&self, lock_file: &Path) -> Result<StateLock, StateFsError>;
}

/// The directory holding `path` (`.` for a bare relative file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Replaces `path`'s content durably and atomically: a temp file beside it
/// (`.<file name>.tmp-<unique>`) is written, fsynced, renamed over `path`,
/// then the directory is fsynced. A reader sees the old content or the new,
/// never a mix; after `Ok` the new content survives a power loss.
///
/// On an error before the rename the temp file is removed (best effort);
/// on any error nothing is retried — in particular not a failed fsync.
pub async fn write_durable(
    fs: &dyn StateFs,
    path: &Path,
    bytes: &[u8],
) -> Result<(), StateFsError> {
    let Some(name) = path.file_name() else {
        return Err(StateFsError::io(
            "write_durable",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        ));
    };
    let dir = parent_dir(path);
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", uuid::Uuid::now_v7().simple()));
    let temp = dir.join(temp_name);

    let replaced = async {
        fs.write(&temp, bytes).await?;
        fs.fsync(&temp).await?;
        fs.rename(&temp, path).await
    }
    .await;
    if let Err(error) = replaced {
        if !error.is_crash() {
            // Best effort: the error that matters is the first one.
            let _ = fs.remove_file(&temp).await;
        }
        return Err(error);
    }
    fs.fsync_dir(&dir).await
}
