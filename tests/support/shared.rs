//! One image per board per test run, shared by every test binary that needs
//! it (the structure checks, the boots, the offline-route test).
//!
//! Each image is built the way a newcomer without network access builds it:
//! README command 1 (`piha build --board BOARD`, the embedded defaults) runs
//! in a fresh network namespace, where no package source answers, so piha
//! stops in its preflight and prints the offline route; that route, parsed
//! from the error, is run exactly as printed, from the same directory.
//!
//! Everything lives in `target/piha-images/BOARD/`: the lock, the stamp,
//! piha's error, the route, the build's summary and `out/`. An exclusive
//! `flock` on `.lock` guards a build; a shared one is held for as long as a
//! test binary uses the image, so no other binary rebuilds it underneath.
//! The stamp says which test run made the image and when its build started:
//! - with `PIHA_TEST_RUN` set (scripts/test exports one id per run), an image
//!   stamped with the same id is reused, any other is rebuilt;
//! - without it (one test binary run by hand), the image is rebuilt when the
//!   piha binary or any file it builds from (agent, config, runner, builder,
//!   overlays, boards, distros, examples) is newer than the build's start.
//!
//! Tests never write to the shared image: they stamp and boot copies.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{FlockOperation, flock};

use super::{piha, repo, run_ok};

/// A finished image of one board, built by the printed offline route.
pub struct Shared {
    /// `target/piha-images/BOARD`: where the route ran.
    pub dir: PathBuf,
    /// What README command 1 printed on stderr before it stopped.
    pub error: String,
    /// The offline route parsed from `error`, as run (`piha build ...`).
    pub route: Vec<String>,
    /// The build's stdout: piha's human summary.
    pub summary: String,
    /// `dir/out`: the image and everything written beside it.
    pub out: PathBuf,
    /// The raw `.img` in `out`.
    pub image: PathBuf,
    /// Held (shared) while this process uses the image.
    _lock: File,
}

impl Shared {
    /// A value of piha's human summary: the rest of the line that starts with
    /// `key` (`input hash`, `manifest`, `rootfs`, `seconds`).
    pub fn summary_field(&self, key: &str) -> &str {
        self.summary
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("piha's summary has no `{key}` line:\n{}", self.summary))
    }

    /// A path from the summary; relative paths are the route's working directory's.
    pub fn summary_path(&self, key: &str) -> PathBuf {
        let value = self.summary_field(key);
        let path = value.split(" (").next().unwrap_or(value);
        self.dir.join(path)
    }
}

/// The shared image of `board`: built by this call, or an earlier one of this
/// test run (see the module documentation), and memoised for this process.
pub fn shared_build(board: &str) -> &'static Shared {
    static BUILT: Mutex<BTreeMap<String, &'static Shared>> = Mutex::new(BTreeMap::new());
    // Held for the whole build: one build at a time in this process.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = built.get(board) {
        return s;
    }
    let s: &'static Shared = Box::leak(Box::new(build_or_reuse(board)));
    built.insert(board.to_string(), s);
    s
}

fn build_or_reuse(board: &str) -> Shared {
    let dir = repo().join("target/piha-images").join(board);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).unwrap_or_else(|e| panic!("creating {}: {e}", lock_path.display()));
    flock(&lock, FlockOperation::LockShared).unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    if let Some(s) = reuse(&dir, &lock) {
        return s;
    }
    // Converting the lock drops it first, so two converting processes never
    // wait on each other; whoever gets it second finds the first one's build.
    flock(&lock, FlockOperation::LockExclusive).unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    if let Some(s) = reuse(&dir, &lock) {
        flock(&lock, FlockOperation::LockShared).unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
        return s;
    }
    build(board, &dir);
    flock(&lock, FlockOperation::LockShared).unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    reuse(&dir, &lock).unwrap_or_else(|| panic!("{}: the build just made is not reusable", dir.display()))
}

const ERROR_FILE: &str = "offline-error.txt";
const ROUTE_FILE: &str = "route.txt";
const SUMMARY_FILE: &str = "summary.txt";
const STAMP_FILE: &str = "stamp";

