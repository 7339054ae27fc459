//! The fuzz targets' one entry: a target by name from
//! `keel_tests::fuzz::TARGETS`, the table the corpus replay test uses too.

/// Runs target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    if let Some((_, target)) = keel_tests::fuzz::TARGETS.iter().find(|(n, _)| *n == name) {
        target(data);
    }
}
