//! `keel appliance setup`: runs at every boot of the appliance image,
//! before the network and `keel run` start. Reads the settings, then writes
//! the network (systemd-networkd), NTP, host name, SSH keys and the
//! environment and credential `keel.service` starts with. With bad
//! settings it brings the network up by DHCP, shows the problems on the
//! console and fails, so `keel run` does not start with a config the user
//! did not mean (a typo in a join token must not create a new cluster).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::settings::{self, Match, Settings};

/// Where setup reads and writes; the real system's paths, or a tree under
/// a test's directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// keel.yaml on the KEEL-CONFIG partition.
    pub config_file: PathBuf,
    /// Where a NoCloud seed is mounted while it is read.
    pub cidata_mount: PathBuf,
    /// `/dev/disk/by-label`, to find a NoCloud seed.
    pub disks_by_label: PathBuf,
    /// `/sys/class/net`.
    pub sys_net: PathBuf,
    /// `/run/keel`: keel.env, the credential, the setup error.
    pub run: PathBuf,
    /// `/run/systemd`: network/ and timesyncd.conf.d/.
    pub run_systemd: PathBuf,
    /// `/etc`.
    pub etc: PathBuf,
    /// `/root/.ssh`.
    pub root_ssh: PathBuf,
    /// Keel's data directory.
    pub data_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            config_file: "/boot/keel-config/keel.yaml".into(),
            cidata_mount: "/run/keel/cidata".into(),
            disks_by_label: "/dev/disk/by-label".into(),
            sys_net: "/sys/class/net".into(),
            run: "/run/keel".into(),
            run_systemd: "/run/systemd".into(),
            etc: "/etc".into(),
            root_ssh: "/root/.ssh".into(),
            data_dir: "/var/lib/keel/node".into(),
        }
    }
}

/// The appliance's fixed ports.
pub const ADMIN_PORT: u16 = 9090;
pub const CLUSTER_PORT: u16 = 9091;

/// An Ethernet interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: String,
}

/// The Ethernet interfaces with a device behind them, in kernel order.
pub fn ethernet_interfaces(sys_net: &Path) -> Vec<Nic> {
    let Ok(dir) = std::fs::read_dir(sys_net) else {
        return Vec::new();
    };
    let mut nics: Vec<(u32, Nic)> = dir
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let read = |f: &str| std::fs::read_to_string(path.join(f)).ok();
            let is_ether = read("type").is_some_and(|t| t.trim() == "1");
            if !is_ether || !path.join("device").exists() {
                return None;
            }
            let index = read("ifindex")?.trim().parse().ok()?;
            let nic = Nic {
                name: e.file_name().to_string_lossy().into_owned(),
                mac: read("address")?.trim().to_ascii_lowercase(),
            };
            Some((index, nic))
        })
        .collect();
    nics.sort_by_key(|(i, _)| *i);
    nics.into_iter().map(|(_, n)| n).collect()
}

/// Where the settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    KeelYaml,
    CloudInit,
    Defaults,
}

/// Finds and parses the settings: keel.yaml first, then a NoCloud seed
/// (label `cidata`), else the defaults.
pub fn load(paths: &Paths) -> (Source, Result<Settings, String>) {
    match std::fs::read_to_string(&paths.config_file) {
        Ok(text) => {
            let at = paths.config_file.display();
            return (
                Source::KeelYaml,
                Settings::parse(&text).map_err(|e| prefix_lines(&format!("{at}: "), &e)),
            );
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            let at = paths.config_file.display();
            return (Source::KeelYaml, Err(format!("{at}: cannot read: {e}")));
        }
        Err(_) => {}
    }
    let seed = ["cidata", "CIDATA"]
        .iter()
        .map(|l| paths.disks_by_label.join(l))
        .find(|p| p.exists());
    let Some(device) = seed else {
        return (Source::Defaults, Ok(Settings::default()));
    };
    (Source::CloudInit, read_seed(&device, &paths.cidata_mount))
}

