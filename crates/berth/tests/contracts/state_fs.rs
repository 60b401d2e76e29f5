//! The `StateFs` contract: one suite of cases, each an async fn over an
//! `Arc<dyn StateFs>` and a root directory that exists and is empty, run
//!
//! - `local::` — `LocalStateFs` on a fresh temporary directory,
//! - `fake::` — `FakeStateFs` with the root created in it.
//!
//! Errors are compared by `io::ErrorKind`, so the fake must fail where the
//! real filesystem fails and the same way. `local_only::` holds what only
//! the real adapter can show (the lock is an `flock` other open files see).
//! The fake's durability model (power loss, crashes, failed fsyncs) is
//! tested in `fakes::state_fs`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth::adapters::state_fs::LocalStateFs;
use berth::fakes::FakeStateFs;
use berth::ports::state_fs::{write_durable, StateFs, StateFsError};

/// Only a guard against a hang; no case waits on time.
const HANG_GUARD: Duration = Duration::from_secs(60);

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let fs: std::sync::Arc<dyn berth::ports::state_fs::StateFs> =
                        std::sync::Arc::new(berth::adapters::state_fs::LocalStateFs::new());
                    super::cases::$case(fs, dir.path()).await;
                }
            )*
        }
        mod fake {
            $(
                #[tokio::test]
                async fn $case() {
                    let (fs, root) = super::fake().await;
                    super::cases::$case(fs, &root).await;
                }
            )*
        }
    };
}

contract!(
    reading_an_absent_file_is_none,
    a_write_reads_back,
    a_write_truncates,
    append_creates_then_appends,
    rename_replaces_the_target,
    renaming_a_missing_source_is_not_found,
    move_aside_refuses_an_existing_target_and_leaves_both,
    move_aside_moves_files_and_directories,
    list_is_sorted_and_an_absent_dir_is_empty,
    create_dir_all_is_idempotent,
    removing_an_absent_file_is_ok,
    writing_into_a_missing_directory_is_not_found,
    fsync_of_files_and_directories,
    write_durable_leaves_no_temp_file,
    the_lock_is_exclusive,
    a_file_in_the_way_is_not_a_directory,
);

async fn fake() -> (Arc<dyn StateFs>, PathBuf) {
    let fs = FakeStateFs::new();
    let root = PathBuf::from("/var/lib/berth-test");
    fs.create_dir_all(&root).await.unwrap();
    (Arc::new(fs), root)
}

