//! An in-memory filesystem with a durability model (it passes
//! `tests/state_fs_contract.rs` like `LocalStateFs`), to cut a state-store
//! batch at every step and check what a crash leaves.
//!
//! # Model
//!
//! Files are inodes with `current` content (what reads see: the page
//! cache) and `durable` content (what is on the disk). Directories hold
//! `current` and `durable` entry maps, name → inode. `fsync(file)` makes
//! that inode's content durable (not its name); `fsync_dir` makes that
//! directory's entries durable; `create_dir_all` fsyncs the parent of every
//! directory it creates, as the real adapter does. A new file's durable
//! content is empty. A rename moves an entry between the `current` maps
//! only, so it is durable once both directories were fsynced.
//!
//! - [`FakeStateFs::after_process_kill`]: the page cache survives a
//!   SIGKILL, so the new fake sees everything written (and what was not
//!   durable still is not).
//! - [`FakeStateFs::after_power_loss`]: only durable state survives; every
//!   directory reverts to its durable entries and every file to its durable
//!   content; an inode reachable only through non-durable entries is gone.
//!
//! # Steps and injection
//!
//! Every call of `write`, `append`, `fsync`, `rename`, `fsync_dir`,
//! `move_aside`, `create_dir_all` and `remove_file` is one step, numbered
//! from 0, whether it succeeds or fails (`read`, `list` and `lock` are not
//! steps). [`FakeStateFs::crash_at_step`]: step k and every later call of
//! any method fail with [`StateFsError::Crashed`] and change nothing — the
//! process is dead. [`FakeStateFs::fail_fsync_at_step`]: step k, an
//! `fsync`, fails with `EIO` the way Linux does it: the inode's dirty pages
//! are dropped (current = durable) and the error is not remembered, so the
//! next fsync of that file succeeds although the data is gone. That is why
//! a caller must never retry a failed fsync and trust the retry.
//!
//! Paths are absolute or relative to the fake's root (there is no working
//! directory); `..` is refused. Locks are one tokio mutex per path string.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::ports::state_fs::{StateFs, StateFsError, StateLock};

type Ino = u64;

const ROOT: Ino = 0;

#[derive(Debug, Clone)]
enum Node {
    File {
        current: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        current: BTreeMap<String, Ino>,
        durable: BTreeMap<String, Ino>,
    },
}

#[derive(Debug, Clone)]
struct Tree {
    nodes: HashMap<Ino, Node>,
    next: Ino,
}

fn os(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// A path's names from the root.
fn names(path: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => names.push(
                name.to_str()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "name not UTF-8"))?
                    .to_owned(),
            ),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the fake filesystem takes no `..` or prefix",
                ))
            }
        }
    }
    Ok(names)
}

impl Tree {
    fn new() -> Self {
        let root = Node::Dir {
            current: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        Tree {
            nodes: HashMap::from([(ROOT, root)]),
            next: ROOT + 1,
        }
    }

    fn node(&self, ino: Ino) -> &Node {
        &self.nodes[&ino]
    }

    fn node_mut(&mut self, ino: Ino) -> &mut Node {
        self.nodes
            .get_mut(&ino)
            .expect("an entry names a live inode")
    }

    fn add(&mut self, node: Node) -> Ino {
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, node);
        ino
    }

    fn entries_mut(&mut self, dir: Ino) -> &mut BTreeMap<String, Ino> {
        match self.node_mut(dir) {
            Node::Dir { current, .. } => current,
            Node::File { .. } => unreachable!("checked to be a directory"),
        }
    }

    /// The inodes along `names` from the root (the root first); stops
    /// early at a missing name. A file before the last name is `ENOTDIR`.
    fn walk(&self, names: &[String]) -> io::Result<Vec<Ino>> {
        let mut chain = vec![ROOT];
        for name in names {
            let Node::Dir { current, .. } = self.node(*chain.last().unwrap()) else {
                return Err(os(libc::ENOTDIR));
            };
            match current.get(name) {
                Some(ino) => chain.push(*ino),
                None => break,
            }
        }
        Ok(chain)
    }

    fn lookup(&self, names: &[String]) -> io::Result<Option<Ino>> {
        let chain = self.walk(names)?;
        Ok((chain.len() == names.len() + 1).then(|| *chain.last().unwrap()))
    }

