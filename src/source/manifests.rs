//! The manifests source: a directory of YAML/JSON files is the cluster.
//!
//! Every `*.yaml`, `*.yml`, `*.json` below the directory (hidden entries
//! skipped, symlinks followed so ConfigMap mounts work) is parsed; only files
//! whose size or mtime changed are parsed again. Changes are seen through
//! inotify (notify) with a slow poll as a backstop.

use crate::model::parse::{parse_text, DocError, Object};
use crate::model::Objects;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tracing::{info, warn};

/// A problem with one file (or the directory itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

#[derive(Debug)]
struct FileState {
    stamp: (SystemTime, u64),
    objects: Objects,
    errors: Vec<DocError>,
}

/// The parsed contents of a manifests directory.
#[derive(Debug)]
pub struct ManifestsDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    dir_error: Option<String>,
}

impl ManifestsDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestsDir {
            dir: dir.into(),
            files: BTreeMap::new(),
            dir_error: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-read what changed on disk. Returns true when anything changed;
    /// problems in newly read files are logged here, once per change.
    pub fn scan(&mut self) -> bool {
        let mut found = Vec::new();
        let dir_error = walk(&self.dir, &mut found, 0).err();
        let mut changed = false;
        if dir_error != self.dir_error {
            if let Some(e) = &dir_error {
                warn!(dir = %self.dir.display(), error = %e, "manifests directory unreadable; keeping what was loaded");
            }
            self.dir_error = dir_error.clone();
        }
        if dir_error.is_some() && found.is_empty() {
            // Directory gone or unreadable: keep serving the last good state.
            return false;
        }
        let before = self.files.len();
        self.files.retain(|p, _| found.iter().any(|(f, _)| f == p));
        changed |= self.files.len() != before;
        for (path, stamp) in found {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            changed = true;
            let mut state = read_file(&path, stamp);
            // A file that now yields nothing but errors (garbage, a
            // half-written save, binary junk) keeps its last good objects:
            // its routes stay up while someone fixes it. A partly valid file
            // loads what is valid.
            if state.objects.is_empty() && !state.errors.is_empty() {
                if let Some(prev) = self.files.get(&path).filter(|p| !p.objects.is_empty()) {
                    warn!(file = %path.display(), "file cannot be read as manifests; keeping its last good objects");
                    state.objects = prev.objects.clone();
                }
            }
            for e in &state.errors {
                warn!(file = %path.display(), object = e.object.as_deref().unwrap_or(""), error = %e.reason, document = e.doc, "manifest not loaded");
            }
            self.files.insert(path, state);
        }
        changed
    }

    /// Every object of every file; a later file wins on a duplicate key.
    ///
    /// The largest file's objects are cloned whole (a map clone copies its
    /// nodes without comparing keys) and the others merged around it: with
    /// one big file and a small one changing ten times a second, that is
    /// most of the cost of every snapshot.
    pub fn objects(&self) -> Objects {
        let Some((largest, _)) = self
            .files
            .values()
            .enumerate()
            .max_by_key(|(_, f)| f.objects.len())
        else {
            return Objects::default();
        };
        let mut all = Objects::default();
        for (i, f) in self.files.values().enumerate() {
            let o = &f.objects;
            if i == largest {
                // Files before it are already in `all`, and lose to it.
                let earlier = std::mem::replace(&mut all, o.clone());
                merge(&mut all, &earlier, false);
            } else {
                merge(&mut all, o, true);
            }
        }
        all
    }

    /// Every problem currently present: unreadable directory, bad files and
    /// documents.
    pub fn errors(&self) -> Vec<FileError> {
        let mut out: Vec<FileError> = self
            .dir_error
            .iter()
            .map(|e| FileError {
                path: self.dir.clone(),
                message: e.clone(),
            })
            .collect();
        for (p, f) in &self.files {
            out.extend(f.errors.iter().map(|e| FileError {
                path: p.clone(),
                message: e.to_string(),
            }));
        }
        out
    }
}