fn read_seed(device: &Path, mount: &Path) -> Result<Settings, String> {
    let at = device.display();
    std::fs::create_dir_all(mount).map_err(|e| format!("{}: {e}", mount.display()))?;
    let status = std::process::Command::new("mount")
        .args(["-o", "ro"])
        .arg(device)
        .arg(mount)
        .status()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !status.success() {
        return Err(format!("{at}: cannot mount the cloud-init seed"));
    }
    let user = std::fs::read_to_string(mount.join("user-data"));
    let meta = std::fs::read_to_string(mount.join("meta-data")).ok();
    let _ = std::process::Command::new("umount").arg(mount).status();
    let user = user.map_err(|e| format!("{at}: user-data: {e}"))?;
    settings::from_cloud_init(&user, meta.as_deref())
        .map_err(|e| prefix_lines(&format!("{at}: "), &e))
}

fn prefix_lines(prefix: &str, text: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A file setup writes, with its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: PathBuf,
    pub text: String,
    pub mode: u32,
}

/// Everything setup does, decided before anything is written.
#[derive(Debug, Default)]
pub struct Plan {
    pub files: Vec<File>,
    pub hostname: String,
    pub ssh: bool,
}

/// The node name when none is set: `keel-` and the start of the machine id
/// (made at first boot, so it differs between flashed copies).
pub fn default_name(machine_id: &str) -> String {
    let id: String = machine_id.trim().chars().take(8).collect();
    if id.is_empty() {
        "keel".into()
    } else {
        format!("keel-{id}")
    }
}

/// What the settings make of this machine.
pub fn plan(settings: &Settings, nics: &[Nic], machine_id: &str, paths: &Paths) -> Plan {
    let name = settings
        .node_name
        .clone()
        .unwrap_or_else(|| default_name(machine_id));
    let mut plan = Plan {
        hostname: name.replace('_', "-"),
        ..Plan::default()
    };
    let file = |path: PathBuf, text: String, mode: u32| File { path, text, mode };

    let netdir = paths.run_systemd.join("network");
    for (unit, text) in network_units(settings, nics) {
        plan.files.push(file(netdir.join(unit), text, 0o644));
    }
    if let Some(net) = settings.network.as_ref().filter(|n| !n.ntp.is_empty()) {
        plan.files.push(file(
            paths.run_systemd.join("timesyncd.conf.d/keel.conf"),
            format!("[Time]\nNTP={}\n", net.ntp.join(" ")),
            0o644,
        ));
    }
    plan.files.push(file(
        paths.etc.join("hostname"),
        format!("{}\n", plan.hostname),
        0o644,
    ));
    plan.files.push(file(
        paths.etc.join("hosts"),
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            plan.hostname
        ),
        0o644,
    ));

    let cluster = settings.cluster.as_ref();
    let mut env = String::new();
    let _ = writeln!(env, "KEEL_NODE_NAME={name}");
    let _ = writeln!(env, "KEEL_DATA_DIR={}", paths.data_dir.display());
    let _ = writeln!(env, "KEEL_ADMIN_ADDR=0.0.0.0:{ADMIN_PORT}");
    let _ = writeln!(env, "KEEL_CLUSTER_ADDR=0.0.0.0:{CLUSTER_PORT}");
    if let Some(ip) = cluster.and_then(|c| c.advertise) {
        let _ = writeln!(
            env,
            "KEEL_ADVERTISE_ADDR={}",
            std::net::SocketAddr::new(ip, CLUSTER_PORT)
        );
    }
    if let Some(text) = cluster
        .and_then(|c| c.bootstrap.as_ref())
        .and_then(|b| settings::bootstrap_text(b).ok())
    {
        let path = paths.run.join("bootstrap.yaml");
        let _ = writeln!(env, "KEEL_CONFIG={}", path.display());
        plan.files.push(file(path, text, 0o644));
    }
    if let Some(join) = cluster.and_then(|c| c.join.as_ref()) {
        let _ = writeln!(env, "KEEL_JOIN={}", join.address);
        let _ = writeln!(env, "KEEL_JOIN_TOKEN={}", join.token.trim());
    }
    plan.files
        .push(file(paths.run.join("keel.env"), env, 0o600));
    // keel.service loads this as a credential; empty means "generate one".
    let admin = settings.admin.as_ref();
    let password = admin
        .and_then(|a| a.password_hash.clone().or(a.password.clone()))
        .unwrap_or_default();
    plan.files
        .push(file(paths.run.join("admin-password"), password, 0o600));

    let keys: &[String] = settings
        .ssh
        .as_ref()
        .map_or(&[], |s| s.authorized_keys.as_slice());
    if !keys.is_empty() {
        plan.ssh = true;
        plan.files.push(file(
            paths.root_ssh.join("authorized_keys"),
            keys.iter().map(|k| format!("{}\n", k.trim())).collect(),
            0o600,
        ));
    }
    plan
}

