#![allow(clippy::unwrap_used)]
//! Backup and restore as an operator does them: `keel backup -o FILE`
//! against a running node, the node lost, then `keel run --restore FILE`
//! on an empty data directory seeds a new cluster that serves the same
//! config and knows the same users, API tokens and CA. A wrong passphrase,
//! a damaged file or a used data directory are refused and change nothing.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use keel_tests::backend::HttpBackend;
use keel_tests::node::{keel_bin, keel_command as keel, raw_call, raw_get, KeelProcess};
use keel_tests::{free_port, http_lb, members};

const PASSPHRASE: &str = "a long backup passphrase";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `keel run --restore FILE` on `data`, which must refuse within 20 s:
/// its output.
fn restore_refused(file: &Path, data: &Path, passphrase: &str) -> Output {
    let child = Command::new(keel_bin())
        .args(["run", "--admin-addr"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--cluster-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(data)
        .arg("--restore")
        .arg(file)
        .env("KEEL_BACKUP_PASSPHRASE", passphrase)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        // Still running: it accepted what it should have refused.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    });
    let out = child.wait_with_output().unwrap();
    assert!(
        !watchdog.is_finished(),
        "the restore ran instead of refusing:\n{}",
        text(&out)
    );
    assert!(!out.status.success(), "{}", text(&out));
    out
}

fn get_json(node: &KeelProcess, token: &str, path: &str) -> serde_json::Value {
    let (status, body) = raw_call(&node.admin.to_string(), "GET", path, Some(token), None)
        .expect("the admin API answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_that_serves_the_same_config() {
    let backend = HttpBackend::start("a").await;
    let port = free_port();
    let node = KeelProcess::start(&http_lb(
        port,
        &format!("members: {}", members(&[backend.addr])),
    ));
    let dir = tempfile::tempdir().unwrap();
    let xdg = dir.path().join("config");
    let server = format!("http://{}", node.admin);
    let env = [
        ("XDG_CONFIG_HOME", xdg.to_str().unwrap()),
        ("KEEL_SERVER", server.as_str()),
    ];
    let out = keel(
        &["login", "--password-stdin"],
        &env,
        "test-admin-password\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    // A token for automation: it must work on the restored cluster.
    let out = keel(&["api-token", "create", "ci", "-o", "json"], &env, "");
    assert!(out.status.success(), "{}", text(&out));
    let ci: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ci = ci["token"].as_str().unwrap().to_owned();
    let config_before = get_json(&node, &ci, "/api/v1/config");
    let status_before = get_json(&node, &ci, "/api/v1/status");

    // A short passphrase is refused, naming the field.
    let file = dir.path().join("cluster.keel");
    let file_arg = file.to_str().unwrap();
    let short: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("KEEL_BACKUP_PASSPHRASE", "short")])
        .collect();
    let out = keel(&["backup", "-o", file_arg], &short, "");
    assert!(!out.status.success());
    assert!(text(&out).contains("passphrase"), "{}", text(&out));
    assert!(!file.exists());

    let with_passphrase: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("KEEL_BACKUP_PASSPHRASE", PASSPHRASE)])
        .collect();
    let out = keel(&["backup", "-o", file_arg], &with_passphrase, "");
    assert!(out.status.success(), "{}", text(&out));
    println!("{}", text(&out).trim());
    let sealed = std::fs::read(&file).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the backup holds secrets");
    }
    // Sealed: neither the CA key nor a password hash is readable in it.
    let readable = String::from_utf8_lossy(&sealed);
    assert!(!readable.contains("PRIVATE KEY") && !readable.contains("argon2"));
    // An existing file is not overwritten.
    let out = keel(&["backup", "-o", file_arg], &with_passphrase, "");
    assert!(!out.status.success(), "{}", text(&out));
    // The history (keel status, the dashboard) says a backup was taken.
    let out = keel(&["status"], &env, "");
    assert!(out.status.success(), "{}", text(&out));
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("last backup: taken on ") && l.contains("by admin")),
        "{status}"
    );

    // The cluster is lost.
    drop(node);

    // A wrong passphrase and a damaged file are refused before anything is
    // written.
    let fresh = dir.path().join("restored");
    let out = restore_refused(&file, &fresh, "not the passphrase at all");
    assert!(text(&out).contains("wrong passphrase"), "{}", text(&out));
    assert!(
        !fresh.exists(),
        "a refused restore made {}",
        fresh.display()
    );
    let damaged = dir.path().join("damaged.keel");
    let mut bytes = sealed.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&damaged, &bytes).unwrap();
    let out = restore_refused(&damaged, &fresh, PASSPHRASE);
    assert!(text(&out).contains("damaged"), "{}", text(&out));
    assert!(!fresh.exists());

    // Restored on a new node: the same config, served; the same users,
    // API tokens and CA.
    let passphrase_file = dir.path().join("passphrase");
    std::fs::write(&passphrase_file, format!("{PASSPHRASE}\n")).unwrap();
    let restored = KeelProcess::start_with(
        "{}\n",
        &[
            "--restore",
            file_arg,
            "--backup-passphrase-file",
            passphrase_file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        get_json(&restored, &ci, "/api/v1/config"),
        config_before,
        "the restored cluster's config"
    );
    let status_after = get_json(&restored, &ci, "/api/v1/status");
    assert_eq!(
        status_after["ca_fingerprint"], status_before["ca_fingerprint"],
        "the same CA"
    );
    assert_eq!(status_after["nodes"].as_array().unwrap().len(), 1);
    let _ = restored.login();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = raw_get(([127, 0, 0, 1], port).into(), "/");
        if answer.as_ref().is_some_and(|(s, b)| *s == 200 && b == "a") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restored node does not serve the load balancer: {answer:?}\n{}",
            restored.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        restored
            .log_text()
            .contains("restored a new cluster from a backup"),
        "{}",
        restored.log_text()
    );
    // The backup's history came along: who changed what before the loss.
    let events = get_json(&restored, &ci, "/api/v1/events");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap_or("").contains("api token")),
        "{events}"
    );

    // ... and so does where this cluster came from.
    let restore = events
        .as_array()
        .unwrap()
        .iter()
        .rfind(|e| e["kind"] == "restore")
        .unwrap_or_else(|| panic!("no restore in the history: {events}"));
    assert!(
        restore["message"]
            .as_str()
            .unwrap()
            .contains("from a backup taken on"),
        "{restore}"
    );
    assert_eq!(
        get_json(&restored, &ci, "/api/v1/status")["cluster_version"],
        keel_model::CLUSTER_VERSION
    );

    // A used data directory is refused: a backup seeds a new cluster only.
    let mut restored = restored;
    restored.child.kill().unwrap();
    restored.child.wait().unwrap();
    let used = restored.config.parent().unwrap().join("data");
    let out = restore_refused(&file, &used, PASSPHRASE);
    assert!(
        text(&out).contains("empty data directory"),
        "{}",
        text(&out)
    );
}
