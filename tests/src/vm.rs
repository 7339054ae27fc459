//! The appliance image under qemu: build it once (test processes share it
//! through a lock), copy it per VM, write keel.yaml into its KEEL-CONFIG
//! partition as a user would, boot it from the disk alone, and reach the
//! guest through user-mode networking's forwarded ports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The workspace's root directory.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn newest_under(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            let t = if path.is_dir() {
                newest_under(&path)
            } else {
                e.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            };
            newest = newest.max(t);
        }
    }
    newest
}

/// Runs `cmd` to completion within `limit`, panicking with its output if it
/// fails or overruns.
fn run_bounded(cmd: &mut Command, limit: Duration, what: &str) {
    let log = std::env::temp_dir().join(format!("keel-vm-{}-{}.log", what, std::process::id()));
    let out = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: still running after {limit:?}; output:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(status.success(), "{what} failed ({status}):\n{text}");
}

/// The qcow2 image built next to [`image`]'s raw one.
pub fn image_qcow2() -> PathBuf {
    image().with_extension("qcow2")
}

/// The raw appliance image (and its qcow2 form), built by `images/build.sh` from the release
/// binary unless one newer than the binary and the recipe is there, or one
/// built from the same binary and recipe is in the cache outside the
/// clone. Test processes take turns through a lock file, so it is built
/// once.
pub fn image() -> PathBuf {
    let repo = repo();
    let out = repo.join("target/image");
    std::fs::create_dir_all(&out).unwrap();
    let lock = std::fs::File::create(out.join(".lock")).unwrap();
    lock.lock().unwrap();
    // tests/run builds it first; built here when a test runs alone. (Not
    // rebuilt when present: cargo run from a test's environment would
    // rebuild ring and every crate above it.)
    let keel = repo.join("target/release/keel");
    if !keel.exists() {
        run_bounded(
            Command::new("cargo")
                .args(["build", "--release", "--bin", "keel"])
                .current_dir(&repo),
            Duration::from_secs(1200),
            "cargo-build-release",
        );
    }
    let raw = out.join("keel-appliance.raw");
    let built = [&raw, &raw.with_extension("qcow2")]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .min()
        .flatten();
    let inputs = newest_under(&repo.join("images"))
        .max(std::fs::metadata(&keel).and_then(|m| m.modified()).unwrap());
    if built.is_none_or(|b| b < inputs) {
        let names = ["keel-appliance.raw", "keel-appliance.qcow2"];
        let cached = cache_dir().join(format!("image-{}", image_key(&repo)));
        if names
            .iter()
            .all(|n| link_or_copy(&cached.join(n), &out.join(n)))
        {
            eprintln!("image from the cache: {}", cached.display());
        } else {
            // New files, never written through a link into the cache.
            for n in names {
                let _ = std::fs::remove_file(out.join(n));
            }
            let started = Instant::now();
            // The system part is reused for a day (images/build.sh):
            // an image for tests, not for shipping.
            run_bounded(
                Command::new("bash")
                    .env("KEEL_IMAGE_ROOT_CACHE", cache_dir())
                    .arg(repo.join("images/build.sh"))
                    .arg("--keel")
                    .arg(&keel)
                    .arg("--out")
                    .arg(&out),
                Duration::from_secs(1500),
                "image-build",
            );
            eprintln!("image built in {:.0?}", started.elapsed());
            keep_in_cache(&out, &names, &cached);
        }
    }
    drop(lock);
    raw
}

/// Where test runs keep what a fresh clone can reuse (tests/run puts the
/// Python environment there too).
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEEL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(xdg), _) => PathBuf::from(xdg).join("keel"),
        (None, Some(home)) => PathBuf::from(home).join(".cache/keel"),
        (None, None) => std::env::temp_dir().join("keel-cache"),
    }
}

/// What an image is built from, as a hash: the release binary and every
/// file of the recipe (path and content). The packages come from the
/// mirror as they are that day: a cached image is for tests, not for
/// shipping.
fn image_key(repo: &Path) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "set -o pipefail; { find images -type f -print0 | sort -z | xargs -0 sha256sum; \
             sha256sum target/release/keel; } | sha256sum | cut -c1-32",
        )
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "cannot hash the image's inputs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Puts `from` at `to` (a hard link, or a copy across file systems);
/// false when `from` is missing.
fn link_or_copy(from: &Path, to: &Path) -> bool {
    if !from.exists() {
        return false;
    }
    let _ = std::fs::remove_file(to);
    std::fs::hard_link(from, to).is_ok() || std::fs::copy(from, to).is_ok()
}

