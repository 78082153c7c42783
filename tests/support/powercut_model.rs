//! What a power cut leaves on disk: the durability model of the power-cut
//! file system (`powercut_fs.rs`), kept apart from FUSE so that it can be
//! tested on its own.
//!
//! The live tree is the backing folder as the programs see it. Beside it the
//! model keeps what is *durable*:
//!
//! - for each file, a shadow copy of its content as of its last
//!   `fsync`/`fdatasync` (made on the first change after the mount; a file
//!   created since the mount starts empty), plus the byte ranges written since;
//! - for each folder, its entries as of its last `fsync`. Creates, renames
//!   and unlinks are *pending* until an `fsync` of a folder they touch. A
//!   rename is atomic: the `fsync` of either of its two folders makes the
//!   whole rename durable (as a journaling file system does), together with
//!   the earlier pending operations on the same names (a create, then a
//!   rename of what it created). A new folder is durable only once the
//!   folder holding it is synced: what is inside an unsynced new folder is
//!   lost with it.
//!
//! At the cut, [`Model::crash_image`] builds the folder as after a power
//! loss, in the pessimistic model: pending namespace operations did not
//! happen (or, sometimes, only a prefix of them, in order, did: what a
//! journal that commits in order could leave), and each file's unsynced
//! writes are lost, kept, torn page by page, or turned into garbage.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub type NodeId = u64;
pub const ROOT: NodeId = 1;
const PAGE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    /// Where it is now: `None` once unlinked (its data then waits in the
    /// graveyard, in case the crash brings its name back).
    place: Option<(NodeId, OsString)>,
    /// Live entries (folders only).
    children: BTreeMap<OsString, NodeId>,
    /// Durable content (files only), once changed since the mount.
    shadow: Option<Shadow>,
}

#[derive(Debug)]
struct Shadow {
    path: PathBuf,
    len: u64,
    /// Byte ranges written since the last sync, as (start, end).
    dirty: Vec<(u64, u64)>,
    /// The smallest size the file was cut to since the last sync.
    cut_to: Option<u64>,
}

/// A namespace change, pending until a folder it touches is synced.
#[derive(Debug, Clone)]
enum NsOp {
    Link {
        dir: NodeId,
        name: OsString,
        node: NodeId,
    },
    Unlink {
        dir: NodeId,
        name: OsString,
        node: NodeId,
    },
    Rename {
        from: (NodeId, OsString),
        to: (NodeId, OsString),
        node: NodeId,
    },
}

impl NsOp {
    fn entries(&self) -> Vec<(NodeId, &OsStr)> {
        match self {
            NsOp::Link { dir, name, .. } | NsOp::Unlink { dir, name, .. } => {
                vec![(*dir, name.as_os_str())]
            }
            NsOp::Rename { from, to, .. } => {
                vec![(from.0, from.1.as_os_str()), (to.0, to.1.as_os_str())]
            }
        }
    }

    fn touches(&self, dir: NodeId) -> bool {
        self.entries().iter().any(|(d, _)| *d == dir)
    }

    fn apply(&self, durable: &mut HashMap<NodeId, BTreeMap<OsString, NodeId>>) {
        match self {
            NsOp::Link { dir, name, node } => {
                durable.entry(*dir).or_default().insert(name.clone(), *node);
            }
            NsOp::Unlink { dir, name, node } => {
                let entries = durable.entry(*dir).or_default();
                if entries.get(name) == Some(node) {
                    entries.remove(name);
                }
            }
            NsOp::Rename { from, to, node } => {
                let source = durable.entry(from.0).or_default();
                if source.get(&from.1) == Some(node) {
                    source.remove(&from.1);
                }
                durable.entry(to.0).or_default().insert(to.1.clone(), *node);
            }
        }
    }
}

/// How a file's unsynced writes come out of the crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Gone: the content as of the last sync.
    Lost,
    /// All of them reached the disk.
    Kept,
    /// Page by page, some did; the length is the old or the new one.
    Torn,
    /// The size grew but the data blocks did not: random bytes.
    Garbage,
}