/// The error's kind; panics on success or on an injected crash.
fn kind<T: std::fmt::Debug>(result: Result<T, StateFsError>) -> ErrorKind {
    match result {
        Err(StateFsError::Io { source, .. }) => source.kind(),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

mod cases {
    use super::*;

    async fn content(fs: &dyn StateFs, path: &Path) -> Option<Vec<u8>> {
        fs.read(path).await.unwrap()
    }

    pub async fn reading_an_absent_file_is_none(fs: Arc<dyn StateFs>, root: &Path) {
        assert_eq!(content(&*fs, &root.join("absent")).await, None);
    }

    pub async fn a_write_reads_back(fs: Arc<dyn StateFs>, root: &Path) {
        let path = root.join("file");
        fs.write(&path, b"hello").await.unwrap();
        assert_eq!(content(&*fs, &path).await.unwrap(), b"hello");
        fs.write(&root.join("empty"), b"").await.unwrap();
        assert_eq!(content(&*fs, &root.join("empty")).await.unwrap(), b"");
    }

    pub async fn a_write_truncates(fs: Arc<dyn StateFs>, root: &Path) {
        let path = root.join("file");
        fs.write(&path, b"a longer first content").await.unwrap();
        fs.write(&path, b"short").await.unwrap();
        assert_eq!(content(&*fs, &path).await.unwrap(), b"short");
    }

    pub async fn append_creates_then_appends(fs: Arc<dyn StateFs>, root: &Path) {
        let path = root.join("log");
        fs.append(&path, b"one\n").await.unwrap();
        assert_eq!(content(&*fs, &path).await.unwrap(), b"one\n");
        fs.append(&path, b"two\n").await.unwrap();
        assert_eq!(content(&*fs, &path).await.unwrap(), b"one\ntwo\n");
    }

    pub async fn rename_replaces_the_target(fs: Arc<dyn StateFs>, root: &Path) {
        let (from, to) = (root.join("new"), root.join("current"));
        fs.write(&to, b"old").await.unwrap();
        fs.write(&from, b"new").await.unwrap();
        fs.rename(&from, &to).await.unwrap();
        assert_eq!(content(&*fs, &to).await.unwrap(), b"new");
        assert_eq!(content(&*fs, &from).await, None);
        assert_eq!(fs.list(root).await.unwrap(), ["current"]);

        // Into another directory, onto nothing.
        fs.create_dir_all(&root.join("sub")).await.unwrap();
        fs.rename(&to, &root.join("sub/moved")).await.unwrap();
        assert_eq!(
            content(&*fs, &root.join("sub/moved")).await.unwrap(),
            b"new"
        );
        assert_eq!(fs.list(root).await.unwrap(), ["sub"]);
    }

    pub async fn renaming_a_missing_source_is_not_found(fs: Arc<dyn StateFs>, root: &Path) {
        fs.write(&root.join("target"), b"kept").await.unwrap();
        let result = fs.rename(&root.join("missing"), &root.join("target")).await;
        assert_eq!(kind(result), ErrorKind::NotFound);
        assert_eq!(content(&*fs, &root.join("target")).await.unwrap(), b"kept");
    }

    pub async fn move_aside_refuses_an_existing_target_and_leaves_both(
        fs: Arc<dyn StateFs>,
        root: &Path,
    ) {
        let (from, to) = (root.join("store"), root.join("store.aside"));
        fs.write(&from, b"live").await.unwrap();
        fs.write(&to, b"earlier").await.unwrap();
        assert_eq!(
            kind(fs.move_aside(&from, &to).await),
            ErrorKind::AlreadyExists
        );
        assert_eq!(content(&*fs, &from).await.unwrap(), b"live");
        assert_eq!(content(&*fs, &to).await.unwrap(), b"earlier");

        // An existing directory as the target too.
        fs.create_dir_all(&root.join("dir")).await.unwrap();
        assert_eq!(
            kind(fs.move_aside(&from, &root.join("dir")).await),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            fs.list(root).await.unwrap(),
            ["dir", "store", "store.aside"]
        );
    }

    pub async fn move_aside_moves_files_and_directories(fs: Arc<dyn StateFs>, root: &Path) {
        let (from, to) = (root.join("store"), root.join("store.aside"));
        fs.write(&from, b"live").await.unwrap();
        fs.move_aside(&from, &to).await.unwrap();
        assert_eq!(content(&*fs, &from).await, None);
        assert_eq!(content(&*fs, &to).await.unwrap(), b"live");

        fs.create_dir_all(&root.join("dir/inner")).await.unwrap();
        fs.write(&root.join("dir/inner/f"), b"x").await.unwrap();
        fs.move_aside(&root.join("dir"), &root.join(".old-dir"))
            .await
            .unwrap();
        assert_eq!(
            content(&*fs, &root.join(".old-dir/inner/f")).await.unwrap(),
            b"x"
        );
        assert_eq!(fs.list(root).await.unwrap(), [".old-dir", "store.aside"]);

        // A missing source is NotFound.
        assert_eq!(
            kind(fs.move_aside(&from, &root.join("elsewhere")).await),
            ErrorKind::NotFound
        );
    }

    pub async fn list_is_sorted_and_an_absent_dir_is_empty(fs: Arc<dyn StateFs>, root: &Path) {
        assert!(fs.list(root).await.unwrap().is_empty());
        assert!(fs.list(&root.join("absent")).await.unwrap().is_empty());
        for name in ["b", "a", ".hidden", "c10", "c9", "B"] {
            fs.write(&root.join(name), b"").await.unwrap();
        }
        fs.create_dir_all(&root.join("dir")).await.unwrap();
        assert_eq!(
            fs.list(root).await.unwrap(),
            [".hidden", "B", "a", "b", "c10", "c9", "dir"]
        );
    }

    pub async fn create_dir_all_is_idempotent(fs: Arc<dyn StateFs>, root: &Path) {
        let deep = root.join("a/b/c");
        fs.create_dir_all(&deep).await.unwrap();
        fs.create_dir_all(&deep).await.unwrap();
        fs.create_dir_all(&root.join("a")).await.unwrap();
        fs.create_dir_all(root).await.unwrap();
        assert_eq!(fs.list(root).await.unwrap(), ["a"]);
        assert_eq!(fs.list(&root.join("a")).await.unwrap(), ["b"]);
        assert_eq!(fs.list(&root.join("a/b")).await.unwrap(), ["c"]);
        assert!(fs.list(&deep).await.unwrap().is_empty());
        fs.write(&deep.join("f"), b"x").await.unwrap();
        assert_eq!(content(&*fs, &deep.join("f")).await.unwrap(), b"x");
    }

    pub async fn removing_an_absent_file_is_ok(fs: Arc<dyn StateFs>, root: &Path) {
        fs.remove_file(&root.join("absent")).await.unwrap();
        fs.remove_file(&root.join("no-dir/absent")).await.unwrap();
        fs.write(&root.join("tmp"), b"x").await.unwrap();
        fs.remove_file(&root.join("tmp")).await.unwrap();
        assert_eq!(content(&*fs, &root.join("tmp")).await, None);
        assert!(fs.list(root).await.unwrap().is_empty());
    }

    pub async fn writing_into_a_missing_directory_is_not_found(fs: Arc<dyn StateFs>, root: &Path) {
        let missing = root.join("missing/file");
        assert_eq!(kind(fs.write(&missing, b"x").await), ErrorKind::NotFound);
        assert_eq!(kind(fs.append(&missing, b"x").await), ErrorKind::NotFound);
        assert_eq!(
            kind(write_durable(&*fs, &missing, b"x").await),
            ErrorKind::NotFound
        );
        fs.write(&root.join("source"), b"x").await.unwrap();
        assert_eq!(
            kind(fs.rename(&root.join("source"), &missing).await),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(fs.move_aside(&root.join("source"), &missing).await),
            ErrorKind::NotFound
        );
        assert_eq!(kind(fs.lock(&missing).await), ErrorKind::NotFound);
        assert_eq!(kind(fs.fsync(&missing).await), ErrorKind::NotFound);
        assert_eq!(
            kind(fs.fsync_dir(&root.join("missing")).await),
            ErrorKind::NotFound
        );
        // Nothing was created on the way.
        assert_eq!(fs.list(root).await.unwrap(), ["source"]);
        assert_eq!(content(&*fs, &root.join("source")).await.unwrap(), b"x");
    }

    pub async fn fsync_of_files_and_directories(fs: Arc<dyn StateFs>, root: &Path) {
        let path = root.join("file");
        fs.write(&path, b"data").await.unwrap();
        fs.fsync(&path).await.unwrap();
        fs.fsync_dir(root).await.unwrap();
        fs.append(&path, b"+").await.unwrap();
        fs.fsync(&path).await.unwrap();
        assert_eq!(content(&*fs, &path).await.unwrap(), b"data+");
    }

    pub async fn write_durable_leaves_no_temp_file(fs: Arc<dyn StateFs>, root: &Path) {
        let path = root.join("manifest.json");
        write_durable(&*fs, &path, b"{\"v\":1}").await.unwrap();
        assert_eq!(content(&*fs, &path).await.unwrap(), b"{\"v\":1}");
        write_durable(&*fs, &path, b"{\"v\":2}").await.unwrap();
        assert_eq!(content(&*fs, &path).await.unwrap(), b"{\"v\":2}");
        assert_eq!(fs.list(root).await.unwrap(), ["manifest.json"]);
    }

    pub async fn the_lock_is_exclusive(fs: Arc<dyn StateFs>, root: &Path) {
        let lock_file = root.join("lock");
        let first = fs.lock(&lock_file).await.unwrap();
        // The lock file is created, empty.
        assert_eq!(fs.list(root).await.unwrap(), ["lock"]);
        assert_eq!(content(&*fs, &lock_file).await.unwrap(), b"");

        let first_held = Arc::new(AtomicBool::new(true));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (acquired_tx, mut acquired_rx) = tokio::sync::oneshot::channel();
        let second = tokio::spawn({
            let (fs, lock_file, first_held) = (fs.clone(), lock_file.clone(), first_held.clone());
            async move {
                started_tx.send(()).unwrap();
                let second = fs.lock(&lock_file).await.unwrap();
                // Whether the first guard was still alive when we got in.
                acquired_tx.send(first_held.load(Ordering::SeqCst)).unwrap();
                drop(second);
            }
        });
        started_rx.await.unwrap();
        // Give the second lock() every chance to (wrongly) get through.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(acquired_rx.try_recv().is_err(), "the second lock got in");

        first_held.store(false, Ordering::SeqCst);
        drop(first);
        let while_held = tokio::time::timeout(HANG_GUARD, acquired_rx)
            .await
            .expect("the second lock() is still waiting after the first was dropped")
            .unwrap();
        assert!(
            !while_held,
            "the second lock was granted while the first was held"
        );
        second.await.unwrap();

        // Free again; the lock file is still there and still empty.
        drop(fs.lock(&lock_file).await.unwrap());
        assert_eq!(content(&*fs, &lock_file).await.unwrap(), b"");
    }

    pub async fn a_file_in_the_way_is_not_a_directory(fs: Arc<dyn StateFs>, root: &Path) {
        fs.write(&root.join("file"), b"x").await.unwrap();
        assert_eq!(
            kind(fs.create_dir_all(&root.join("file")).await),
            ErrorKind::AlreadyExists
        );
        for result in [
            fs.create_dir_all(&root.join("file/sub")).await,
            fs.write(&root.join("file/sub"), b"").await,
            fs.read(&root.join("file/sub")).await.map(drop),
            fs.list(&root.join("file")).await.map(drop),
            fs.fsync_dir(&root.join("file")).await,
        ] {
            assert_eq!(kind(result), ErrorKind::NotADirectory);
        }
        assert_eq!(content(&*fs, &root.join("file")).await.unwrap(), b"x");
    }
}

mod local_only {
    use std::fs::File;
    use std::os::unix::io::AsRawFd;

    use super::*;

    fn try_flock(path: &Path) -> bool {
        let file = File::open(path).unwrap();
        // SAFETY: the descriptor belongs to `file`, open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return true;
        }
        let error = std::io::Error::last_os_error();
        assert_eq!(error.raw_os_error(), Some(libc::EWOULDBLOCK), "{error}");
        false
    }

    /// Another open file description — as another process has — cannot
    /// take the flock while the guard lives, and can once it is dropped.
    #[tokio::test]
    async fn the_lock_is_an_flock_other_open_files_see() {
        let dir = tempfile::tempdir().unwrap();
        let lock_file = dir.path().join("lock");
        let fs = LocalStateFs::new();
        let guard = fs.lock(&lock_file).await.unwrap();
        assert!(!try_flock(&lock_file));
        drop(guard);
        assert!(try_flock(&lock_file));
    }
}
