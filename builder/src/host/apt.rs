//! The host's apt sources, read to find a Debian mirror when a distro file says
//! `mirror: host`: the deb822 `*.sources` files under `/etc/apt/sources.list.d/`
//! and the one-line `sources.list` format
//! (<https://manpages.debian.org/bookworm/apt/sources.list.5.en.html>).
//! Using the host's own mirror means a build works wherever `apt-get` works,
//! behind a local mirror or proxy, without piha naming any mirror host.

use std::path::{Path, PathBuf};

/// One `deb` source: a URI and the suites it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// Where it was read, for messages.
    pub file: PathBuf,
}

/// Parses deb822 source paragraphs (`Types:`, `URIs:`, `Suites:`, `Components:`,
/// `Enabled:`). Only `deb` types count; `Enabled: no` paragraphs are skipped.
pub fn parse_deb822(file: &Path, text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for paragraph in paragraphs(text) {
        let field = |name: &str| -> Vec<String> {
            paragraph
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        if !field("Types").iter().any(|t| t == "deb") {
            continue;
        }
        if field("Enabled").first().is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let suites = field("Suites");
        let components = field("Components");
        for uri in field("URIs") {
            out.push(AptSource {
                uri,
                suites: suites.clone(),
                components: components.clone(),
                file: file.to_path_buf(),
            });
        }
    }
    out
}

/// Splits deb822 text into paragraphs of (field, value) with continuation
/// lines joined and comments dropped.
fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut all = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !current.is_empty() {
                all.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            current.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !current.is_empty() {
        all.push(current);
    }
    all
}

/// Parses one-line sources: `deb [options] URI SUITE [COMPONENT...]`.
pub fn parse_one_line(file: &Path, text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb").filter(|r| r.starts_with([' ', '\t'])) else {
            continue;
        };
        let mut rest = rest.trim_start();
        // Options in brackets may contain spaces: `[ arch=amd64 signed-by=/k.gpg ]`.
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            file: file.to_path_buf(),
        });
    }
    out
}

/// Every source configured under `root` (normally `/`): `etc/apt/sources.list`,
/// then `etc/apt/sources.list.d/*.list` and `*.sources` in name order, as apt reads them.
pub fn host_sources(root: &Path) -> Vec<AptSource> {
    let etc = root.join("etc/apt");
    let mut out = Vec::new();
    let main = etc.join("sources.list");
    if let Ok(text) = std::fs::read_to_string(&main) {
        out.extend(parse_one_line(&main, &text));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(etc.join("sources.list.d"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => out.extend(parse_deb822(&f, &text)),
            Some("list") => out.extend(parse_one_line(&f, &text)),
            _ => {}
        }
    }
    out
}

/// The URI of the first source that serves `suite` (exact suite name), with
/// any trailing `/` removed.
pub fn mirror_for_suite(sources: &[AptSource], suite: &str) -> Option<String> {
    sources
        .iter()
        .find(|s| s.suites.iter().any(|x| x == suite))
        .map(|s| s.uri.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{mirror_for_suite, parse_deb822, parse_one_line};

    #[test]
    fn deb822_paragraphs_and_continuations() {
        let text = "Types: deb deb-src\n# comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n Signed-By: x\n\nTypes: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\nEnabled: yes\n\nTypes: deb\nURIs: http://off.example/\nSuites: trixie\nEnabled: no\n";
        let s = parse_deb822(Path::new("t.sources"), text);
        assert_eq!(s.len(), 2);
        assert_eq!(mirror_for_suite(&s, "bookworm").as_deref(), Some("http://mirror.example/debian"));
        assert_eq!(
            mirror_for_suite(&s, "bookworm-security").as_deref(),
            Some("http://sec.example/debian-security")
        );
        assert_eq!(mirror_for_suite(&s, "trixie"), None);
    }

    #[test]
    fn one_line_with_options() {
        let text = "# deb http://old/ bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\ndeb-src http://m.example/debian bookworm main\n";
        let s = parse_one_line(Path::new("sources.list"), text);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].components, vec!["main", "contrib"]);
        assert_eq!(mirror_for_suite(&s, "bookworm").as_deref(), Some("http://m.example/debian"));
    }
}
