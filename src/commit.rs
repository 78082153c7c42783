//! commit: group commit without a timer, for the journal and for folder fsyncs.
//!
//! Whoever needs something made durable hands it to a [`Group`] and waits
//! for the answer. One flusher thread per group takes everything queued
//! since its last flush, makes it durable in one go (one SQLite
//! transaction, one fsync per folder), then answers every waiter. It runs as
//! soon as it is free: alone, a request waits for nothing but its own
//! flush; under load many requests share one. There is no tick anywhere.
//!
//! It never answers a request before the flush that covers it has returned,
//! and never answers success for a request its flush did not make durable.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crate::claim::ClaimError;
use crate::journal::{Journal, JournalError};

struct Job<R, E> {
    request: R,
    done: tokio::sync::oneshot::Sender<Result<(), E>>,
}

/// How many flushes served how many requests (requests / flushes is how
/// much the grouping saves).
#[derive(Debug, Default)]
pub struct GroupStats {
    pub flushes: AtomicU64,
    pub requests: AtomicU64,
}

/// A queue of requests in front of one flusher thread.
pub struct Group<R, E> {
    sender: mpsc::Sender<Job<R, E>>,
    stats: Arc<GroupStats>,
    /// The error a request gets when the flusher thread is gone.
    gone: fn() -> E,
}

impl<R, E> Clone for Group<R, E> {
    fn clone(&self) -> Self {
        Group {
            sender: self.sender.clone(),
            stats: self.stats.clone(),
            gone: self.gone,
        }
    }
}

impl<R, E> std::fmt::Debug for Group<R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("stats", &self.stats).finish()
    }
}

impl<R: Send + 'static, E: Send + 'static> Group<R, E> {
    /// Starts the flusher thread. `flush` gets every request queued since
    /// the last flush, in order, and returns one result per request. The
    /// thread ends when the last handle is dropped.
    pub fn start(
        name: &str,
        gone: fn() -> E,
        mut flush: impl FnMut(Vec<R>) -> Vec<Result<(), E>> + Send + 'static,
    ) -> io::Result<Group<R, E>> {
        let (sender, receiver) = mpsc::channel::<Job<R, E>>();
        let stats = Arc::new(GroupStats::default());
        let counted = stats.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    let mut jobs = vec![first];
                    jobs.extend(receiver.try_iter());
                    counted.flushes.fetch_add(1, Ordering::Relaxed);
                    counted
                        .requests
                        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                    let (requests, answers): (Vec<R>, Vec<_>) =
                        jobs.into_iter().map(|job| (job.request, job.done)).unzip();
                    let mut results = flush(requests).into_iter();
                    for answer in answers {
                        // A flush that returned too few results answers the
                        // rest as failed: never a success it did not give.
                        let result = results.next().unwrap_or_else(|| Err(gone()));
                        let _ = answer.send(result);
                    }
                }
            })?;
        Ok(Group {
            sender,
            stats,
            gone,
        })
    }

    /// Queues `request` for the next flush and waits until it is durable.
    pub async fn submit(&self, request: R) -> Result<(), E> {
        let (done, answer) = tokio::sync::oneshot::channel();
        if self.sender.send(Job { request, done }).is_err() {
            return Err((self.gone)());
        }
        answer.await.unwrap_or_else(|_| Err((self.gone)()))
    }

    /// Queues every request for the next flush and waits until all are
    /// durable; the first failure is returned.
    pub async fn submit_all(&self, requests: Vec<R>) -> Result<(), E> {
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let (done, answer) = tokio::sync::oneshot::channel();
            if self.sender.send(Job { request, done }).is_err() {
                return Err((self.gone)());
            }
            answers.push(answer);
        }
        for answer in answers {
            answer.await.unwrap_or_else(|_| Err((self.gone)()))?;
        }
        Ok(())
    }

    /// The same, from a thread that is not async.
    pub fn submit_blocking(&self, request: R) -> Result<(), E> {
        let (done, answer) = tokio::sync::oneshot::channel();
        if self.sender.send(Job { request, done }).is_err() {
            return Err((self.gone)());
        }
        answer
            .blocking_recv()
            .unwrap_or_else(|_| Err((self.gone)()))
    }

    pub fn stats(&self) -> (u64, u64) {
        (
            self.stats.flushes.load(Ordering::Relaxed),
            self.stats.requests.load(Ordering::Relaxed),
        )
    }
}

