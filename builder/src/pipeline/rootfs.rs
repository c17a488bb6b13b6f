//! Stage 1, rootfs: mmdebstrap → `rootfs.tar`, cached by a hash of
//! everything that goes into it.
//!
//! mmdebstrap runs in root mode as root (unshare mode otherwise) with:
//! - the initramfs configured BEFORE the kernel is installed (a setup hook):
//!   `MODULES=list` and the board's module list, so update-initramfs never
//!   scans every module — the dominant cost of an emulated arm64 build;
//! - dpkg path excludes for man pages, docs, locales, info and the board's
//!   unneeded kernel modules;
//! - the admin user `piha` (uid 1000, sudo, locked password) made in a
//!   customize hook;
//! - downloaded .debs kept in `<cache>/debs/<distro>-<arch>` and synced in
//!   into the chroot before apt runs and out of it afterwards,
//!   so a rebuild with a changed package list downloads only what is new.
//!
//! The tarball is written under a temporary name and renamed into
//! `<cache>/rootfs-<key>.tar`; a lock file serializes builds of one key.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_atomic::TempPath;
use piha_runner::{Cmd, Runner};
use serde::Serialize;

use crate::inputs::board::Family;
use crate::pipeline::Env;
use crate::pipeline::cache::Cache;
use crate::pipeline::identity::sha256_hex;
use crate::pipeline::manifest::Package;
use crate::pipeline::plan::{Plan, ROOTFS_RECIPE_VERSION};

/// Documentation, manual pages and translations: never read on an appliance.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
];

/// Where the board's initramfs module list goes: a modules.d file, not the
/// `/etc/initramfs-tools/modules` conffile, so installing initramfs-tools
/// afterwards raises no conffile question.
pub const INITRAMFS_MODULES_FILE: &str = "usr/share/initramfs-tools/modules.d/piha-board.conf";
pub const INITRAMFS_CONF_FILE: &str = "etc/initramfs-tools/conf.d/piha.conf";

/// The admin user every image has: the one the node's files are rendered for.
pub use piha_config::render::ADMIN_USER;
pub const ADMIN_UID: u64 = piha_config::render::ADMIN_UID as u64;

/// The result of stage 1.
#[derive(Debug, Clone, Serialize)]
pub struct Rootfs {
    pub path: PathBuf,
    pub key: String,
    /// Whether the cached tarball was used (the summary reports it once, as `rootfs_cache`).
    #[serde(skip)]
    pub cache: Cache,
    pub size: u64,
}

/// How the root filesystem is made, besides the plan: what goes into the
/// mmdebstrap command line and so into the cache key.
struct Recipe {
    keys: Vec<RepoKey>,
    setup_hook: String,
    customize_hook: String,
    /// The board's rendered `rootfs_files`, if any.
    files: Option<PathBuf>,
    epoch: u64,
}

/// Everything that determines the rootfs, hashed into its cache key.
#[derive(Debug, Serialize)]
struct KeyMaterial<'a> {
    recipe: u32,
    mmdebstrap: &'a str,
    distro_file: &'a str,
    arch: &'a str,
    mirrors: Vec<String>,
    extra_repos: Vec<String>,
    packages: &'a [String],
    bundle: Vec<(String, String)>,
    keys: Vec<(String, String)>,
    modules: &'a [String],
    dpkg_excludes: Vec<String>,
    /// The mmdebstrap command line with the cache directory replaced by
    /// `@CACHE@`: every option, hook and source, whatever changes in them.
    command: String,
}

/// Runs stage 1, or reuses the cached tarball.
pub fn ensure(plan: &Plan, env: &Env, no_cache: bool) -> anyhow::Result<Rootfs> {
    let cache = env.cache.as_path();
    std::fs::create_dir_all(cache).with_context(|| format!("creating the cache directory {}", cache.display()))?;
    let recipe = Recipe {
        keys: fetch_keys(plan, cache, env.runner)?,
        setup_hook: setup_hook(plan)?,
        customize_hook: customize_hook(),
        files: stage_rootfs_files(plan, cache)?,
        epoch: env.epoch,
    };
    let key = cache_key(plan, &recipe, cache, env.runner)?;
    let out = cache.join(format!("rootfs-{key}.tar"));

    // One build per key at a time; a second process waits, then finds the tarball.
    let lock_path = cache.join(format!("rootfs-{key}.lock"));
    let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).with_context(|| format!("locking {}", lock_path.display()))?;
    if out.exists() && !no_cache {
        let size = std::fs::metadata(&out).with_context(|| format!("reading {}", out.display()))?.len();
        env.progress.note(&format!(
            "rootfs: cached {} ({})",
            out.display(),
            crate::progress::human_bytes(size)
        ));
        return Ok(Rootfs {
            path: out,
            key,
            cache: Cache::Hit,
            size,
        });
    }
    build(plan, &recipe, &out, env)?;
    let size = std::fs::metadata(&out).with_context(|| format!("reading {}", out.display()))?.len();
    Ok(Rootfs {
        path: out,
        key,
        cache: Cache::Miss,
        size,
    })
}