/// Keeps the image just built as the cache's only one.
fn keep_in_cache(out: &Path, names: &[&str], cached: &Path) {
    let Some(parent) = cached.parent() else {
        return;
    };
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // image-debs is the build's package download (images/build.sh).
            let image = name.starts_with("image-") && name != "image-debs";
            if image || name.starts_with("partial-image-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let partial = parent.join(format!("partial-image-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&partial);
    let whole = names
        .iter()
        .all(|n| link_or_copy(&out.join(n), &partial.join(n)));
    if !(whole && std::fs::rename(&partial, cached).is_ok()) {
        let _ = std::fs::remove_dir_all(&partial);
    }
}

/// UEFI firmware for qemu (package `ovmf`).
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// A VM's own copy of the image.
pub struct Disk {
    pub path: PathBuf,
}

impl Disk {
    /// A sparse copy of `image` in `dir`.
    pub fn copy(image: &Path, dir: &Path, name: &str) -> Disk {
        let path = dir.join(format!("{name}.raw"));
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "cannot copy the image");
        Disk { path }
    }

    /// A copy-on-write qcow2 overlay of the qcow2 `image` in `dir`, as a
    /// hypervisor that imported the image would make.
    pub fn overlay(image: &Path, dir: &Path, name: &str) -> Disk {
        let path = dir.join(format!("{name}.qcow2"));
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(image)
            .arg(&path)
            .status()
            .expect("qemu-img (qemu-utils)");
        assert!(status.success(), "qemu-img create");
        Disk { path }
    }

    /// Writes `keel.yaml` into the KEEL-CONFIG partition (it starts at
    /// 1 MiB), as a user does after flashing.
    pub fn write_config(&self, yaml: &str) {
        let file = self.path.with_extension("keel.yaml");
        std::fs::write(&file, yaml).unwrap();
        let status = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-o")
            .arg("-i")
            .arg(format!("{}@@1M", self.path.display()))
            .arg(&file)
            .arg("::keel.yaml")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mcopy keel.yaml into the config partition"
        );
    }
}