/// One write to the journal, run inside the group's transaction.
pub type JournalOp = crate::journal::GroupOp;

/// Journal writes of every file in flight, many to one transaction.
#[derive(Clone, Debug)]
pub struct JournalWriter {
    group: Group<JournalOp, JournalError>,
}

impl JournalWriter {
    pub fn start(journal: Arc<Mutex<Journal>>) -> io::Result<JournalWriter> {
        let group = Group::start("journal-commit", journal_gone, move |ops| {
            let mut guard = lock(&journal);
            guard.in_one_transaction(ops)
        })?;
        Ok(JournalWriter { group })
    }

    /// Runs `op` in the next group transaction; returns once it is committed.
    pub async fn write(
        &self,
        op: impl FnOnce(&mut Journal) -> Result<(), JournalError> + Send + 'static,
    ) -> Result<(), JournalError> {
        self.group.submit(Box::new(op)).await
    }

    pub fn write_blocking(
        &self,
        op: impl FnOnce(&mut Journal) -> Result<(), JournalError> + Send + 'static,
    ) -> Result<(), JournalError> {
        self.group.submit_blocking(Box::new(op))
    }

    /// (transactions, writes) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.group.stats()
    }
}

fn journal_gone() -> JournalError {
    JournalError::other("the journal's commit thread stopped")
}

fn lock(journal: &Mutex<Journal>) -> std::sync::MutexGuard<'_, Journal> {
    // A panic while holding the lock cannot leave SQLite half-written
    // (transactions roll back), so a poisoned lock is still usable.
    journal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Folder fsyncs that make renames durable: every folder named since the
/// last flush is synced once.
#[derive(Clone, Debug)]
pub struct DirSync {
    group: Group<PathBuf, ClaimError>,
}

impl DirSync {
    pub fn start() -> io::Result<DirSync> {
        let group = Group::start("dir-sync", dir_sync_gone, |dirs: Vec<PathBuf>| {
            let unique: BTreeSet<&PathBuf> = dirs.iter().collect();
            let synced = sync_folders(unique.into_iter().collect());
            dirs.iter()
                .map(|dir| match synced.iter().find(|(done, _)| *done == dir) {
                    Some((_, Ok(()))) => Ok(()),
                    Some((_, Err(message))) => Err(ClaimError::Io {
                        path: dir.clone(),
                        source: io::Error::other(message.clone()),
                    }),
                    None => Err(dir_sync_gone()),
                })
                .collect()
        })?;
        Ok(DirSync { group })
    }

    /// Makes durable the renames into and out of the folder that holds `path`.
    pub async fn sync_dir_of(&self, path: &Path) -> Result<(), ClaimError> {
        self.group.submit(parent_of(path)).await
    }

    /// The folders of several paths, in the same flush.
    pub async fn sync_dirs_of(&self, paths: &[&Path]) -> Result<(), ClaimError> {
        self.group
            .submit_all(paths.iter().map(|path| parent_of(path)).collect())
            .await
    }

    pub fn sync_dir_of_blocking(&self, path: &Path) -> Result<(), ClaimError> {
        self.group.submit_blocking(parent_of(path))
    }

    /// (flushes, folder syncs asked for) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.group.stats()
    }
}