/// systemd-networkd units: the interfaces named in the settings, the first
/// Ethernet interface when a static address is set for it, and DHCP for
/// every other Ethernet interface.
pub fn network_units(settings: &Settings, nics: &[Nic]) -> Vec<(String, String)> {
    let mut units = Vec::new();
    let Some(net) = &settings.network else {
        units.push(("90-keel-dhcp.network".to_string(), dhcp_unit()));
        return units;
    };
    let mut claimed = Vec::new();
    for (i, iface) in net.interfaces.iter().enumerate() {
        let Ok(m) = settings::parse_match(&iface.matches) else {
            continue;
        };
        let matcher = match &m {
            Match::Name(n) => format!("Name={n}"),
            Match::Mac(mac) => format!("MACAddress={mac}"),
        };
        claimed.extend(nics.iter().filter(|n| match &m {
            Match::Name(x) => &n.name == x,
            Match::Mac(x) => &n.mac == x,
        }));
        units.push((
            format!("10-keel-{i:02}.network"),
            unit(
                &matcher,
                iface.address.as_deref(),
                iface.gateway,
                &iface.dns,
            ),
        ));
    }
    if let Some(address) = &net.address {
        if let Some(first) = nics.iter().find(|n| !claimed.contains(n)) {
            units.push((
                "20-keel-first.network".to_string(),
                unit(
                    &format!("MACAddress={}", first.mac),
                    Some(address),
                    net.gateway,
                    &net.dns,
                ),
            ));
        }
    }
    units.push(("90-keel-dhcp.network".to_string(), dhcp_unit()));
    units
}

fn unit(
    matcher: &str,
    address: Option<&str>,
    gateway: Option<std::net::IpAddr>,
    dns: &[std::net::IpAddr],
) -> String {
    let mut text = format!("[Match]\n{matcher}\n\n[Network]\n");
    match address {
        Some(a) => {
            let _ = writeln!(text, "Address={a}");
            if let Some(g) = gateway {
                let _ = writeln!(text, "Gateway={g}");
            }
            for d in dns {
                let _ = writeln!(text, "DNS={d}");
            }
        }
        None => text.push_str("DHCP=yes\n"),
    }
    text
}

fn dhcp_unit() -> String {
    "[Match]\nType=ether\n\n[Network]\nDHCP=yes\n".to_string()
}

/// Writes the plan's files (each via a temporary file and a rename).
pub fn write_files(plan: &Plan) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for f in &plan.files {
        let dir = f.path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = f.path.with_extension("keel-tmp");
        std::fs::write(&tmp, &f.text)
            .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode)))
            .and_then(|()| std::fs::rename(&tmp, &f.path))
            .map_err(|e| format!("{}: {e}", f.path.display()))?;
    }
    Ok(())
}

