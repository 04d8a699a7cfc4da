//! Small helpers below every layer: client text clipped for messages, names checked before they
//! become file names, files written atomically, the seeded generator of synthetic data and
//! training, and whether a thread may wait for the rayon pool.

pub mod fs;
pub mod pool;
pub mod rng;

/// At most `max` characters of client-supplied text (an ellipsis marks the cut), so that error
/// messages quoting it stay short.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// A model, algorithm or label name that cannot be used (it would not be a safe file name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}` is not a valid name: use 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` and without `..`", .0.escape_debug())]
pub struct InvalidName(pub String);

/// Checks a model or algorithm name from a request before it is used in a file path:
/// 1 to 128 of `A-Z a-z 0-9 _ . -`, and no `..`.
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    // A leading `.` would make hidden files (and `.` itself names the directory).
    if name.is_empty()
        || name.len() > 128
        || !ok_chars
        || name.contains("..")
        || name.starts_with('.')
    {
        return Err(InvalidName(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn names_that_could_escape_a_directory_are_refused() {
        assert!(
            validate_name("detect_dns_data_exfiltration_using_pretrained_model_in_dsdl").is_ok()
        );
        assert!(validate_name("model-1.v2").is_ok());
        for bad in [
            "",
            "../../etc/passwd",
            "a/b",
            "..",
            "a..b",
            "x y",
            "ü",
            &"a".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