/// The image in `dir`, if its stamp says it is this run's (or newer than every input).
fn reuse(dir: &Path, lock: &File) -> Option<Shared> {
    let stamp = std::fs::read_to_string(dir.join(STAMP_FILE)).ok()?;
    let field = |key: &str| stamp.lines().find_map(|l| l.strip_prefix(key)).map(str::to_string);
    let fresh = match std::env::var("PIHA_TEST_RUN") {
        Ok(run) => field("run=").as_deref() == Some(run.as_str()),
        Err(_) => {
            let started = field("started=")?.parse::<u64>().ok()?;
            newest_input() <= UNIX_EPOCH + Duration::from_nanos(started)
        }
    };
    if !fresh {
        return None;
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let out = dir.join("out");
    let image = single_image(&out)?;
    Some(Shared {
        dir: dir.to_path_buf(),
        error: read(ERROR_FILE)?,
        route: read(ROUTE_FILE)?.lines().map(str::to_string).collect(),
        summary: read(SUMMARY_FILE)?,
        out,
        image,
        _lock: lock.try_clone().expect("duplicating the lock file's descriptor"),
    })
}

/// Runs README command 1 offline, then the route it prints, in `dir`; stamps the result.
fn build(board: &str, dir: &Path) {
    for name in ["out", STAMP_FILE, ERROR_FILE, ROUTE_FILE, SUMMARY_FILE] {
        let path = dir.join(name);
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing the last build's {}: {e}", path.display()),
        }
    }
    let started = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos();
    let error = offline_error(board, dir);
    let route = route_of(&error);
    eprintln!(
        "{board}: running the printed offline route in {}: {}",
        dir.display(),
        route.join(" ")
    );
    let begin = std::time::Instant::now();
    let summary = run_ok(piha().args(&route[1..]).current_dir(dir));
    eprintln!("{board}: the offline route's build took {:?}", begin.elapsed());
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    };
    write(ERROR_FILE, &error);
    write(ROUTE_FILE, &route.join("\n"));
    write(SUMMARY_FILE, &summary);
    let run = std::env::var("PIHA_TEST_RUN").unwrap_or_default();
    // Last: an interrupted build leaves no stamp, so the next call builds again.
    write(STAMP_FILE, &format!("run={run}\nstarted={started}\n"));
}

/// README command 1 for `board` with the embedded defaults, run in `cwd` in
/// a fresh network namespace (no interface but a down loopback, so no source
/// answers, whatever the machine can reach): it must fail, naming the
/// unreachable sources and the offline route, and write nothing. Returns its stderr.
pub fn offline_error(board: &str, cwd: &Path) -> String {
    let mut cmd = Command::new("unshare");
    cmd.arg("--net").arg("--").arg(env!("CARGO_BIN_EXE_piha"));
    cmd.args(["build", "--board", board])
        .env("PIHA_CACHE_DIR", super::cache_dir())
        .current_dir(cwd);
    let had_out = cwd.join("out").exists();
    let begin = std::time::Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "`piha build --board {board}` succeeded without a network: {}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("Offline route: `"),
        "`piha build --board {board}` failed without printing the offline route ({}); \
         `unshare --net` needs root:\n{stderr}",
        out.status
    );
    assert!(
        begin.elapsed() < Duration::from_secs(60),
        "the preflight took {:?}: it must stop before any work",
        begin.elapsed()
    );
    assert!(
        had_out || !cwd.join("out").exists(),
        "the refused build wrote {}",
        cwd.join("out").display()
    );
    stderr
}

/// The first command of the `Offline route:` line, split into words as a
/// shell would (single quotes only: that is all piha prints).
pub fn route_of(error: &str) -> Vec<String> {
    let (_, rest) = error
        .split_once("Offline route: `")
        .unwrap_or_else(|| panic!("no offline route in:\n{error}"));
    let command = rest.split('`').next().expect("split yields one item");
    let mut words = Vec::new();
    let (mut word, mut quoted, mut any) = (String::new(), false, false);
    for c in command.chars() {
        match c {
            '\'' => (quoted, any) = (!quoted, true),
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in the offline route `{command}`");
    if any {
        words.push(word);
    }
    assert!(
        words.len() > 2 && words[0] == "piha" && words[1] == "build",
        "the offline route is not a `piha build` command: `{command}`"
    );
    words
}

/// The one `*.img` in `out`.
fn single_image(out: &Path) -> Option<PathBuf> {
    let images: Vec<PathBuf> = std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "img"))
        .collect();
    match images.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The newest modification time of the piha binary and of every file an
/// image is built from.
fn newest_input() -> SystemTime {
    let mut newest = mtime(Path::new(env!("CARGO_BIN_EXE_piha")));
    for top in [
        "agent",
        "config",
        "runner",
        "builder",
        "overlays",
        "boards",
        "distros",
        "examples",
        "Cargo.lock",
    ] {
        newest = newest.max(newest_under(&repo().join(top)));
    }
    newest
}

fn newest_under(path: &Path) -> SystemTime {
    let here = mtime(path);
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| newest_under(&e.path()))
            .fold(here, SystemTime::max),
        Err(_) => here,
    }
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::symlink_metadata(path).and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH)
}
