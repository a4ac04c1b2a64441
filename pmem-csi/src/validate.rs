//! Validation of untrusted request fields: volume names/IDs, paths and size quantities.
//!
//! Everything that reaches a command line or a file-system path goes through here first.

use crate::error::{Error, Result};
use std::path::Path;

/// Longest accepted volume name or ID, in bytes (the CSI spec asks for at least 128).
pub const MAX_NAME_LEN: usize = 128;

/// Longest accepted path (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Checks a volume name or volume ID.
///
/// Accepted: 1..=128 bytes of `[A-Za-z0-9._-]`, starting with a letter or digit. This excludes
/// `/`, `..`, whitespace and control characters, and anything a command could read as an option.
pub fn volume_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} missing in request")));
    }
    if id.len() > MAX_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "{what} too long: {} bytes, at most {MAX_NAME_LEN} allowed",
            id.len()
        )));
    }
    let first = id.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(Error::InvalidArgument(format!(
            "{what} {:?} must start with a letter or digit",
            id
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::InvalidArgument(format!(
            "{what} {:?} contains the invalid character {:?}",
            id, c
        )));
    }
    if id.contains("..") {
        return Err(Error::InvalidArgument(format!(
            "{what} {:?} contains \"..\"",
            id
        )));
    }
    Ok(())
}

/// Checks a target or staging path given by the CO: absolute, normalised, no control characters.
pub fn target_path(what: &str, path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} missing in request")));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(Error::InvalidArgument(format!("{what} too long")));
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "{what} contains control characters"
        )));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "{what} {path:?} is not absolute"
        )));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(Error::InvalidArgument(format!(
            "{what} {path:?} contains . or .."
        )));
    }
    if p.parent().is_none() {
        return Err(Error::InvalidArgument(format!("{what} must not be /")));
    }
    Ok(())
}

/// Parses a Kubernetes resource quantity (`500Mi`, `1Gi`, `2G`, `1.5Gi`, `1048576`) into bytes.
pub fn parse_quantity(s: &str) -> Result<u64> {
    let bad = || {
        Error::InvalidArgument(format!(
            "invalid size {s:?}: expected a quantity like 500Mi"
        ))
    };
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "P" => 1000u64.pow(5),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return Err(bad()),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if frac.contains('.') || frac.len() > 9 {
        return Err(bad());
    }
    let int: u64 = int.parse().map_err(|_| bad())?;
    let mut bytes = int.checked_mul(mult).ok_or_else(bad)?;
    if !frac.is_empty() {
        let digits: u64 = frac.parse().map_err(|_| bad())?;
        let scale = 10u64.pow(frac.len() as u32);
        // Round fractional bytes up, like Kubernetes does for storage requests.
        let part = (u128::from(digits) * u128::from(mult)).div_ceil(u128::from(scale));
        bytes = bytes
            .checked_add(u64::try_from(part).map_err(|_| bad())?)
            .ok_or_else(bad)?;
    }
    if bytes == 0 {
        return Err(bad());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["pvc-0b6e0e6d-1234", "a", "csi-0123abcdef", "Sanity_Vol.1"] {
            volume_id("name", ok).unwrap();
        }
        volume_id("name", &"a".repeat(MAX_NAME_LEN)).unwrap();
        for bad in [
            "", "../etc", "a/b", "a..b", "-rf", ".hidden", "a b", "a\nb", "a\u{7}", "é", "a;rm",
            "$(x)",
        ] {
            let e = volume_id("name", bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}");
        }
        assert!(volume_id("name", &"a".repeat(MAX_NAME_LEN + 1))
            .unwrap_err()
            .to_string()
            .contains("too long"));
    }

    #[test]
    fn paths() {
        target_path("p", "/var/lib/kubelet/pods/x/mount").unwrap();
        for bad in ["", "relative/x", "/a/../b", "/a/./b", "/", "/a\0b", "/a\nb"] {
            assert!(target_path("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500Mi").unwrap(), 500 << 20);
        assert_eq!(parse_quantity("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_quantity("2G").unwrap(), 2_000_000_000);
        assert_eq!(parse_quantity("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_quantity("4096").unwrap(), 4096);
        assert_eq!(parse_quantity("100k").unwrap(), 100_000);
        for bad in [
            "",
            "Mi",
            "-1Mi",
            "1.2.3Gi",
            "1Xi",
            "0",
            "99999999999999Pi",
            ".5Gi",
            "1 Gi",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad:?}");
        }
    }
}