/// What a cut threw away, for the test's log.
#[derive(Debug, Default, Clone)]
pub struct CutSummary {
    pub pending_ops: usize,
    pub pending_kept: usize,
    pub files: usize,
    pub files_with_unsynced_data: usize,
    pub tails: BTreeMap<String, usize>,
}

pub struct Model {
    backing: PathBuf,
    shadows: PathBuf,
    graves: PathBuf,
    nodes: HashMap<NodeId, Node>,
    durable: HashMap<NodeId, BTreeMap<OsString, NodeId>>,
    pending: Vec<NsOp>,
    next_id: NodeId,
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_string())
}

impl Model {
    /// The model of `backing` as it is now, all of it durable. `shadows` and
    /// `graves` are empty folders of the same file system as `backing`.
    pub fn load(backing: &Path, shadows: &Path, graves: &Path) -> io::Result<Model> {
        let mut model = Model {
            backing: backing.to_path_buf(),
            shadows: shadows.to_path_buf(),
            graves: graves.to_path_buf(),
            nodes: HashMap::new(),
            durable: HashMap::new(),
            pending: Vec::new(),
            next_id: ROOT + 1,
        };
        model.nodes.insert(ROOT, Model::new_node(Kind::Dir, None));
        model.durable.insert(ROOT, BTreeMap::new());
        model.scan(ROOT, backing)?;
        Ok(model)
    }

    fn new_node(kind: Kind, place: Option<(NodeId, OsString)>) -> Node {
        Node {
            kind,
            place,
            children: BTreeMap::new(),
            shadow: None,
        }
    }

