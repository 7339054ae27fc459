//! Every parser of untrusted bytes, by the name its fuzz target and its
//! corpus carry (`tests/fuzz/corpus/NAME`, `tests/fuzz/crashes/NAME`). The
//! coverage-guided targets in `tests/fuzz` and the corpus replay test
//! (`tests/tests/fuzz_corpus.rs`) both run them from this one table.

use std::path::{Path, PathBuf};

/// A parser's entry point: any bytes, and it must not panic.
pub type Target = fn(&[u8]);

/// The targets, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_head", keel_dataplane::fuzz::request_head),
    ("response", keel_dataplane::fuzz::response),
    ("member_http2", keel_dataplane::fuzz::member_http2),
    ("proxy_header", keel_dataplane::fuzz::proxy_header),
    ("client_hello", keel_dataplane::fuzz::client_hello),
    ("config", config),
    ("sigv4", keel_aws::fuzz::sigv4),
    ("api_token", keel_web_core::fuzz::token),
    ("join_token", join_token),
];

/// A config document, YAML or JSON, read and checked as `keel check` does.
fn config(data: &[u8]) {
    let _ = keel_model::Document::parse_spec(&String::from_utf8_lossy(data));
}

/// A join token as `keel run --join` reads it.
fn join_token(data: &[u8]) {
    let _ = String::from_utf8_lossy(data).parse::<keel::cluster::JoinToken>();
}

/// Where the committed inputs of `target` live: its corpus and the crash
/// inputs found (and fixed) so far.
pub fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "crashes"] {
        if let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) {
            files.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    files.sort();
    files
}