/// The cache key: a hash of everything that determines the root filesystem.
fn cache_key(plan: &Plan, recipe: &Recipe, cache: &Path, runner: &dyn Runner) -> anyhow::Result<String> {
    let version = runner
        .run(&Cmd::new("mmdebstrap").arg("--version"))?
        .stdout_str()
        .trim()
        .to_string();
    let material = KeyMaterial {
        recipe: ROOTFS_RECIPE_VERSION,
        mmdebstrap: &version,
        distro_file: &plan.req.distro_text,
        arch: plan.arch.deb(),
        mirrors: plan.sources.iter().map(|s| s.line(&plan.req.distro.keyring)).collect(),
        extra_repos: plan.extra_repos.iter().map(|r| r.repo.url.clone()).collect(),
        packages: &plan.packages,
        bundle: plan
            .bundle_debs
            .iter()
            .map(|p| {
                Ok((
                    p.display().to_string(),
                    sha256_hex(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
                ))
            })
            .collect::<anyhow::Result<_>>()?,
        keys: recipe.keys.iter().map(|k| (k.name.clone(), k.sha256.clone())).collect(),
        modules: &plan.req.board.initramfs.modules,
        dpkg_excludes: plan.req.board.dpkg_excludes(),
        command: command(plan, recipe, &cache.join("@OUT@"), &cache.join("@DEBS@"))
            .display()
            .replace(&cache.display().to_string(), "@CACHE@"),
    };
    Ok(sha256_hex(serde_json::to_string(&material)?.as_bytes()))
}

/// Runs mmdebstrap into a temporary name and renames the tarball to `out`.
fn build(plan: &Plan, recipe: &Recipe, out: &Path, env: &Env) -> anyhow::Result<()> {
    let debs = debs_dir(&env.cache, plan);
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    // `--format=tar` is explicit, so the temporary name needs no extension.
    let tmp = TempPath::new(out).with_context(|| format!("naming a temporary file beside {}", out.display()))?;
    let cmd = command(plan, recipe, tmp.path(), &debs);
    let task = env.progress.task(&format!(
        "rootfs: mmdebstrap {} {} ({} packages)",
        plan.req.distro.suite,
        plan.arch,
        plan.packages.len()
    ));
    env.runner
        .run(&cmd)
        .with_context(|| format!("building the {} {} root filesystem", plan.req.distro.name, plan.arch))?;
    tmp.commit().with_context(|| format!("putting {} in place", out.display()))?;
    task.finish();
    Ok(())
}

/// Where the .debs of a distro and architecture are kept between builds.
pub fn debs_dir(cache: &Path, plan: &Plan) -> PathBuf {
    cache.join("debs").join(format!("{}-{}", plan.req.distro.name, plan.arch.deb()))
}

/// After a fresh rootfs: drops cached .debs that are not the installed
/// version of an installed package (superseded by mirror updates), so the
/// cache holds one root filesystem's worth. Returns how many were removed.
pub fn prune_debs(dir: &Path, installed: &[Package]) -> anyhow::Result<usize> {
    // apt names a download `<name>_<version, ':' as %3a>_<arch>.deb`.
    let keep: BTreeSet<String> = installed
        .iter()
        .map(|p| format!("{}_{}_{}.deb", p.name, p.version.replace(':', "%3a"), p.architecture))
        .collect();
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    for e in entries {
        let path = e.with_context(|| format!("reading {}", dir.display()))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".deb") && !keep.contains(&name) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A downloaded repository key, staged for mmdebstrap.
#[derive(Debug, Clone)]
struct RepoKey {
    name: String,
    /// `<cache>/keys/<digest of the key URLs>/piha-<repo>.asc`.
    path: PathBuf,
    sha256: String,
}

/// Downloads (once) each extra repository's signing key into the cache.
fn fetch_keys(plan: &Plan, cache: &Path, runner: &dyn Runner) -> anyhow::Result<Vec<RepoKey>> {
    let mut out = Vec::new();
    // One directory per set of key URLs: mmdebstrap's --keyring takes one directory.
    let urls: Vec<&str> = plan.extra_repos.iter().map(|r| r.repo.key.as_str()).collect();
    let dir = cache.join("keys").join(&sha256_hex(urls.join("\n").as_bytes())[..16]);
    for r in &plan.extra_repos {
        let name = format!("piha-{}.asc", r.name);
        let path = dir.join(&name);
        if !path.exists() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let tmp = TempPath::new(&path).with_context(|| format!("naming a temporary file beside {}", path.display()))?;
            runner
                .run(
                    &Cmd::new("curl")
                        .args(["-fsSL", "--max-time", "30", "-o"])
                        .arg(tmp.path())
                        .arg(&r.repo.key),
                )
                .with_context(|| format!("downloading the signing key of the {} from {}", r.what, r.repo.key))?;
            tmp.commit().with_context(|| format!("putting {} in place", path.display()))?;
        }
        let sha256 = sha256_hex(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        out.push(RepoKey { name, path, sha256 });
    }
    Ok(out)
}

/// Writes the initramfs configuration before any package is installed.
fn setup_hook(plan: &Plan) -> anyhow::Result<String> {
    let board = &plan.req.board;
    for m in &board.initramfs.modules {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            bail!(
                "{}: initramfs.modules: {m:?} is not a module name (fix: letters, digits, _ and - only)",
                plan.req.board_file.display()
            );
        }
    }
    Ok(format!(
        "set -e; mkdir -p \"$1/etc/initramfs-tools/conf.d\" \"$1/usr/share/initramfs-tools/modules.d\"; \
         printf '# piha: the initramfs holds only the modules listed in /{INITRAMFS_MODULES_FILE}\\nMODULES=list\\n' > \"$1/{INITRAMFS_CONF_FILE}\"; \
         printf '# piha: modules board {} needs to mount its root filesystem\\n' > \"$1/{INITRAMFS_MODULES_FILE}\"; \
         printf '%s\\n' {} >> \"$1/{INITRAMFS_MODULES_FILE}\"",
        board.name,
        board.initramfs.modules.join(" ")
    ))
}

/// The programs whose work is deferred to one run at the end of stage 1, by
/// family: `update-initramfs` (the kernel's postinst and initramfs-tools'
/// trigger would each build an initramfs) and `depmod` (run natively on the
/// host instead). Paths as the packages ship them: bookworm's kmod still has
/// `/sbin/depmod`, noble's has moved it to `/usr/sbin`.
fn deferred_programs(family: Family) -> [&'static str; 2] {
    match family {
        Family::Debian => ["/usr/sbin/update-initramfs", "/sbin/depmod"],
        Family::Ubuntu => ["/usr/sbin/update-initramfs", "/usr/sbin/depmod"],
    }
}

/// After the essential packages: divert the deferred programs to no-ops, and
/// put empty SSH host keys in place so openssh-server's postinst skips
/// `ssh-keygen` (emulated, slow, and keys every card would share; each node
/// makes its own on first boot, overlays/base piha-ssh-hostkeys.service).
fn essential_hooks(family: Family) -> Vec<String> {
    let programs = deferred_programs(family).join(" ");
    vec![
        format!(
            "set -e; for t in {programs}; do chroot \"$1\" dpkg-divert --quiet --local --rename --add \"$t\"; \
             printf '#!/bin/sh\\n# piha: deferred to the end of the root filesystem build\\nexit 0\\n' > \"$1$t\"; chmod 755 \"$1$t\"; done"
        ),
        "set -e; mkdir -p \"$1/etc/ssh\"; for t in rsa ecdsa ed25519; do : > \"$1/etc/ssh/ssh_host_${t}_key\"; done".to_string(),
    ]
}

/// At the end: the board's root filesystem files, the deferred programs put
/// back, `depmod` once per kernel on the host (kmod reads modules of any
/// architecture; seconds instead of minutes under qemu-user), one initramfs
/// per kernel (whose post-update hooks, e.g. raspi-firmware, fill
/// /boot/firmware), and the SSH key placeholders removed.
fn final_hooks(family: Family, files: Option<&Path>) -> Vec<String> {
    let programs = deferred_programs(family).join(" ");
    let mut v = Vec::new();
    if let Some(dir) = files {
        v.push(format!("sync-in {} /", dir.display()));
    }
    v.push(format!(
        "set -e; for t in {programs}; do rm -f \"$1$t\"; done; \
         for t in {programs}; do chroot \"$1\" dpkg-divert --quiet --local --rename --remove \"$t\"; done"
    ));
    v.push("set -e; for k in \"$1\"/lib/modules/*; do [ -d \"$k\" ] || continue; depmod -b \"$1\" \"${k##*/}\"; done".to_string());
    v.push("set -e; if [ -x \"$1/usr/sbin/update-initramfs\" ]; then chroot \"$1\" update-initramfs -c -k all; fi".to_string());
    v.push("rm -f \"$1\"/etc/ssh/ssh_host_*".to_string());
    v
}

/// Renders the board's `rootfs_files` for this family into
/// `<cache>/rootfs-files/<digest>/`, which a customize hook syncs into the
/// root filesystem. `None` when the board has none.
fn stage_rootfs_files(plan: &Plan, cache: &Path) -> anyhow::Result<Option<PathBuf>> {
    let board = &plan.req.board;
    let Some(files) = board.rootfs_files.get(&plan.req.distro.family).filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    let hb = crate::pipeline::customize::template_engine();
    let ctx = serde_json::json!({
        "board": board.name,
        "root_label": board.partitions.root.label,
        "boot_label": board.partitions.boot.label,
        "boot_mount": board.partitions.boot.mount,
    });
    let mut rendered = Vec::new();
    for (path, template) in files {
        let text = hb.render_template(template, &ctx).with_context(|| {
            format!(
                "{}: rootfs_files.{}.{path}",
                plan.req.board_file.display(),
                plan.req.distro.family.as_str()
            )
        })?;
        rendered.push((path.clone(), text));
    }
    let digest = sha256_hex(serde_json::to_string(&rendered)?.as_bytes());
    let dir = cache.join("rootfs-files").join(&digest[..16]);
    if !dir.is_dir() {
        let tmp = cache.join("rootfs-files").join(format!(".{}.partial", &digest[..16]));
        let _ = std::fs::remove_dir_all(&tmp);
        for (path, text) in &rendered {
            let to = tmp.join(path);
            std::fs::create_dir_all(to.parent().expect("relative path has a parent"))
                .with_context(|| format!("creating {}", tmp.display()))?;
            std::fs::write(&to, text).with_context(|| format!("writing {}", to.display()))?;
        }
        std::fs::rename(&tmp, &dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    }
    Ok(Some(dir))
}

/// Creates the admin user: in the sudo group, password locked (login by SSH key only).
fn customize_hook() -> String {
    format!(
        "set -e; chroot \"$1\" useradd --create-home --uid {ADMIN_UID} --user-group --groups sudo --shell /bin/bash --comment 'piha admin' {ADMIN_USER}; \
         chroot \"$1\" passwd --lock {ADMIN_USER} >/dev/null"
    )
}

/// The mmdebstrap command writing the tarball `out`, with `debs` as its .deb cache.
fn command(plan: &Plan, recipe: &Recipe, out: &Path, debs: &Path) -> Cmd {
    let family = plan.req.distro.family;
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    let mut cmd = Cmd::new("mmdebstrap")
        .arg(if root { "--mode=root" } else { "--mode=unshare" })
        .arg("--variant=apt")
        .arg("--format=tar")
        .arg(format!("--architectures={}", plan.arch.deb()))
        .arg(format!("--include={}", plan.packages.join(",")));
    for deb in &plan.bundle_debs {
        cmd = cmd.arg(format!("--include={}", deb.display()));
    }
    cmd = cmd
        .args(dpkg_options(plan))
        .arg(format!("--setup-hook={}", recipe.setup_hook))
        .args(keyring_options(&recipe.keys));
    if !plan.bundle_debs.is_empty() {
        cmd = cmd.arg("--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount");
    }
    // Merged /usr by usr-is-merged when the release has it, so the essential
    // set does not pull in usrmerge and perl (about 45 MiB) to convert it.
    cmd = cmd.arg("--hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr");
    // The .deb cache: sync-in before and sync-out after, so what was
    // downloaded stays for the next build.
    cmd = cmd
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1/var/cache/apt/archives/\"")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", debs.display()));
    for hook in essential_hooks(family) {
        cmd = cmd.arg(format!("--essential-hook={hook}"));
    }
    for hook in final_hooks(family, recipe.files.as_deref()) {
        cmd = cmd.arg(format!("--customize-hook={hook}"));
    }
    cmd = cmd
        .arg(format!("--customize-hook={}", recipe.customize_hook))
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", debs.display()))
        .arg(&plan.req.distro.suite)
        .arg(out);
    for s in &plan.sources {
        cmd = cmd.arg(s.line(&plan.req.distro.keyring));
    }
    for r in &plan.extra_repos {
        cmd = cmd.arg(format!("deb {} /", r.repo.url));
    }
    cmd.env("SOURCE_DATE_EPOCH", recipe.epoch.to_string())
}

/// `--dpkgopt`s: the path excludes every image has, then the board's.
fn dpkg_options(plan: &Plan) -> Vec<String> {
    let common = DPKG_EXCLUDES.iter().map(|opt| format!("--dpkgopt={opt}"));
    let board = plan
        .req
        .board
        .dpkg_excludes()
        .into_iter()
        .map(|p| format!("--dpkgopt=path-exclude={p}"));
    common.chain(board).collect()
}

/// The extra repositories' keys: mmdebstrap's own apt trusts them through
/// --keyring; the image's apt finds them in trusted.gpg.d for later upgrades.
fn keyring_options(keys: &[RepoKey]) -> Vec<String> {
    let Some(dir) = keys.first().and_then(|k| k.path.parent()) else {
        return Vec::new();
    };
    let mut copy = String::from("copy-in");
    for k in keys {
        copy.push(' ');
        copy.push_str(&k.path.display().to_string());
    }
    copy.push_str(" /etc/apt/trusted.gpg.d/");
    vec![format!("--keyring={}", dir.display()), format!("--setup-hook={copy}")]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{essential_hooks, final_hooks, prune_debs};
    use crate::inputs::board::Family;
    use crate::pipeline::manifest::Package;

    #[test]
    fn initramfs_and_depmod_run_once_at_the_end() {
        let early = essential_hooks(Family::Debian).join("\n");
        assert!(early.contains("dpkg-divert --quiet --local --rename --add \"$t\""), "{early}");
        assert!(early.contains("/usr/sbin/update-initramfs /sbin/depmod"), "{early}");
        assert!(early.contains("ssh_host_${t}_key"), "{early}");
        // noble's kmod ships /usr/sbin/depmod: the diversion must name the package's path.
        assert!(essential_hooks(Family::Ubuntu).join("\n").contains("/usr/sbin/depmod"));

        let late = final_hooks(Family::Debian, Some(Path::new("/c/rootfs-files/x")));
        let at = |needle: &str| {
            late.iter()
                .position(|h| h.contains(needle))
                .unwrap_or_else(|| panic!("no {needle} in {late:?}"))
        };
        // The board's files (raspi-firmware's inputs) are in place before the
        // one initramfs run whose hooks read them; depmod before mkinitramfs.
        assert!(at("sync-in /c/rootfs-files/x /") < at("update-initramfs -c -k all"));
        assert!(at("--remove") < at("depmod -b"));
        assert!(at("depmod -b") < at("update-initramfs -c -k all"));
        assert!(at("ssh_host_*") > at("update-initramfs -c -k all"));
        assert!(!final_hooks(Family::Debian, None).iter().any(|h| h.starts_with("sync-in")));
    }

    #[test]
    fn prune_keeps_installed_versions_only() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "systemd_252.38-1~deb12u1_amd64.deb",
            "systemd_252.36-1~deb12u1_amd64.deb",
            "libc6_2.36-9+deb12u10_amd64.deb",
            "lock",
            "dpkg_1%3a1.21.22_amd64.deb",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let installed = [
            Package {
                name: "systemd".into(),
                version: "252.38-1~deb12u1".into(),
                architecture: "amd64".into(),
            },
            Package {
                name: "dpkg".into(),
                version: "1:1.21.22".into(),
                architecture: "amd64".into(),
            },
        ];
        assert_eq!(prune_debs(dir.path(), &installed).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["dpkg_1%3a1.21.22_amd64.deb", "lock", "systemd_252.38-1~deb12u1_amd64.deb"]);
    }
}