/// Each folder's fsync, all at once, one thread each: fsyncs that run
/// together share the file system's journal commit (ext4 batches them),
/// where one after the other each waits for its own. One result a folder,
/// in order.
fn sync_folders(dirs: Vec<&PathBuf>) -> Vec<(&PathBuf, Result<(), String>)> {
    let sync = |dir: &PathBuf| {
        File::open(dir)
            .and_then(|handle| handle.sync_all())
            .map_err(|err| err.to_string())
    };
    if dirs.len() < 2 {
        return dirs.into_iter().map(|dir| (dir, sync(dir))).collect();
    }
    std::thread::scope(|scope| {
        let running: Vec<_> = dirs
            .iter()
            .map(|&dir| {
                (
                    dir,
                    std::thread::Builder::new().spawn_scoped(scope, move || sync(dir)),
                )
            })
            .collect();
        running
            .into_iter()
            .map(|(dir, thread)| {
                let result = match thread {
                    Ok(thread) => thread
                        .join()
                        .unwrap_or_else(|_| Err("the folder fsync stopped".to_string())),
                    // No thread to spare: synced here.
                    Err(_) => sync(dir),
                };
                (dir, result)
            })
            .collect()
    })
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn dir_sync_gone() -> ClaimError {
    ClaimError::Io {
        path: PathBuf::from("."),
        source: io::Error::other("the folder-sync thread stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_queued_during_a_flush_share_the_next_one() {
        let flushes = Arc::new(Mutex::new(Vec::<usize>::new()));
        let seen = flushes.clone();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started, first_flush) = std::sync::mpsc::channel::<()>();
        let group: Group<u32, String> = Group::start(
            "test",
            || "gone".into(),
            move |requests| {
                let first = seen.lock().expect("lock").is_empty();
                seen.lock().expect("lock").push(requests.len());
                if first {
                    // Hold the first flush until the others are queued.
                    let _ = started.send(());
                    let _ = gate.recv();
                }
                requests.iter().map(|_| Ok(())).collect()
            },
        )
        .expect("start");
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.submit(0).await }
        });
        tokio::task::spawn_blocking(move || first_flush.recv())
            .await
            .expect("join")
            .expect("first flush started");
        // Ten requests arrive while the flusher is busy.
        let answers: Vec<_> = (1..=10)
            .map(|n| {
                let (done, answer) = tokio::sync::oneshot::channel();
                group.sender.send(Job { request: n, done }).expect("queued");
                answer
            })
            .collect();
        release.send(()).expect("release");
        first.await.expect("join").expect("first durable");
        for answer in answers {
            answer.await.expect("answered").expect("durable");
        }
        let flushes = flushes.lock().expect("lock").clone();
        assert_eq!(
            flushes,
            vec![1, 10],
            "alone, a request is flushed at once; the ten queued meanwhile share the next flush"
        );
        assert_eq!(group.stats(), (2, 11));
    }

    #[tokio::test]
    async fn a_failed_request_fails_alone() {
        let group: Group<u32, String> = Group::start(
            "test",
            || "gone".into(),
            |requests| {
                requests
                    .iter()
                    .map(|&n| {
                        if n == 2 {
                            Err(format!("bad {n}"))
                        } else {
                            Ok(())
                        }
                    })
                    .collect()
            },
        )
        .expect("start");
        assert_eq!(group.submit(1).await, Ok(()));
        assert_eq!(group.submit(2).await, Err("bad 2".to_string()));
        assert_eq!(group.submit(3).await, Ok(()));
    }

    #[test]
    fn folders_synced_together_each_get_their_own_result() {
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let (a, missing, b) = (
            a.path().to_path_buf(),
            PathBuf::from("/nonexistent-folder"),
            b.path().to_path_buf(),
        );
        let results = sync_folders(vec![&a, &missing, &b]);
        let outcome: Vec<(&PathBuf, bool)> = results
            .iter()
            .map(|(dir, result)| (*dir, result.is_ok()))
            .collect();
        assert_eq!(outcome, vec![(&a, true), (&missing, false), (&b, true)]);
    }

    #[test]
    fn a_folder_that_cannot_be_synced_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sync = DirSync::start().expect("start");
        sync.sync_dir_of_blocking(&dir.path().join("a"))
            .expect("sync");
        let missing = sync.sync_dir_of_blocking(Path::new("/nonexistent-folder/x"));
        assert!(
            missing.is_err(),
            "a folder that cannot be synced is an error"
        );
        assert_eq!(sync.stats().1, 2);
    }
}