    fn scan(&mut self, dir: NodeId, path: &Path) -> io::Result<()> {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let kind = match entry.file_type()? {
                kind if kind.is_dir() => Kind::Dir,
                kind if kind.is_file() => Kind::File,
                _ => continue,
            };
            let name = entry.file_name();
            let id = self.add_node(kind, dir, &name);
            self.durable
                .entry(dir)
                .or_default()
                .insert(name.clone(), id);
            if kind == Kind::Dir {
                self.durable.insert(id, BTreeMap::new());
                self.scan(id, &entry.path())?;
            }
        }
        Ok(())
    }

    fn add_node(&mut self, kind: Kind, dir: NodeId, name: &OsStr) -> NodeId {
        let id = self.next_id;
        self.next_id += 1;
        self.nodes
            .insert(id, Model::new_node(kind, Some((dir, name.to_os_string()))));
        if let Some(parent) = self.nodes.get_mut(&dir) {
            parent.children.insert(name.to_os_string(), id);
        }
        id
    }

    pub fn kind(&self, node: NodeId) -> Option<Kind> {
        self.nodes.get(&node).map(|n| n.kind)
    }

    pub fn child(&self, dir: NodeId, name: &OsStr) -> Option<NodeId> {
        self.nodes.get(&dir)?.children.get(name).copied()
    }

    /// Live entries of a folder, in name order.
    pub fn children(&self, dir: NodeId) -> Vec<(OsString, NodeId, Kind)> {
        let Some(node) = self.nodes.get(&dir) else {
            return Vec::new();
        };
        node.children
            .iter()
            .map(|(name, id)| (name.clone(), *id, self.nodes[id].kind))
            .collect()
    }

    pub fn parent(&self, node: NodeId) -> Option<NodeId> {
        self.nodes.get(&node)?.place.as_ref().map(|(dir, _)| *dir)
    }

    /// Where the node's data is in the backing folder (or the graveyard).
    pub fn path(&self, node: NodeId) -> PathBuf {
        let mut names = Vec::new();
        let mut current = node;
        while current != ROOT {
            match self.nodes.get(&current).and_then(|n| n.place.as_ref()) {
                Some((dir, name)) => {
                    names.push(name.clone());
                    current = *dir;
                }
                None => {
                    let mut path = self.graves.join(current.to_string());
                    path.extend(names.iter().rev());
                    return path;
                }
            }
        }
        let mut path = self.backing.clone();
        path.extend(names.iter().rev());
        path
    }

    /// A file or folder was created in the backing folder at `dir/name`.
    pub fn created(&mut self, dir: NodeId, name: &OsStr, kind: Kind) -> io::Result<NodeId> {
        let id = self.add_node(kind, dir, name);
        match kind {
            Kind::Dir => {
                self.durable.insert(id, BTreeMap::new());
            }
            Kind::File => {
                let path = self.shadows.join(id.to_string());
                File::create(&path)?;
                self.nodes.get_mut(&id).expect("new node").shadow = Some(Shadow {
                    path,
                    len: 0,
                    dirty: Vec::new(),
                    cut_to: None,
                });
            }
        }
        self.pending.push(NsOp::Link {
            dir,
            name: name.to_os_string(),
            node: id,
        });
        Ok(id)
    }

    /// Unlinks `dir/name`: the data goes to the graveyard (moved there by
    /// the model, so that a crash that brings the name back has it).
    pub fn unlink(&mut self, dir: NodeId, name: &OsStr) -> io::Result<NodeId> {
        let node = self
            .child(dir, name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if self.kind(node) == Some(Kind::Dir) {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        let from = self.path(node);
        fs::rename(&from, self.graves.join(node.to_string()))?;
        self.detach(node);
        self.pending.push(NsOp::Unlink {
            dir,
            name: name.to_os_string(),
            node,
        });
        Ok(node)
    }

    fn detach(&mut self, node: NodeId) {
        if let Some((dir, name)) = self.nodes.get_mut(&node).and_then(|n| n.place.take()) {
            if let Some(parent) = self.nodes.get_mut(&dir) {
                parent.children.remove(&name);
            }
        }
    }

    /// Renames `from` to `to` in the backing folder and the model; what
    /// `to` named before goes to the graveyard.
    pub fn rename(
        &mut self,
        from: (NodeId, &OsStr),
        to: (NodeId, &OsStr),
        no_replace: bool,
    ) -> io::Result<()> {
        let node = self
            .child(from.0, from.1)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if from.0 == to.0 && from.1 == to.1 {
            return Ok(());
        }
        let replaced = self.child(to.0, to.1);
        if replaced.is_some() && no_replace {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        let (source, target) = (self.path(node), self.path_of_entry(to.0, to.1));
        if let Some(old) = replaced {
            if self.kind(old) == Some(Kind::Dir) {
                // rename(2) replaces only an empty folder: let it say so.
                if !self.nodes[&old].children.is_empty() {
                    return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
                }
                fs::remove_dir(&target)?;
            } else {
                fs::rename(&target, self.graves.join(old.to_string()))?;
            }
            self.detach(old);
        }
        fs::rename(&source, &target)?;
        self.detach(node);
        self.nodes.get_mut(&node).expect("node").place = Some((to.0, to.1.to_os_string()));
        self.nodes
            .get_mut(&to.0)
            .expect("target folder")
            .children
            .insert(to.1.to_os_string(), node);
        self.pending.push(NsOp::Rename {
            from: (from.0, from.1.to_os_string()),
            to: (to.0, to.1.to_os_string()),
            node,
        });
        Ok(())
    }

    pub fn path_of_entry(&self, dir: NodeId, name: &OsStr) -> PathBuf {
        self.path(dir).join(name)
    }

    /// Removes the empty folder `dir/name`.
    pub fn rmdir(&mut self, dir: NodeId, name: &OsStr) -> io::Result<()> {
        let node = self
            .child(dir, name)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if self.kind(node) != Some(Kind::Dir) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        fs::remove_dir(self.path(node))?;
        self.detach(node);
        self.pending.push(NsOp::Unlink {
            dir,
            name: name.to_os_string(),
            node,
        });
        Ok(())
    }

    /// Makes sure the file has a shadow before it changes.
    fn shadow_mut(&mut self, node: NodeId) -> io::Result<&mut Shadow> {
        let needs_copy = match self.nodes.get(&node) {
            Some(n) if n.kind == Kind::File => n.shadow.is_none(),
            _ => return Err(invalid("not a file")),
        };
        if needs_copy {
            let path = self.shadows.join(node.to_string());
            let len = fs::copy(self.path(node), &path)?;
            self.nodes.get_mut(&node).expect("node").shadow = Some(Shadow {
                path,
                len,
                dirty: Vec::new(),
                cut_to: None,
            });
        }
        Ok(self
            .nodes
            .get_mut(&node)
            .and_then(|n| n.shadow.as_mut())
            .expect("shadow"))
    }

    /// Called before `len` bytes are written at `offset`.
    pub fn will_write(&mut self, node: NodeId, offset: u64, len: u64) -> io::Result<()> {
        let shadow = self.shadow_mut(node)?;
        if len > 0 {
            add_range(&mut shadow.dirty, offset, offset + len);
        }
        Ok(())
    }

    /// Called before the file's size is set to `size`.
    pub fn will_truncate(&mut self, node: NodeId, size: u64) -> io::Result<()> {
        let shadow = self.shadow_mut(node)?;
        shadow.cut_to = Some(shadow.cut_to.map_or(size, |cut| cut.min(size)));
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its content as it is now is durable.
    pub fn sync_file(&mut self, node: NodeId) -> io::Result<()> {
        let source_path = self.path(node);
        let Some(shadow) = self.nodes.get_mut(&node).and_then(|n| n.shadow.as_mut()) else {
            return Ok(()); // unchanged since the mount
        };
        let source = File::open(&source_path)?;
        let len = source.metadata()?.len();
        let target = OpenOptions::new().write(true).open(&shadow.path)?;
        if let Some(cut) = shadow.cut_to.take() {
            target.set_len(shadow.len.min(cut))?;
        }
        let mut buffer = Vec::new();
        for (start, end) in shadow.dirty.drain(..) {
            let end = end.min(len);
            if start >= end {
                continue;
            }
            buffer.resize((end - start) as usize, 0);
            source.read_exact_at(&mut buffer, start)?;
            target.write_all_at(&buffer, start)?;
        }
        target.set_len(len)?;
        shadow.len = len;
        Ok(())
    }

    /// `fsync` of a folder: the pending operations on its entries (and the
    /// earlier ones they build on) are durable.
    pub fn sync_dir(&mut self, dir: NodeId) {
        let mut include = vec![false; self.pending.len()];
        let mut names: HashSet<(NodeId, OsString)> = HashSet::new();
        for index in (0..self.pending.len()).rev() {
            let op = &self.pending[index];
            let related = op.touches(dir)
                || op
                    .entries()
                    .iter()
                    .any(|(d, n)| names.contains(&(*d, n.to_os_string())));
            if related {
                include[index] = true;
                for (d, n) in op.entries() {
                    names.insert((d, n.to_os_string()));
                }
            }
        }
        let pending = std::mem::take(&mut self.pending);
        for (op, included) in pending.into_iter().zip(include) {
            if included {
                op.apply(&mut self.durable);
            } else {
                self.pending.push(op);
            }
        }
    }

    /// Everything as it is now becomes durable (like `sync` with every
    /// folder and file synced): for setting up a test.
    pub fn sync_everything(&mut self) -> io::Result<()> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].kind == Kind::File && self.nodes[&id].place.is_some() {
                self.sync_file(id)?;
            }
        }
        let pending = std::mem::take(&mut self.pending);
        for op in pending {
            op.apply(&mut self.durable);
        }
        Ok(())
    }

    pub fn pending_ops(&self) -> usize {
        self.pending.len()
    }

    /// Writes into `out` (an empty folder) the tree a power cut now would
    /// leave. `random` gives the choices (the test's seeded generator).
    pub fn crash_image(
        &self,
        out: &Path,
        random: &mut dyn FnMut() -> u64,
    ) -> io::Result<CutSummary> {
        let mut summary = CutSummary {
            pending_ops: self.pending.len(),
            ..CutSummary::default()
        };
        let mut durable = self.durable.clone();
        // Half the time nothing pending happened; else an ordered prefix did.
        if !self.pending.is_empty() && random() % 2 == 1 {
            let kept = 1 + (random() % self.pending.len() as u64) as usize;
            for op in &self.pending[..kept] {
                op.apply(&mut durable);
            }
            summary.pending_kept = kept;
        }
        let mut seen = HashSet::new();
        self.write_dir(ROOT, out, &durable, &mut seen, random, &mut summary)?;
        Ok(summary)
    }

    fn write_dir(
        &self,
        dir: NodeId,
        out: &Path,
        durable: &HashMap<NodeId, BTreeMap<OsString, NodeId>>,
        seen: &mut HashSet<NodeId>,
        random: &mut dyn FnMut() -> u64,
        summary: &mut CutSummary,
    ) -> io::Result<()> {
        let Some(entries) = durable.get(&dir) else {
            return Ok(());
        };
        for (name, node) in entries {
            if !seen.insert(*node) {
                continue; // never two names for one node
            }
            let target = out.join(name);
            match self.nodes[node].kind {
                Kind::Dir => {
                    fs::create_dir(&target)?;
                    self.write_dir(*node, &target, durable, seen, random, summary)?;
                }
                Kind::File => {
                    let content = self.crashed_content(*node, random, summary)?;
                    fs::write(&target, content)?;
                }
            }
        }
        Ok(())
    }

    fn crashed_content(
        &self,
        node: NodeId,
        random: &mut dyn FnMut() -> u64,
        summary: &mut CutSummary,
    ) -> io::Result<Vec<u8>> {
        summary.files += 1;
        let live = read_all(&self.path(node))?;
        let Some(shadow) = &self.nodes[&node].shadow else {
            return Ok(live); // unchanged since the mount
        };
        let synced = read_all(&shadow.path)?;
        let unsynced = !shadow.dirty.is_empty() || shadow.cut_to.is_some() || synced != live;
        if !unsynced {
            return Ok(synced);
        }
        summary.files_with_unsynced_data += 1;
        let tail = match random() % 10 {
            0..=3 => Tail::Lost,
            4..=5 => Tail::Kept,
            6..=7 => Tail::Torn,
            _ => Tail::Garbage,
        };
        *summary.tails.entry(format!("{tail:?}")).or_default() += 1;
        Ok(match tail {
            Tail::Lost => synced,
            Tail::Kept => live,
            Tail::Garbage => {
                let mut content = synced;
                while content.len() < live.len() {
                    content.push((random() % 256) as u8);
                }
                content
            }
            Tail::Torn => {
                let len = if random() % 2 == 0 {
                    synced.len()
                } else {
                    live.len()
                };
                let mut content = synced;
                content.resize(len, 0);
                let mut page = 0u64;
                while page * PAGE < len as u64 {
                    let (start, end) = (page * PAGE, ((page + 1) * PAGE).min(len as u64));
                    if random() % 2 == 0 && (start as usize) < live.len() {
                        let end = (end as usize).min(live.len());
                        content[start as usize..end].copy_from_slice(&live[start as usize..end]);
                    }
                    page += 1;
                }
                content
            }
        })
    }
}

fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    let mut content = Vec::new();
    File::open(path)?.read_to_end(&mut content)?;
    Ok(content)
}

/// Adds [start, end) to a list of ranges, merging neighbours.
fn add_range(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    if let Some(last) = ranges.last_mut() {
        if start <= last.1 && end >= last.0 {
            last.0 = last.0.min(start);
            last.1 = last.1.max(end);
            return;
        }
    }
    ranges.push((start, end));
    if ranges.len() > 256 {
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(s, e) in ranges.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *ranges = merged;
    }
}