/// Add every object of `from` to `into`: over `into`'s on a duplicate key
/// when `from` is the later file (`later`), else only where `into` has none.
fn merge(into: &mut Objects, from: &Objects, later: bool) {
    fn kind<K: Ord + Clone, V: Clone>(
        into: &mut imbl::OrdMap<K, V>,
        from: &imbl::OrdMap<K, V>,
        later: bool,
    ) {
        for (k, v) in from {
            if later || !into.contains_key(k) {
                into.insert(k.clone(), v.clone());
            }
        }
    }
    kind(&mut into.routes, &from.routes, later);
    kind(&mut into.services, &from.services, later);
    kind(&mut into.endpoints, &from.endpoints, later);
    kind(&mut into.endpoint_slices, &from.endpoint_slices, later);
    kind(&mut into.ingresses, &from.ingresses, later);
    kind(&mut into.ingress_classes, &from.ingress_classes, later);
    kind(&mut into.namespaces, &from.namespaces, later);
    kind(&mut into.secrets, &from.secrets, later);
    kind(&mut into.origins, &from.origins, later);
}

const MAX_DEPTH: usize = 16;

fn walk(
    dir: &Path,
    out: &mut Vec<(PathBuf, (SystemTime, u64))>,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{} is nested too deep", dir.display()));
    }
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut first_err = None;
    for entry in rd.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue; // editor swap files, ConfigMap ..data
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Err(e) = walk(&path, out, depth + 1) {
                first_err.get_or_insert(e);
            }
        } else if meta.is_file()
            && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
        {
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((path, (mtime, meta.len())));
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Files larger than this are refused: a manifest is not a data dump.
const MAX_FILE_BYTES: u64 = 64 << 20;

fn read_file(path: &Path, stamp: (SystemTime, u64)) -> FileState {
    let fail = |reason: String| FileState {
        stamp,
        objects: Objects::default(),
        errors: vec![DocError {
            doc: 0,
            object: None,
            reason,
        }],
    };
    if stamp.1 > MAX_FILE_BYTES {
        return fail(format!("file is larger than {MAX_FILE_BYTES} bytes"));
    }
    let text = match std::fs::read(path) {
        Ok(b) => match String::from_utf8(b) {
            Ok(t) => t,
            Err(_) => return fail("not UTF-8".into()),
        },
        Err(e) => return fail(e.to_string()),
    };
    let json = path.extension().is_some_and(|e| e == "json");
    let (objs, errors) = parse_text(&text, json);
    let mut objects = Objects::default();
    let origin: Arc<str> = Arc::from(path.display().to_string());
    for o in objs {
        let m = o.meta();
        let ns = match o {
            Object::Namespace(_) | Object::IngressClass(_) => String::new(),
            _ => format!("{}/", m.ns()),
        };
        objects
            .origins
            .insert(format!("{} {ns}{}", o.kind(), m.name), origin.clone());
        objects.insert(o);
    }
    FileState {
        stamp,
        objects,
        errors,
    }
}

/// How often the directory is rescanned even without an inotify event.
const POLL: Duration = Duration::from_secs(2);
/// Events closer together than this are one change (editors write twice).
const SETTLE: Duration = Duration::from_millis(30);

/// Watch `dir` on a dedicated thread and publish a snapshot on every change.
/// The first snapshot is published before this returns.
pub fn spawn_watch(mut manifests: ManifestsDir) -> watch::Receiver<Arc<Objects>> {
    manifests.scan();
    let objects = manifests.objects();
    info!(dir = %manifests.dir().display(), objects = objects.len(), "manifests loaded");
    let (tx, rx) = watch::channel(Arc::new(objects));
    let (ev_tx, ev_rx) = std::sync::mpsc::channel::<()>();
    let watcher = {
        use notify::Watcher;
        let ev_tx = ev_tx.clone();
        let w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Our own scans open and read the files: those access events must
            // not start another scan, or the watcher feeds itself.
            let relevant = match res {
                Ok(ev) => !matches!(ev.kind, notify::EventKind::Access(_)),
                Err(_) => true,
            };
            if relevant {
                let _ = ev_tx.send(());
            }
        });
        match w {
            Ok(mut w) => match w.watch(manifests.dir(), notify::RecursiveMode::Recursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    warn!(error = %e, "cannot watch manifests directory; polling every {}s", POLL.as_secs());
                    None
                }
            },
            Err(e) => {
                warn!(error = %e, "no file watcher; polling");
                None
            }
        }
    };
    let spawned = std::thread::Builder::new()
        .name("manifests-watch".into())
        .spawn(move || {
            crate::priority::control_plane_thread();
            let _watcher = watcher; // dropping it stops the events
                                    // Set after a changed scan: quiet a second later (the parse's
                                    // garbage goes back to the system), then poll as usual.
            let mut scanned = false;
            loop {
                match crate::priority::recv_or_quiet(&ev_rx, &mut scanned, Some(POLL)) {
                    Ok(()) => {
                        std::thread::sleep(SETTLE);
                        while ev_rx.try_recv().is_ok() {}
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                if tx.is_closed() {
                    return;
                }
                let started = std::time::Instant::now();
                if manifests.scan() {
                    let objects = manifests.objects();
                    info!(objects = objects.len(), "manifests changed");
                    if tx.send(Arc::new(objects)).is_err() {
                        return;
                    }
                    scanned = true;
                    // A snapshot of a big directory takes milliseconds (every
                    // key is copied): after one that took T, wait T before
                    // the next, so a file rewritten many times a second costs
                    // at most half this thread's share, and the rewrites in
                    // between fold into one snapshot (as compiles do).
                    std::thread::sleep(started.elapsed());
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the manifests watcher thread; changes will not be seen");
    }
    drop(ev_tx);
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reparses_only_changed_files_and_drops_deleted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n";
        std::fs::write(dir.path().join("a.yaml"), svc).unwrap();
        std::fs::write(dir.path().join("b.yml"), "not: [valid").unwrap();
        std::fs::write(
            dir.path().join(".swap.yaml"),
            svc.replace("name: a", "name: hidden"),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/c.json"),
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"c"}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let mut m = ManifestsDir::new(dir.path());
        assert!(m.scan());
        let o = m.objects();
        assert_eq!(o.services.len(), 2, "{o:?}");
        assert_eq!(m.errors().len(), 1);
        assert!(!m.scan(), "nothing changed");
        let before = m.objects();
        std::fs::remove_file(dir.path().join("sub/c.json")).unwrap();
        assert!(m.scan());
        assert_eq!(m.objects().services.len(), 1);
        // Unchanged files keep their objects' identity.
        let a = ("default".to_owned(), "a".to_owned());
        assert!(Arc::ptr_eq(&before.services[&a], &m.objects().services[&a]));
    }

    #[test]
    fn missing_directory_is_an_error_not_a_panic() {
        let mut m = ManifestsDir::new("/nonexistent/gatehouse");
        assert!(!m.scan());
        assert_eq!(m.errors().len(), 1);
    }

    #[test]
    fn a_later_file_wins_a_duplicate_key_whichever_file_is_largest() {
        let dir = tempfile::tempdir().unwrap();
        let svc = |name: &str, port: i64| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: {port}}}]}}\n---\n")
        };
        // a (earlier) and c (later) both define `dup`; b, in between, is the
        // largest file and defines it too.
        std::fs::write(dir.path().join("a.yaml"), svc("dup", 1) + &svc("only-a", 1)).unwrap();
        let big: String = (0..20).map(|i| svc(&format!("b{i}"), 2)).collect();
        std::fs::write(dir.path().join("b.yaml"), svc("dup", 2) + &big).unwrap();
        std::fs::write(dir.path().join("c.yaml"), svc("late", 3)).unwrap();
        let mut m = ManifestsDir::new(dir.path());
        assert!(m.scan());
        let port = |o: &Objects, name: &str| {
            let s = &o.services[&("default".to_owned(), name.to_owned())];
            s.spec.ports[0].port
        };
        let o = m.objects();
        assert_eq!(o.services.len(), 23);
        assert_eq!(port(&o, "dup"), 2, "b is later than a");
        assert_eq!(port(&o, "only-a"), 1);
        std::fs::write(dir.path().join("c.yaml"), svc("late", 3) + &svc("dup", 3)).unwrap();
        assert!(m.scan());
        let o = m.objects();
        assert_eq!(port(&o, "dup"), 3, "c is later than b");
        assert_eq!(o.origins.len(), 23);
    }
}
