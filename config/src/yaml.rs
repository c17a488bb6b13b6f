//! Reading any YAML file piha takes (the cluster file, board and distro
//! files, `node.yaml` on a card): one gate before the parser, one way to
//! report what the parser says.
//!
//! The gate strips a UTF-8 byte-order mark and refuses, at once, a file
//! larger than [`MAX_BYTES`] or nested deeper than [`MAX_DEPTH`]: yaml_serde
//! builds its whole event list before it deserializes, in time that grows
//! with the square of the nesting (64 000 `[` took 7.5 s here, a 2 MB file
//! hangs), while saphyr-parser's event stream stops at the first level too
//! deep. No piha file is deeper than 6 or larger than a few KiB.

use std::path::Path;

use saphyr_parser::{Event, Parser};
use serde::de::DeserializeOwned;

use crate::problem::{Problem, Problems, clip};

/// The largest YAML file piha reads. A 50-node cluster file is about 8 KiB.
pub const MAX_BYTES: usize = 256 * 1024;
/// The deepest nesting of mappings and sequences piha reads.
pub const MAX_DEPTH: usize = 16;

/// `text` without a leading byte-order mark, once it is small and shallow
/// enough to parse; else the one problem that says which limit it passed.
pub fn gate<'a>(file: &Path, text: &'a str, fix: &str) -> Result<&'a str, Problems> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let refuse = |message: String| Problems(vec![Problem::error(file, "", message, fix)]);
    if text.len() > MAX_BYTES {
        return Err(refuse(format!(
            "the file is {} bytes; piha reads YAML files of at most {MAX_BYTES} bytes",
            text.len()
        )));
    }
    let mut depth = 0usize;
    for event in Parser::new_from_str(text) {
        match event {
            Ok((Event::SequenceStart(..) | Event::MappingStart(..), span)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(refuse(format!(
                        "it nests mappings and sequences deeper than {MAX_DEPTH} levels (line {})",
                        span.start.line()
                    )));
                }
            }
            Ok((Event::SequenceEnd | Event::MappingEnd, _)) => depth = depth.saturating_sub(1),
            Ok(_) => {}
            // The parser's own limits (e.g. its recursion limit) and syntax
            // errors: yaml_serde would report the same syntax error, but only
            // after the slow part.
            Err(e) => return Err(refuse(format!("not YAML piha can read: {}", clip(&e.to_string())))),
        }
    }
    Ok(text)
}

/// Parses a whole file as `T` after the gate; a parse error is one problem
/// (yaml_serde stops at the first), clipped, with `fix`.
pub fn from_str<T: DeserializeOwned>(file: &Path, text: &str, fix: &str) -> Result<T, Problems> {
    let text = gate(file, text, fix)?;
    yaml_serde::from_str(text).map_err(|e| Problems(vec![Problem::error(file, "", e.to_string(), fix)]))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{MAX_BYTES, MAX_DEPTH, from_str, gate};

    #[derive(Debug, serde::Deserialize)]
    struct Doc {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let doc: Doc = from_str(Path::new("c.yaml"), "\u{feff}name: x\n", "fix").expect("BOM is fine");
        assert_eq!(doc.name, "x");
    }

    #[test]
    fn deep_nesting_is_refused_at_once_whatever_the_size() {
        for (what, text) in [
            ("flow", format!("name: {}{}", "[".repeat(100_000), "]".repeat(100_000))),
            (
                "block",
                (0..40).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect::<String>() + "x\n",
            ),
        ] {
            let text = text.chars().take(MAX_BYTES).collect::<String>();
            let err = gate(Path::new("c.yaml"), &text, "keep it flat").expect_err(what).to_string();
            assert!(err.contains("c.yaml") && err.contains("keep it flat"), "{what}: {err}");
            assert!(
                err.contains(&format!("deeper than {MAX_DEPTH} levels")) || err.contains("recursion limit"),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn a_file_past_the_size_limit_is_refused_with_its_size() {
        let text = format!("name: {}\n", "x".repeat(MAX_BYTES));
        let err = gate(Path::new("c.yaml"), &text, "fix").expect_err("too big").to_string();
        assert!(err.contains(&format!("{} bytes", text.len())), "{err}");
        assert!(err.len() < 400, "the value is not echoed: {err}");
    }

    #[test]
    fn a_syntax_error_is_clipped() {
        let text = format!("name: \"{}\n  - x", "y".repeat(10_000));
        let err = gate(Path::new("c.yaml"), &text, "fix").expect_err("bad YAML").to_string();
        assert!(err.len() < 600, "{err}");
    }
}