    /// The directory that holds (or would hold) the last name, and that
    /// name; `ENOENT` when the directory is missing.
    fn parent<'a>(&self, names: &'a [String]) -> io::Result<(Ino, &'a str)> {
        let Some((name, dir)) = names.split_last() else {
            return Err(os(libc::EISDIR));
        };
        match self.lookup(dir)? {
            None => Err(os(libc::ENOENT)),
            Some(ino) => match self.node(ino) {
                Node::Dir { .. } => Ok((ino, name)),
                Node::File { .. } => Err(os(libc::ENOTDIR)),
            },
        }
    }

    fn entry(&self, dir: Ino, name: &str) -> Option<Ino> {
        match self.node(dir) {
            Node::Dir { current, .. } => current.get(name).copied(),
            Node::File { .. } => None,
        }
    }

    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match self.lookup(&names(path)?)? {
            None => Ok(None),
            Some(ino) => match self.node(ino) {
                Node::File { current, .. } => Ok(Some(current.clone())),
                Node::Dir { .. } => Err(os(libc::EISDIR)),
            },
        }
    }

    /// Opens (creating if absent) a file for writing: its inode.
    fn open_for_write(&mut self, path: &Path) -> io::Result<Ino> {
        let names = names(path)?;
        let (dir, name) = self.parent(&names)?;
        match self.entry(dir, name) {
            Some(ino) => match self.node(ino) {
                Node::File { .. } => Ok(ino),
                Node::Dir { .. } => Err(os(libc::EISDIR)),
            },
            None => {
                let ino = self.add(Node::File {
                    current: Vec::new(),
                    durable: Vec::new(),
                });
                self.entries_mut(dir).insert(name.to_owned(), ino);
                Ok(ino)
            }
        }
    }

    fn write(&mut self, path: &Path, bytes: &[u8], append: bool) -> io::Result<()> {
        let ino = self.open_for_write(path)?;
        if let Node::File { current, .. } = self.node_mut(ino) {
            if !append {
                current.clear();
            }
            current.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// fsync(2) of a file or a directory; `fail` models a writeback error.
    fn fsync(&mut self, path: &Path, fail: bool) -> io::Result<()> {
        let Some(ino) = self.lookup(&names(path)?)? else {
            return Err(os(libc::ENOENT));
        };
        match self.node_mut(ino) {
            Node::File { current, durable } if fail => *current = durable.clone(),
            Node::File { current, durable } => *durable = current.clone(),
            Node::Dir { current, durable } if fail => *current = durable.clone(),
            Node::Dir { current, durable } => *durable = current.clone(),
        }
        if fail {
            Err(os(libc::EIO))
        } else {
            Ok(())
        }
    }

    fn fsync_dir(&mut self, dir: &Path) -> io::Result<()> {
        let Some(ino) = self.lookup(&names(dir)?)? else {
            return Err(os(libc::ENOENT));
        };
        match self.node_mut(ino) {
            Node::Dir { current, durable } => {
                *durable = current.clone();
                Ok(())
            }
            Node::File { .. } => Err(os(libc::ENOTDIR)),
        }
    }

    fn rename(&mut self, from: &Path, to: &Path, replace: bool) -> io::Result<()> {
        let (from_names, to_names) = (names(from)?, names(to)?);
        let (from_dir, from_name) = self.parent(&from_names)?;
        let source = self
            .entry(from_dir, from_name)
            .ok_or_else(|| os(libc::ENOENT))?;
        let (to_dir, to_name) = self.parent(&to_names)?;
        if let Some(target) = self.entry(to_dir, to_name) {
            if !replace {
                return Err(os(libc::EEXIST));
            }
            if target == source {
                return Ok(());
            }
            match (self.node(source), self.node(target)) {
                (Node::File { .. }, Node::Dir { .. }) => return Err(os(libc::EISDIR)),
                (Node::Dir { .. }, Node::File { .. }) => return Err(os(libc::ENOTDIR)),
                (Node::Dir { .. }, Node::Dir { current, .. }) if !current.is_empty() => {
                    return Err(os(libc::ENOTEMPTY))
                }
                _ => {}
            }
        }
        // A directory cannot move into itself.
        if matches!(self.node(source), Node::Dir { .. })
            && self
                .walk(&to_names[..to_names.len() - 1])?
                .contains(&source)
        {
            return Err(os(libc::EINVAL));
        }
        self.entries_mut(from_dir).remove(from_name);
        self.entries_mut(to_dir).insert(to_name.to_owned(), source);
        Ok(())
    }

    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        let names = names(dir)?;
        let mut at = ROOT;
        for (i, name) in names.iter().enumerate() {
            match self.entry(at, name) {
                Some(ino) => match self.node(ino) {
                    Node::Dir { .. } => at = ino,
                    Node::File { .. } if i + 1 == names.len() => return Err(os(libc::EEXIST)),
                    Node::File { .. } => return Err(os(libc::ENOTDIR)),
                },
                None => {
                    let ino = self.add(Node::Dir {
                        current: BTreeMap::new(),
                        durable: BTreeMap::new(),
                    });
                    // mkdir, then fsync of the parent: all its entries.
                    if let Node::Dir { current, durable } = self.node_mut(at) {
                        current.insert(name.clone(), ino);
                        *durable = current.clone();
                    }
                    at = ino;
                }
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        match self.lookup(&names(dir)?)? {
            None => Ok(Vec::new()),
            Some(ino) => match self.node(ino) {
                Node::Dir { current, .. } => Ok(current.keys().cloned().collect()),
                Node::File { .. } => Err(os(libc::ENOTDIR)),
            },
        }
    }

    fn remove_file(&mut self, path: &Path) -> io::Result<()> {
        let names = names(path)?;
        let (dir, name) = match self.parent(&names) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        match self.entry(dir, name) {
            None => Ok(()),
            Some(ino) => match self.node(ino) {
                Node::Dir { .. } => Err(os(libc::EISDIR)),
                Node::File { .. } => {
                    self.entries_mut(dir).remove(name);
                    Ok(())
                }
            },
        }
    }

    /// What the disk holds after a power loss: durable entries and
    /// durable contents, from the root.
    fn durable_only(&self) -> Tree {
        let mut nodes = HashMap::new();
        let mut pending = vec![ROOT];
        while let Some(ino) = pending.pop() {
            if nodes.contains_key(&ino) {
                continue;
            }
            let node = match self.node(ino) {
                Node::File { durable, .. } => Node::File {
                    current: durable.clone(),
                    durable: durable.clone(),
                },
                Node::Dir { durable, .. } => {
                    pending.extend(durable.values().copied());
                    Node::Dir {
                        current: durable.clone(),
                        durable: durable.clone(),
                    }
                }
            };
            nodes.insert(ino, node);
        }
        Tree {
            nodes,
            next: self.next,
        }
    }

    fn files_under(&self, dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        if let Ok(Some(start)) = names(dir).and_then(|names| self.lookup(&names)) {
            self.collect_files(dir.to_path_buf(), start, &mut Vec::new(), &mut files);
        }
        files
    }

    /// After a power loss one directory can have two names (a rename
    /// whose source directory was not fsynced): listed under both. A
    /// directory inside itself is not entered again.
    fn collect_files(
        &self,
        path: PathBuf,
        ino: Ino,
        ancestors: &mut Vec<Ino>,
        files: &mut BTreeMap<PathBuf, Vec<u8>>,
    ) {
        match self.node(ino) {
            Node::File { current, .. } => {
                files.insert(path, current.clone());
            }
            Node::Dir { current, .. } => {
                if ancestors.contains(&ino) {
                    return;
                }
                ancestors.push(ino);
                for (name, child) in current {
                    self.collect_files(path.join(name), *child, ancestors, files);
                }
                ancestors.pop();
            }
        }
    }
}

#[derive(Debug, Default)]
struct Injection {
    /// Steps performed (the number of the next one).
    steps: usize,
    crash_at: Option<usize>,
    fail_fsync_at: BTreeSet<usize>,
    crashed: bool,
    log: Vec<(&'static str, PathBuf)>,
}

#[derive(Debug)]
struct State {
    tree: Tree,
    injection: Injection,
}

impl State {
    fn alive(&self, op: &'static str, path: &Path) -> Result<(), StateFsError> {
        if self.injection.crashed {
            return Err(StateFsError::Crashed {
                op,
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Starts step `op` (or crashes there): whether it is to fail its fsync.
    fn step(&mut self, op: &'static str, path: &Path) -> Result<bool, StateFsError> {
        self.alive(op, path)?;
        let injection = &mut self.injection;
        let k = injection.steps;
        if injection.crash_at == Some(k) {
            injection.crashed = true;
            return Err(StateFsError::Crashed {
                op,
                path: path.to_path_buf(),
            });
        }
        let fail = injection.fail_fsync_at.contains(&k);
        assert!(
            !fail || op == "fsync",
            "fail_fsync_at_step({k}): step {k} is {op} {}, not an fsync",
            path.display()
        );
        injection.fail_fsync_at.remove(&k);
        injection.steps += 1;
        injection.log.push((op, path.to_path_buf()));
        Ok(fail)
    }
}

type PathLocks = HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>;

#[derive(Debug)]
pub struct FakeStateFs {
    state: Mutex<State>,
    locks: Mutex<PathLocks>,
}

impl Default for FakeStateFs {
    fn default() -> Self {
        FakeStateFs::with_tree(Tree::new())
    }
}

impl FakeStateFs {
    /// An empty filesystem: only the root directory, durable.
    pub fn new() -> Self {
        FakeStateFs::default()
    }

    fn with_tree(tree: Tree) -> Self {
        FakeStateFs {
            state: Mutex::new(State {
                tree,
                injection: Injection::default(),
            }),
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Only the fsync-injection assertion panics under the lock, before
        // changing anything.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Step `k` (0-based) and every later call of any method fail with
    /// `Crashed` and change nothing.
    pub fn crash_at_step(&self, k: usize) {
        let mut state = self.state();
        assert!(
            k >= state.injection.steps,
            "crash_at_step({k}): {} steps are already done",
            state.injection.steps
        );
        state.injection.crash_at = Some(k);
    }

    /// Whether the injected crash has happened.
    pub fn crashed(&self) -> bool {
        self.state().injection.crashed
    }

    /// The steps performed so far (failed ones too, not the crashed one).
    pub fn steps(&self) -> usize {
        self.state().injection.steps
    }

    /// Each step performed so far: its operation and its (first) path.
    pub fn step_log(&self) -> Vec<(&'static str, PathBuf)> {
        self.state().injection.log.clone()
    }

    /// Step `k` must be an `fsync` (the call panics otherwise): it fails
    /// with `EIO` as Linux does after a writeback error — the file's dirty
    /// content is dropped (current = durable) and the error is forgotten,
    /// so the next fsync of it succeeds with the data gone. Callers must
    /// never retry a failed fsync and trust the retry.
    pub fn fail_fsync_at_step(&self, k: usize) {
        let mut state = self.state();
        assert!(
            k >= state.injection.steps,
            "fail_fsync_at_step({k}): {} steps are already done",
            state.injection.steps
        );
        state.injection.fail_fsync_at.insert(k);
    }

    /// The filesystem a new process sees after this one was SIGKILLed:
    /// everything written is visible (the page cache survives), durability
    /// is as it was; no injection, no step counted, no lock held.
    pub fn after_process_kill(&self) -> FakeStateFs {
        FakeStateFs::with_tree(self.state().tree.clone())
    }

    /// The filesystem after a power loss: only durable entries and durable
    /// contents; no injection, no step counted, no lock held.
    pub fn after_power_loss(&self) -> FakeStateFs {
        FakeStateFs::with_tree(self.state().tree.durable_only())
    }

    /// Every file under `dir` (recursively; `dir` itself if it is a file)
    /// with its current content, keyed by `dir` joined with its path.
    pub fn files_under(&self, dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        self.state().tree.files_under(dir)
    }

    /// Runs step `op` on the tree, unless crashed.
    fn run_step<T>(
        &self,
        op: &'static str,
        path: &Path,
        f: impl FnOnce(&mut Tree, bool) -> io::Result<T>,
    ) -> Result<T, StateFsError> {
        let mut state = self.state();
        let fail = state.step(op, path)?;
        f(&mut state.tree, fail).map_err(|source| StateFsError::io(op, path, source))
    }
}

#[async_trait]
impl StateFs for FakeStateFs {
    async fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, StateFsError> {
        let state = self.state();
        state.alive("read", path)?;
        state
            .tree
            .read(path)
            .map_err(|source| StateFsError::io("read", path, source))
    }

    async fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), StateFsError> {
        self.run_step("write", path, |tree, _| tree.write(path, bytes, false))
    }

    async fn append(&self, path: &Path, bytes: &[u8]) -> Result<(), StateFsError> {
        self.run_step("append", path, |tree, _| tree.write(path, bytes, true))
    }

    async fn fsync(&self, path: &Path) -> Result<(), StateFsError> {
        self.run_step("fsync", path, |tree, fail| tree.fsync(path, fail))
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), StateFsError> {
        self.run_step("rename", from, |tree, _| tree.rename(from, to, true))
    }

    async fn fsync_dir(&self, dir: &Path) -> Result<(), StateFsError> {
        self.run_step("fsync_dir", dir, |tree, _| tree.fsync_dir(dir))
    }

    async fn move_aside(&self, from: &Path, to: &Path) -> Result<(), StateFsError> {
        self.run_step("move_aside", from, |tree, _| tree.rename(from, to, false))
    }

    async fn create_dir_all(&self, dir: &Path) -> Result<(), StateFsError> {
        self.run_step("create_dir_all", dir, |tree, _| tree.create_dir_all(dir))
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, StateFsError> {
        let state = self.state();
        state.alive("list", dir)?;
        state
            .tree
            .list(dir)
            .map_err(|source| StateFsError::io("list", dir, source))
    }

    async fn remove_file(&self, path: &Path) -> Result<(), StateFsError> {
        self.run_step("remove_file", path, |tree, _| tree.remove_file(path))
    }

    async fn lock(&self, lock_file: &Path) -> Result<StateLock, StateFsError> {
        {
            // Like open(O_CREAT) of the real lock file: not a step, not durable.
            let mut state = self.state();
            state.alive("lock", lock_file)?;
            state
                .tree
                .open_for_write(lock_file)
                .map_err(|source| StateFsError::io("lock", lock_file, source))?;
        }
        let mutex = self
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(lock_file.to_path_buf())
            .or_default()
            .clone();
        Ok(StateLock::new(mutex.lock_owned().await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::state_fs::write_durable;

    fn p(path: &str) -> PathBuf {
        PathBuf::from(path)
    }

    fn errno(error: &StateFsError) -> Option<i32> {
        match error {
            StateFsError::Io { source, .. } => source.raw_os_error(),
            StateFsError::Crashed { .. } => None,
        }
    }

    /// A fake with `/state` created (step 0).
    async fn fake() -> FakeStateFs {
        let fs = FakeStateFs::new();
        fs.create_dir_all(&p("/state")).await.unwrap();
        fs
    }

    #[tokio::test]
    async fn power_loss_after_a_write_without_fsync_loses_the_content() {
        let fs = fake().await;
        fs.write(&p("/state/a"), b"v1").await.unwrap();
        fs.fsync_dir(&p("/state")).await.unwrap();
        assert_eq!(fs.read(&p("/state/a")).await.unwrap().unwrap(), b"v1");

        let after = fs.after_power_loss();
        // The name was made durable, the data never was.
        assert_eq!(after.read(&p("/state/a")).await.unwrap().unwrap(), b"");

        // Without the directory fsync the file is gone altogether.
        fs.write(&p("/state/b"), b"v1").await.unwrap();
        fs.fsync(&p("/state/b")).await.unwrap();
        assert_eq!(
            fs.after_power_loss().read(&p("/state/b")).await.unwrap(),
            None
        );

        // A process kill keeps all of it.
        let killed = fs.after_process_kill();
        assert_eq!(killed.read(&p("/state/a")).await.unwrap().unwrap(), b"v1");
        assert_eq!(killed.read(&p("/state/b")).await.unwrap().unwrap(), b"v1");
        // … and what was not durable still is not.
        assert_eq!(
            killed
                .after_power_loss()
                .read(&p("/state/b"))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn power_loss_after_a_rename_without_fsync_dir_keeps_the_old_name() {
        let fs = fake().await;
        fs.write(&p("/state/a"), b"data").await.unwrap();
        fs.fsync(&p("/state/a")).await.unwrap();
        fs.fsync_dir(&p("/state")).await.unwrap();
        fs.rename(&p("/state/a"), &p("/state/b")).await.unwrap();
        assert_eq!(fs.list(&p("/state")).await.unwrap(), ["b"]);

        let after = fs.after_power_loss();
        assert_eq!(after.list(&p("/state")).await.unwrap(), ["a"]);
        assert_eq!(after.read(&p("/state/a")).await.unwrap().unwrap(), b"data");
        assert_eq!(after.read(&p("/state/b")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn power_loss_after_a_replacing_rename_without_fsync_dir_keeps_the_old_content() {
        let fs = fake().await;
        write_durable(&fs, &p("/state/a"), b"old").await.unwrap();
        fs.write(&p("/state/a.tmp"), b"new").await.unwrap();
        fs.fsync(&p("/state/a.tmp")).await.unwrap();
        fs.rename(&p("/state/a.tmp"), &p("/state/a")).await.unwrap();
        assert_eq!(fs.read(&p("/state/a")).await.unwrap().unwrap(), b"new");

        let after = fs.after_power_loss();
        assert_eq!(
            after.files_under(&p("/state")),
            BTreeMap::from([(p("/state/a"), b"old".to_vec())])
        );
    }

    #[tokio::test]
    async fn everything_write_durable_wrote_survives_power_loss() {
        let fs = FakeStateFs::new();
        fs.create_dir_all(&p("/state/runtimes/r1")).await.unwrap();
        write_durable(&fs, &p("/state/runtimes/r1/manifest"), b"m1")
            .await
            .unwrap();
        write_durable(&fs, &p("/state/runtimes/r1/manifest"), b"m2")
            .await
            .unwrap();
        write_durable(&fs, &p("/state/runtimes/r1/store"), b"s1")
            .await
            .unwrap();

        let expected = BTreeMap::from([
            (p("/state/runtimes/r1/manifest"), b"m2".to_vec()),
            (p("/state/runtimes/r1/store"), b"s1".to_vec()),
        ]);
        assert_eq!(fs.files_under(&p("/state")), expected);
        assert_eq!(fs.after_power_loss().files_under(&p("/state")), expected);
    }

    #[tokio::test]
    async fn a_crash_stops_every_later_call_and_steps_counts() {
        let fs = fake().await;
        assert_eq!(fs.steps(), 1);
        fs.crash_at_step(3);
        fs.write(&p("/state/a"), b"1").await.unwrap(); // step 1
        fs.fsync(&p("/state/missing")).await.unwrap_err(); // step 2, fails
        assert_eq!(fs.steps(), 3);
        assert!(!fs.crashed());

        let error = fs.append(&p("/state/a"), b"2").await.unwrap_err(); // step 3
        assert!(error.is_crash(), "{error}");
        assert!(fs.crashed());
        assert_eq!(fs.steps(), 3);

        // Every method now, steps or not.
        assert!(fs.read(&p("/state/a")).await.unwrap_err().is_crash());
        assert!(fs.list(&p("/state")).await.unwrap_err().is_crash());
        assert!(fs.lock(&p("/state/lock")).await.unwrap_err().is_crash());
        assert!(fs.write(&p("/state/b"), b"").await.unwrap_err().is_crash());
        assert!(fs.fsync(&p("/state/a")).await.unwrap_err().is_crash());
        assert!(fs
            .rename(&p("/state/a"), &p("/state/c"))
            .await
            .unwrap_err()
            .is_crash());
        assert!(fs.fsync_dir(&p("/state")).await.unwrap_err().is_crash());
        assert!(fs
            .move_aside(&p("/state/a"), &p("/state/d"))
            .await
            .unwrap_err()
            .is_crash());
        assert!(fs.create_dir_all(&p("/x")).await.unwrap_err().is_crash());
        assert!(fs.remove_file(&p("/state/a")).await.unwrap_err().is_crash());
        assert_eq!(fs.steps(), 3);
        assert_eq!(
            fs.step_log(),
            [
                ("create_dir_all", p("/state")),
                ("write", p("/state/a")),
                ("fsync", p("/state/missing")),
            ]
        );

        // The crashed append had no effect; a new process sees step 1's write.
        let next = fs.after_process_kill();
        assert_eq!(next.read(&p("/state/a")).await.unwrap().unwrap(), b"1");
        assert_eq!(next.steps(), 0);
        next.write(&p("/state/b"), b"ok").await.unwrap();
    }

    #[tokio::test]
    async fn a_crash_inside_write_durable_leaves_old_or_new() {
        let fs = fake().await;
        write_durable(&fs, &p("/state/a"), b"old").await.unwrap();
        let start = fs.steps();
        write_durable(&fs, &p("/state/a"), b"new").await.unwrap();
        let n = fs.steps() - start;
        assert_eq!(n, 4, "{:?}", fs.step_log());

        for k in 0..=n {
            let fs = fake().await;
            write_durable(&fs, &p("/state/a"), b"old").await.unwrap();
            fs.crash_at_step(fs.steps() + k);
            let result = write_durable(&fs, &p("/state/a"), b"new").await;
            assert_eq!(result.is_ok(), k == n, "k={k}: {result:?}");
            // Before the rename (steps 0–2) nothing shows; past it a kill
            // shows the new content, a power loss only once the directory
            // was fsynced.
            let killed = fs.after_process_kill().read(&p("/state/a")).await.unwrap();
            let lost = fs.after_power_loss().read(&p("/state/a")).await.unwrap();
            let (killed_expected, lost_expected): (&[u8], &[u8]) = match k {
                0..=2 => (b"old", b"old"),
                3 => (b"new", b"old"),
                _ => (b"new", b"new"),
            };
            assert_eq!(killed.unwrap(), killed_expected, "k={k}");
            assert_eq!(lost.unwrap(), lost_expected, "k={k}");
            // No temp file survives a power loss; a kill may leave one.
            assert_eq!(
                fs.after_power_loss().list(&p("/state")).await.unwrap(),
                ["a"]
            );
        }
    }

    #[tokio::test]
    async fn a_failed_fsync_drops_the_data_and_the_next_fsync_succeeds() {
        let fs = fake().await;
        fs.write(&p("/state/a"), b"v1").await.unwrap(); // step 1
        fs.fsync(&p("/state/a")).await.unwrap(); // step 2
        fs.fsync_dir(&p("/state")).await.unwrap(); // step 3
        fs.write(&p("/state/a"), b"v2").await.unwrap(); // step 4
        fs.fail_fsync_at_step(5);

        let error = fs.fsync(&p("/state/a")).await.unwrap_err();
        assert!(!error.is_crash());
        assert_eq!(errno(&error), Some(libc::EIO));
        // The dirty pages are gone: reads see the durable content again.
        assert_eq!(fs.read(&p("/state/a")).await.unwrap().unwrap(), b"v1");

        // The retry "succeeds": the error is not remembered …
        fs.fsync(&p("/state/a")).await.unwrap();
        // … and v2 is not on the disk.
        let after = fs.after_power_loss();
        assert_eq!(after.read(&p("/state/a")).await.unwrap().unwrap(), b"v1");
    }

    #[tokio::test]
    async fn a_failed_fsync_inside_write_durable_is_not_retried() {
        let fs = fake().await;
        write_durable(&fs, &p("/state/a"), b"old").await.unwrap();
        // write, fsync (fails), then only the temp file's removal.
        fs.fail_fsync_at_step(fs.steps() + 1);
        let error = write_durable(&fs, &p("/state/a"), b"new")
            .await
            .unwrap_err();
        assert_eq!(errno(&error), Some(libc::EIO));
        let ops: Vec<_> = fs.step_log().into_iter().map(|(op, _)| op).collect();
        assert_eq!(ops[ops.len() - 3..], ["write", "fsync", "remove_file"]);
        assert_eq!(fs.list(&p("/state")).await.unwrap(), ["a"]);
        assert_eq!(fs.read(&p("/state/a")).await.unwrap().unwrap(), b"old");
    }

    #[tokio::test]
    #[should_panic(expected = "not an fsync")]
    async fn fail_fsync_at_a_step_that_is_not_an_fsync_panics() {
        let fs = fake().await;
        fs.fail_fsync_at_step(1);
        let _ = fs.write(&p("/state/a"), b"").await;
    }

    #[tokio::test]
    async fn a_directory_renamed_without_fsync_of_both_dirs_is_lost_or_doubled() {
        let fs = fake().await;
        fs.create_dir_all(&p("/state/dir")).await.unwrap();
        write_durable(&fs, &p("/state/dir/f"), b"x").await.unwrap();
        fs.create_dir_all(&p("/aside")).await.unwrap();
        fs.move_aside(&p("/state/dir"), &p("/aside/dir"))
            .await
            .unwrap();
        fs.fsync_dir(&p("/aside")).await.unwrap();
        // The source directory was not fsynced: both names survive.
        let after = fs.after_power_loss();
        assert_eq!(
            after.files_under(&p("/")),
            BTreeMap::from([
                (p("/aside/dir/f"), b"x".to_vec()),
                (p("/state/dir/f"), b"x".to_vec()),
            ])
        );
    }
}
