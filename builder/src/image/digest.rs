//! `SHA256SUMS`: one `<hex>  <name>` line per artifact, the format
//! `sha256sum -c SHA256SUMS` checks (two spaces: text mode, which on Linux is
//! the same as binary).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use anyhow::{Context, ensure};
use sha2::{Digest, Sha256};

/// The file name piha writes the sums to.
pub const FILE_NAME: &str = "SHA256SUMS";

/// The hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The file's text for `(sha256 hex, file name)` pairs, in the given order.
/// Names are plain file names: the sums are checked from their own directory.
pub fn render(entries: &[(String, String)]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (sum, name) in entries {
        ensure!(
            sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
            "{sum:?} is not a sha256 in hex"
        );
        // sha256sum escapes names with newlines or backslashes; piha's never have them.
        ensure!(
            !name.contains(['\n', '\\', '/']),
            "{name:?} cannot be listed in {FILE_NAME}: use a plain file name"
        );
        out.push_str(&format!("{sum}  {name}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{render, sha256_file};

    #[test]
    fn renders_sha256sum_lines() {
        let a = "a".repeat(64);
        let text = render(&[(a.clone(), "x.img".into()), (a.clone(), "x.bmap".into())]).unwrap();
        assert_eq!(text, format!("{a}  x.img\n{a}  x.bmap\n"));
        assert!(render(&[("nope".into(), "x".into())]).is_err());
        assert!(render(&[(a, "dir/x".into())]).is_err());
    }

    #[test]
    fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