/// keel.yaml with its plaintext `password:` line replaced by
/// `password_hash:` (same indentation), when there is exactly one such
/// line in block style; `None` otherwise (then the file is left alone).
pub fn scrub_password(text: &str, hash: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut replaced = 0;
    for line in text.lines() {
        let body = line.trim_start();
        let value = body.strip_prefix("password:").map(str::trim);
        match value {
            Some(v) if !v.is_empty() && !v.starts_with('#') => {
                let indent = &line[..line.len() - body.len()];
                let _ = writeln!(out, "{indent}password_hash: '{hash}'");
                replaced += 1;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let parsed = Settings::parse(&out).ok()?;
    let same = parsed
        .admin
        .as_ref()
        .is_some_and(|a| a.password.is_none() && a.password_hash.as_deref() == Some(hash));
    (replaced == 1 && same).then_some(out)
}

/// Once the node belongs to a cluster the first password has done its
/// job; keel.yaml (readable by anyone holding the disk) keeps only its
/// hash from then on.
fn scrub_keel_yaml(paths: &Paths, settings: &Settings) {
    let Some(password) = settings.admin.as_ref().and_then(|a| a.password.as_ref()) else {
        return;
    };
    if !paths.data_dir.join("node.json").exists() {
        return;
    }
    let Ok(text) = std::fs::read_to_string(&paths.config_file) else {
        return;
    };
    let scrubbed = keel_web_core::hash_password(password)
        .ok()
        .and_then(|hash| scrub_password(&text, &hash));
    match scrubbed {
        // A new file put in place by a rename, flushed with its directory: a
        // power loss leaves the old keel.yaml or the new one, never half of
        // one (and the next boot scrubs again if it was the old).
        Some(new) => match crate::cluster::write_private(&paths.config_file, &new) {
            Ok(()) => {
                println!("keel: keel.yaml now holds the admin password's hash, not the password")
            }
            Err(e) => eprintln!("keel: cannot rewrite {}: {e}", paths.config_file.display()),
        },
        None => eprintln!(
            "keel: {} still holds the admin password in clear (write it as password_hash)",
            paths.config_file.display()
        ),
    }
}

/// The whole of `keel appliance setup` on the running system.
pub fn run() -> anyhow::Result<()> {
    let paths = Paths::default();
    let nics = ethernet_interfaces(&paths.sys_net);
    let machine_id = std::fs::read_to_string(paths.etc.join("machine-id")).unwrap_or_default();
    let (source, loaded) = load(&paths);
    let error_file = paths.run.join("setup-error");
    let _ = std::fs::remove_file(&error_file);
    let (settings, problems) = match loaded {
        Ok(s) => (s, None),
        Err(e) => (Settings::default(), Some(e)),
    };
    let plan = plan(&settings, &nics, &machine_id, &paths);
    if let Some(problems) = &problems {
        // Only the network (DHCP), so the machine is reachable; nothing
        // that would let keel start.
        let network: Vec<File> = plan
            .files
            .iter()
            .filter(|f| f.path.starts_with(paths.run_systemd.join("network")))
            .cloned()
            .collect();
        write_files(&Plan {
            files: network,
            ..Plan::default()
        })
        .map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&paths.run)?;
        std::fs::write(&error_file, problems)?;
        let _ = super::banner::write(&super::banner::Paths::default());
        anyhow::bail!("the appliance settings have problems; keel is not started:\n{problems}");
    }
    write_files(&plan).map_err(anyhow::Error::msg)?;
    if source == Source::KeelYaml {
        scrub_keel_yaml(&paths, &settings);
    }
    if let Err(e) = std::fs::write("/proc/sys/kernel/hostname", &plan.hostname) {
        eprintln!("keel: cannot set the host name: {e}");
    }
    if plan.ssh {
        let _ = std::process::Command::new("ssh-keygen").arg("-A").status();
        let _ = std::process::Command::new("systemctl")
            .args(["--no-block", "start", "ssh.service"])
            .status();
    }
    let _ = super::banner::write(&super::banner::Paths::default());
    println!(
        "keel: appliance set up from {} ({} Ethernet interfaces)",
        match source {
            Source::KeelYaml => paths.config_file.display().to_string(),
            Source::CloudInit => "the cloud-init seed".into(),
            Source::Defaults => "the defaults (no keel.yaml)".into(),
        },
        nics.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nics() -> Vec<Nic> {
        vec![
            Nic {
                name: "ens3".into(),
                mac: "52:54:00:00:00:01".into(),
            },
            Nic {
                name: "ens4".into(),
                mac: "52:54:00:00:00:02".into(),
            },
        ]
    }

    fn paths(root: &Path) -> Paths {
        Paths {
            config_file: root.join("config/keel.yaml"),
            cidata_mount: root.join("run/keel/cidata"),
            disks_by_label: root.join("dev/disk/by-label"),
            sys_net: root.join("sys/class/net"),
            run: root.join("run/keel"),
            run_systemd: root.join("run/systemd"),
            etc: root.join("etc"),
            root_ssh: root.join("root/.ssh"),
            data_dir: root.join("var/lib/keel/node"),
        }
    }

    fn text<'a>(plan: &'a Plan, end: &str) -> &'a str {
        &plan
            .files
            .iter()
            .find(|f| f.path.ends_with(end))
            .unwrap_or_else(|| panic!("no {end} in {plan:?}"))
            .text
    }

    #[test]
    fn defaults_are_dhcp_everywhere_a_generated_name_and_a_generated_password() {
        let p = paths(Path::new("/x"));
        let plan = plan(&Settings::default(), &nics(), "0123456789abcdef\n", &p);
        assert_eq!(plan.hostname, "keel-01234567");
        let units: Vec<_> = plan
            .files
            .iter()
            .filter(|f| f.path.starts_with("/x/run/systemd/network"))
            .collect();
        assert_eq!(units.len(), 1);
        assert!(units[0].text.contains("Type=ether") && units[0].text.contains("DHCP=yes"));
        let env = text(&plan, "keel.env");
        assert!(env.contains("KEEL_NODE_NAME=keel-01234567\n"), "{env}");
        assert!(env.contains("KEEL_ADMIN_ADDR=0.0.0.0:9090\n"));
        assert!(!env.contains("KEEL_JOIN"));
        assert_eq!(text(&plan, "admin-password"), "");
        assert!(!plan.ssh);
    }

    #[test]
    fn static_addresses_go_to_the_first_unclaimed_interface_and_named_ones() {
        let s = Settings::parse(
            "node_name: edge_1\nnetwork:\n  address: 192.168.1.10/24\n  gateway: 192.168.1.1\n  dns: [192.168.1.1]\n  \
             interfaces:\n    - {match: ens3, address: 10.99.0.1/24}\n  ntp: [ntp.example.net]\n",
        )
        .unwrap();
        let plan = plan(&s, &nics(), "", &paths(Path::new("/x")));
        assert_eq!(plan.hostname, "edge-1");
        let named = text(&plan, "10-keel-00.network");
        assert!(named.contains("Name=ens3") && named.contains("Address=10.99.0.1/24"));
        let first = text(&plan, "20-keel-first.network");
        assert!(first.contains("MACAddress=52:54:00:00:00:02"), "{first}");
        assert!(first.contains("Gateway=192.168.1.1") && first.contains("DNS=192.168.1.1"));
        assert!(text(&plan, "timesyncd.conf.d/keel.conf").contains("NTP=ntp.example.net"));
        assert!(text(&plan, "keel.env").contains("KEEL_NODE_NAME=edge_1\n"));
    }

    #[test]
    fn cluster_settings_reach_keel_run() {
        let token = format!(
            "KEEL1.{}.{}.{}",
            "a".repeat(64),
            "b".repeat(8),
            "c".repeat(32)
        );
        let s = Settings::parse(&format!(
            "cluster:\n  advertise: 10.99.0.2\n  join: {{address: '10.99.0.1:9091', token: '{token}'}}\n\
             admin: {{password: 'a long password'}}\nssh: {{authorized_keys: ['ssh-ed25519 AAAA me']}}\n"
        ))
        .unwrap();
        let plan = plan(&s, &nics(), "", &paths(Path::new("/x")));
        let env = text(&plan, "keel.env");
        assert!(
            env.contains("KEEL_ADVERTISE_ADDR=10.99.0.2:9091\n"),
            "{env}"
        );
        assert!(env.contains("KEEL_JOIN=10.99.0.1:9091\n"));
        assert!(env.contains(&format!("KEEL_JOIN_TOKEN={token}\n")));
        assert_eq!(text(&plan, "admin-password"), "a long password");
        assert!(plan.ssh);
        assert_eq!(text(&plan, "authorized_keys"), "ssh-ed25519 AAAA me\n");
        let secret = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("keel.env"))
            .unwrap();
        assert_eq!(secret.mode, 0o600);
    }

    #[test]
    fn keel_yaml_is_rewritten_whole_by_a_rename_once_the_node_exists() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        std::fs::create_dir_all(paths.config_file.parent().unwrap()).unwrap();
        let text = "node_name: n1\nadmin:\n  password: appliance password\n";
        std::fs::write(&paths.config_file, text).unwrap();
        let settings = load(&paths).1.unwrap();
        // Before the node has its identity, the password is still needed.
        scrub_keel_yaml(&paths, &settings);
        assert_eq!(std::fs::read_to_string(&paths.config_file).unwrap(), text);
        std::fs::create_dir_all(&paths.data_dir).unwrap();
        std::fs::write(paths.data_dir.join("node.json"), "{}").unwrap();
        // Another name for the old file sees it whole: it was replaced, not
        // truncated and written over.
        let old = dir.path().join("old-link");
        std::fs::hard_link(&paths.config_file, &old).unwrap();
        scrub_keel_yaml(&paths, &settings);
        let now = std::fs::read_to_string(&paths.config_file).unwrap();
        assert!(
            now.contains("password_hash: '$argon2") && !now.contains("appliance password"),
            "{now}"
        );
        assert_eq!(std::fs::read_to_string(&old).unwrap(), text);
        let left: Vec<_> = std::fs::read_dir(paths.config_file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["keel.yaml"], "no temporary file left");
    }

    #[test]
    fn the_plaintext_password_is_replaced_by_its_hash_in_place() {
        let hash = keel_web_core::hash_password("appliance password").unwrap();
        let text = "node_name: n1\nadmin:\n  # the first password\n  password: appliance password\ncluster: {}\n";
        let out = scrub_password(text, &hash).unwrap();
        assert!(
            out.contains(&format!("  password_hash: '{hash}'\n")),
            "{out}"
        );
        assert!(out.contains("# the first password") && !out.contains("appliance password"));
        // Flow style or nothing to replace: left alone.
        assert!(scrub_password("admin: {password: 'appliance password'}\n", &hash).is_none());
        assert!(scrub_password("admin:\n  # password: x\n", &hash).is_none());
    }

    #[test]
    fn a_bootstrap_config_is_written_for_keel_run() {
        let s = Settings::parse(
            "cluster:\n  bootstrap:\n    pools:\n      - name: app\n        members: [{address: '10.0.2.2:8080'}]\n",
        )
        .unwrap();
        let plan = plan(&s, &nics(), "", &paths(Path::new("/x")));
        assert!(text(&plan, "keel.env").contains("KEEL_CONFIG=/x/run/keel/bootstrap.yaml\n"));
        assert!(text(&plan, "bootstrap.yaml").contains("10.0.2.2:8080"));
    }

    #[test]
    fn files_are_written_with_their_modes_and_interfaces_are_read_from_sysfs() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("keel-setup-{}", std::process::id()));
        let p = paths(&root);
        for (name, index, mac, ty) in [
            ("ens4", 3, "52:54:00:00:00:02", "1"),
            ("ens3", 2, "52:54:00:00:00:01", "1"),
            ("lo", 1, "00:00:00:00:00:00", "772"),
        ] {
            let dir = p.sys_net.join(name);
            std::fs::create_dir_all(dir.join("device")).unwrap();
            std::fs::write(dir.join("type"), format!("{ty}\n")).unwrap();
            std::fs::write(dir.join("ifindex"), format!("{index}\n")).unwrap();
            std::fs::write(dir.join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(ethernet_interfaces(&p.sys_net), nics());
        std::fs::create_dir_all(p.config_file.parent().unwrap()).unwrap();
        std::fs::write(&p.config_file, "node_name: n1\n").unwrap();
        let (source, settings) = load(&p);
        assert_eq!(source, Source::KeelYaml);
        let plan = plan(&settings.unwrap(), &nics(), "", &p);
        write_files(&plan).unwrap();
        let env = p.run.join("keel.env");
        assert!(std::fs::read_to_string(&env)
            .unwrap()
            .contains("KEEL_NODE_NAME=n1"));
        assert_eq!(
            std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p.config_file, "node_name: [\n").unwrap();
        let (_, bad) = load(&p);
        assert!(bad
            .unwrap_err()
            .starts_with(&format!("{}: ", p.config_file.display())));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