/// A cloud-init NoCloud seed: a small FAT volume labelled CIDATA holding
/// `user-data` and `meta-data`.
pub fn nocloud_seed(dir: &Path, user_data: &str, meta_data: &str) -> Disk {
    let path = dir.join("seed.img");
    let status = Command::new("truncate")
        .args(["-s", "4M"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("mkfs.vfat")
        .args(["-n", "CIDATA"])
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.vfat (dosfstools)");
    assert!(status.success(), "mkfs.vfat");
    for (name, text) in [("user-data", user_data), ("meta-data", meta_data)] {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let status = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&path)
            .arg(&file)
            .arg(format!("::{name}"))
            .status()
            .unwrap();
        assert!(status.success(), "mcopy {name}");
    }
    Disk { path }
}

impl Disk {
    /// keel.yaml as it is now on the KEEL-CONFIG partition.
    pub fn read_config(&self) -> String {
        let out = Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(format!("{}@@1M", self.path.display()))
            .arg("::keel.yaml")
            .output()
            .unwrap();
        assert!(out.status.success(), "mtype keel.yaml");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A network card of a VM.
pub enum Nic {
    /// User-mode networking (the guest is 10.0.2.15, the host's loopback
    /// is 10.0.2.2) with host loopback ports forwarded to guest ports.
    User { forward: Vec<(u16, u16)> },
    /// One end of a point-to-point link between two VMs (a TCP socket on
    /// the host's loopback); the first VM listens.
    Link {
        port: u16,
        listen: bool,
        mac: String,
    },
}

/// A running qemu.
pub struct Vm {
    pub name: String,
    child: Option<Child>,
    serial: PathBuf,
    monitor: PathBuf,
}

impl Vm {
    /// Boots `disk` with `nics` from the BIOS (SeaBIOS), the serial console
    /// going to a file.
    pub fn boot(name: &str, disk: &Disk, nics: &[Nic]) -> Vm {
        Self::start(name, &[disk], nics, None)
    }

    /// Boots `disk` from the BIOS with a second disk attached (a seed).
    pub fn boot_with(name: &str, disk: &Disk, extra: &Disk, nics: &[Nic]) -> Vm {
        Self::start(name, &[disk, extra], nics, None)
    }

    /// Boots `disk` with UEFI firmware (OVMF, from Debian's `ovmf`).
    pub fn boot_uefi(name: &str, disk: &Disk, nics: &[Nic]) -> Vm {
        Self::start(name, &[disk], nics, Some(Path::new(OVMF)))
    }

    fn start(name: &str, disks: &[&Disk], nics: &[Nic], firmware: Option<&Path>) -> Vm {
        let dir = disks[0].path.parent().unwrap();
        let serial = dir.join(format!("{name}.serial.log"));
        let monitor = dir.join(format!("{name}.monitor"));
        let _ = std::fs::remove_file(&monitor);
        // Software emulation unless told otherwise: /dev/kvm can exist
        // where KVM does not work (nested virtualisation off), and then
        // the guest crawls.
        let accel =
            std::env::var("KEEL_QEMU_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".to_owned());
        // One vCPU: with two, under multi-threaded TCG on a busy host
        // (two VMs on two cores), a guest once locked up for good while
        // booting (soft lockups on both vCPUs from 14 s on, /readyz never
        // up); one vCPU cannot wait on another.
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", &accel, "-m", "1024", "-smp", "1"])
            .args(["-display", "none", "-no-user-config", "-nodefaults"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", monitor.display()));
        for disk in disks {
            let format = if disk.path.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            cmd.arg("-drive").arg(format!(
                "file={},format={format},if=virtio",
                disk.path.display()
            ));
        }
        if let Some(f) = firmware {
            cmd.arg("-bios").arg(f);
        }
        for (i, nic) in nics.iter().enumerate() {
            let (netdev, mac) = match nic {
                Nic::User { forward } => {
                    let fwd: String = forward
                        .iter()
                        .map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"))
                        .collect();
                    (format!("user,id=n{i}{fwd}"), None)
                }
                Nic::Link { port, listen, mac } => {
                    let how = if *listen { "listen" } else { "connect" };
                    (
                        format!("socket,id=n{i},{how}=127.0.0.1:{port}"),
                        Some(mac.clone()),
                    )
                }
            };
            cmd.arg("-netdev")
                .arg(netdev)
                .arg("-device")
                .arg(match mac {
                    Some(m) => format!("virtio-net-pci,netdev=n{i},mac={m}"),
                    None => format!("virtio-net-pci,netdev=n{i}"),
                });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 (tests/run installs qemu-system-x86)");
        Vm {
            name: name.to_owned(),
            child: Some(child),
            serial,
            monitor,
        }
    }

    /// Everything the serial console has shown so far.
    pub fn console(&self) -> String {
        let bytes = std::fs::read(&self.serial).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Presses the power button (ACPI) and waits for the guest to shut
    /// down and qemu to exit; true if it did within `limit`.
    pub fn power_off(&mut self, limit: Duration) -> bool {
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.monitor) {
            // qemu drops input from a monitor client that leaves at once:
            // stay until the command has been echoed and a new prompt shown.
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.write_all(b"system_powerdown\n");
            let mut seen = Vec::new();
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                let mut buf = [0u8; 512];
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
                let text = String::from_utf8_lossy(&seen);
                if text.matches("(qemu)").count() >= 2 {
                    break;
                }
            }
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) | None => {
                    self.child = None;
                    return true;
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        false
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.monitor);
    }
}

/// One call to the guest's admin API (HTTPS, its certificate is the
/// cluster's own, so not checked here): (status, body).
pub fn api(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-m", "20", "-X", method, "-w", "\n%{http_code}"])
        .arg(format!("https://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_owned()))
}

/// Waits up to `limit` for `check`, showing the VM's console if it never
/// comes true.
pub fn wait_for(vm: &Vm, limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let console = vm.console();
    let tail: String = console
        .chars()
        .skip(console.chars().count().saturating_sub(6000))
        .collect();
    panic!("{}: {what} not within {limit:?}; console:\n{tail}", vm.name);
}
