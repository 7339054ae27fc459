//! The model is the load balancer's, not any compatibility API's: outside
//! its tests and the frozen decoder of annotations written before cluster
//! version 10 (`legacy.rs`), no source file names the ELB, ELBv2 or
//! Octavia APIs or their key formats. (The AWS access keys are a
//! credential the model keeps beside API tokens; they are not translated
//! here, so `aws` is not checked.)

use std::path::Path;

const NAMES: [&str; 8] = [
    "octavia",
    "openstack",
    "elbv2",
    "elb ",
    "elb/",
    "targetgroup",
    "target group",
    "arn:",
];

#[test]
fn the_model_names_no_compatibility_api() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut read = 0;
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n == "legacy.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        read += 1;
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            let lower = line.to_ascii_lowercase();
            for name in NAMES {
                if lower.contains(name) {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(read >= 10, "read only {read} files of {}", src.display());
    assert!(found.is_empty(), "{}", found.join("\n"));
}
