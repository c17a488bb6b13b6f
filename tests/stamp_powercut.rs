//! A power cut at any point of `piha stamp`. A card stamped for cp1 (the CA
//! keys, the token) is stamped again for w1 through a target that fails
//! after K bytes, for K swept across every range where the new PIHA-CFG
//! filesystem differs from the old (each range's edges, and points inside).
//! mtools copies each result's files out (this host's kernel has no vfat to
//! mount it with), and the real agent reads them as its next boot would
//! (`piha-agent check-card`). Every result must be the old complete card,
//! the new complete card, or a card the agent refuses: never node.yaml of
//! one with secrets of the other.

// Tests run the binaries under test and the host tools (mtools) directly, as
// a user's shell would; clippy.toml's ban on Command::new is for piha's own
// code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use piha::card::secrets;
use piha::card::stamp::{self, Identity};
use piha::device::target::{FailingTarget, Failure, FileTarget};
use piha_config::cluster::ClusterFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Card {
    Old,
    New,
    Refused,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

/// What the agent makes of the card in `img`, and its words.
fn read_by_agent(img: &Path) -> (Card, String) {
    let card = tempfile::tempdir().expect("tempdir");
    // MTOOLS_SKIP_CHECK: read with the first FAT, as the kernel does, even
    // when a cut left the second copy stale.
    let copy = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-n", "-i"])
        .arg(img)
        .arg("::/*")
        .arg(card.path())
        .output()
        .expect("mcopy runs");
    if !copy.status.success() {
        // A FAT that cannot be read: boot-piha.mount fails or the files do,
        // and the agent finds no usable card.
        return (Card::Refused, format!("unreadable FAT: {}", String::from_utf8_lossy(&copy.stderr)));
    }
    let root = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_piha-agent"))
        .arg("check-card")
        .arg("--root")
        .arg(root.path())
        .arg("--config-dir")
        .arg(card.path())
        .output()
        .expect("piha-agent runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let card = match out.status.code() {
        Some(0) if said.contains("node cp1 (control-plane)") => Card::Old,
        Some(0) if said.contains("node w1 (worker)") => Card::New,
        Some(2) if said.starts_with("refused: ") => Card::Refused,
        _ => panic!("piha-agent check-card said something else ({:?}):\n{said}", out.status),
    };
    (card, said)
}

/// The byte ranges where `a` and `b` differ, 512-byte sectors apart merged.
fn differences(a: &[u8], b: &[u8]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            let i = i as u64;
            match out.last_mut() {
                Some(r) if i <= r.end + 512 => r.end = i + 1,
                _ => out.push(i..i + 1),
            }
        }
    }
    out
}

/// Where to cut: 0 and the end, each differing range's edges, and points
/// inside each range and across the whole span.
fn cut_points(diffs: &[Range<u64>], len: u64) -> Vec<u64> {
    let mut k = vec![0, len];
    for r in diffs {
        k.extend([r.start, r.start + 1, r.end.saturating_sub(1), r.end]);
        let step = ((r.end - r.start) / 8).max(1);
        k.extend((r.start..r.end).step_by(step as usize));
    }
    if let (Some(first), Some(last)) = (diffs.first(), diffs.last()) {
        let step = ((last.end - first.start) / 64).max(1);
        k.extend((first.start..last.end).step_by(step as usize));
    }
    k.sort_unstable();
    k.dedup();
    k
}

#[test]
fn a_stamp_cut_short_anywhere_leaves_the_old_card_the_new_card_or_one_the_agent_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster_path = dir.path().join("cluster.yaml");
    std::fs::copy(repo().join("examples/qemu-lab.yaml"), &cluster_path).expect("copy the example");
    let cluster = ClusterFile::load(&cluster_path).expect("the example parses");
    let secrets_dir = dir.path().join("secrets");
    secrets::ensure(&cluster_path, &secrets_dir, &cluster).expect("piha init's secrets");
    let id = |node| Identity {
        cluster: &cluster,
        cluster_path: &cluster_path,
        secrets_dir: &secrets_dir,
        node,
    };

    // The old card (cp1: every CA key and the token), and the new one (w1).
    let old_img = dir.path().join("old.img");
    stamp::partition_image(id("cp1"), &old_img).expect("stamp cp1");
    let new_img = dir.path().join("new.img");
    std::fs::copy(&old_img, &new_img).expect("copy");
    stamp::onto(id("w1"), &mut FileTarget::open_existing(&new_img).expect("open")).expect("stamp w1");
    let old = std::fs::read(&old_img).expect("old");
    let new = std::fs::read(&new_img).expect("new");
    let diffs = differences(&old, &new);
    assert!(!diffs.is_empty(), "the two stamps wrote the same bytes");
    let cuts = cut_points(&diffs, old.len() as u64);

    let work = dir.path().join("work.img");
    let mut seen: BTreeMap<Card, Vec<u64>> = BTreeMap::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for &k in &cuts {
        std::fs::write(&work, &old).expect("the old card again");
        let mut target = FailingTarget::new(FileTarget::open_existing(&work).expect("open"), Failure::AfterBytes(k));
        let stamped = stamp::onto(id("w1"), &mut target);
        drop(target);
        let (card, said) = read_by_agent(&work);
        if k < new.len() as u64 && stamped.is_ok() {
            // Only a write that needed no byte past K succeeds early.
            assert_eq!(
                std::fs::read(&work).expect("work"),
                new,
                "K={k}: stamp succeeded but the card is not the new one"
            );
        }
        if card == Card::Refused && std::env::var_os("SHOW").is_some() {
            eprintln!("K={k}: {said}");
        }
        if card == Card::Refused {
            let why = [
                ("checksum line", "node.yaml torn (checksum line)"),
                ("do not match the digests", "a secret not as stamped (digest)"),
                ("holds none", "node.yaml lists secrets the card lacks"),
                ("unreadable FAT", "unreadable FAT"),
            ]
            .iter()
            .find(|(needle, _)| said.contains(needle))
            .map_or_else(|| said.chars().take(120).collect(), |(_, why)| why.to_string());
            *refusals.entry(why).or_default() += 1;
        }
        seen.entry(card).or_default().push(k);
    }
    eprintln!(
        "{} cuts over {} differing range(s) {:?}: {:?}; refusals: {refusals:#?}",
        cuts.len(),
        diffs.len(),
        diffs,
        seen.iter().map(|(c, ks)| (c, ks.len())).collect::<Vec<_>>()
    );
    assert_eq!(
        seen.get(&Card::Old).and_then(|k| k.first()),
        Some(&0),
        "a cut before any byte leaves the old card"
    );
    assert!(
        seen.get(&Card::New).is_some_and(|k| k.contains(&(old.len() as u64))),
        "a finished stamp is the new card"
    );
}
