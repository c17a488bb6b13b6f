//! The build's one timestamp: every mtime in `root.tar`, the ext4 root's
//! times, and the `SOURCE_DATE_EPOCH` mmdebstrap gets. `$SOURCE_DATE_EPOCH`
//! when set (the reproducible-builds convention: seconds since 1970), else a
//! fixed default, so two builds of the same inputs give the same bytes.

use anyhow::Context;

/// The epoch when SOURCE_DATE_EPOCH is not set (2023-11-14).
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 1_700_000_000;

/// Reads `$SOURCE_DATE_EPOCH` once, at the start of a build.
pub fn source_date_epoch() -> anyhow::Result<u64> {
    parse(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())
}

fn parse(value: Option<&str>) -> anyhow::Result<u64> {
    match value {
        Some(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970")),
        None => Ok(DEFAULT_SOURCE_DATE_EPOCH),
    }
}

#[cfg(test)]
mod tests {
    use super::{DEFAULT_SOURCE_DATE_EPOCH, parse};

    #[test]
    fn set_or_default() {
        assert_eq!(parse(Some(" 1234 ")).unwrap(), 1234);
        assert_eq!(parse(None).unwrap(), DEFAULT_SOURCE_DATE_EPOCH);
        assert!(parse(Some("yesterday")).unwrap_err().to_string().contains("SOURCE_DATE_EPOCH"));
    }
}
