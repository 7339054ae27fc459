#![allow(clippy::unwrap_used)]
//! The appliance image, booted in qemu from its disk alone: configured
//! through keel.yaml on its KEEL-CONFIG partition, serving traffic, keeping
//! its config over a power cycle (booting on BIOS, then on UEFI), and two
//! of them forming a cluster.
//! Slow by nature (the image is built, then booted under emulation).

use std::time::{Duration, Instant};

use keel_tests::backend::HttpBackend;
use keel_tests::cluster::json;
use keel_tests::free_port;
use keel_tests::vm::{api, image, image_qcow2, nocloud_seed, wait_for, Disk, Nic, Vm};

const PASSWORD: &str = "appliance-test-password";
const BOOT: Duration = Duration::from_secs(300);

fn login(port: u16) -> String {
    login_with(port, PASSWORD)
}

fn login_with(port: u16, password: &str) -> String {
    let body = format!("{{\"user\": \"admin\", \"password\": \"{password}\"}}");
    let (code, text) = api(port, "POST", "/api/v1/login", None, Some(&body)).expect("login");
    assert_eq!(code, 200, "login: {text}");
    json(&text)["token"].as_str().unwrap().to_owned()
}

fn ready(port: u16) -> bool {
    api(port, "GET", "/readyz", None, None).is_some_and(|(c, _)| c == 200)
}

/// A GET through the guest's listener; the backend answers with its name.
fn through(port: u16) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    (code.trim() == "200").then(|| body.trim().to_owned())
}

fn config(member_port: u16) -> String {
    format!(
        "load_balancers:\n  - name: web\n    listeners:\n      - {{ port: 8080, protocol: http, default_pool: app }}\n\
         pools:\n  - name: app\n    health_check: {{ type: http, path: /health, interval: 1s }}\n    members:\n      - {{ address: \"10.0.2.2:{member_port}\" }}\n"
    )
}

#[test]
fn appliance_boots_configured_serves_and_keeps_changes_over_a_power_cycle_bios_then_uefi() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = rt.block_on(async {
        (
            HttpBackend::start_on("backend-a", "127.0.0.1:0".parse().unwrap()).await,
            HttpBackend::start_on("backend-b", "127.0.0.1:0".parse().unwrap()).await,
        )
    });
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::copy(&image, dir.path(), "vm1");
    let bootstrap: String = config(a.addr.port())
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let key = dir.path().join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success(), "ssh-keygen");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    disk.write_config(&format!(
        "node_name: appliance-1\nadmin:\n  password: {PASSWORD}\ncluster:\n  bootstrap:\n{bootstrap}\
         ssh:\n  authorized_keys:\n    - \"{}\"\n",
        public.trim()
    ));
    let [admin, web, ssh_port] = keel_tests::free_ports();
    let nics = || {
        vec![Nic::User {
            forward: vec![(admin, 9090), (web, 8080), (ssh_port, 22)],
        }]
    };

    let started = Instant::now();
    let mut vm = Vm::boot("vm1", &disk, &nics());
    wait_for(&vm, BOOT, "/readyz", || ready(admin));
    eprintln!("boot to ready: {:.0?}", started.elapsed());
    // The console banner (agetty draws it once the login prompt is up).
    wait_for(&vm, Duration::from_secs(90), "the banner", || {
        let console = vm.console();
        console.contains("node appliance-1") && console.contains("https://10.0.2.15:9090/ui/")
    });
    assert!(
        !vm.console().contains("Password:"),
        "a given password is not shown"
    );
    // keel.yaml enabled SSH with a key: look at the service from inside.
    let mut inside = None;
    wait_for(
        &vm,
        Duration::from_secs(60),
        "ssh with the configured key",
        || {
            inside = ssh(
                ssh_port,
                &key,
                "ps -o user= -C keel; grep -E '^Cap(Eff|Bnd)' /proc/$(pidof -s keel)/status; \
             systemctl show -p Type -p User keel; findmnt -no LABEL /var/lib/keel",
            );
            inside.is_some()
        },
    );
    let inside = inside.unwrap();
    let users: Vec<&str> = inside
        .lines()
        .take_while(|l| !l.starts_with("Cap"))
        .collect();
    assert!(
        !users.is_empty() && users.iter().all(|u| u.trim() == "keel"),
        "keel runs as its own user: {inside}"
    );
    // CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_NET_RAW (13) only.
    assert!(inside.contains("CapEff:\t0000000000003400"), "{inside}");
    assert!(inside.contains("CapBnd:\t0000000000003400"), "{inside}");
    assert!(inside.contains("Type=notify"), "{inside}");
    assert!(
        inside.lines().any(|l| l.trim() == "KEEL-DATA"),
        "state on its own partition: {inside}"
    );

    let token = login(admin);
    wait_for(&vm, Duration::from_secs(60), "traffic to backend-a", || {
        through(web).as_deref() == Some("backend-a")
    });

    // A change through the API: the pool now points at backend-b.
    let (code, text) = api(
        admin,
        "PUT",
        "/api/v1/config",
        Some(&token),
        Some(&config_json(b.addr.port())),
    )
    .unwrap();
    assert_eq!(code, 200, "config change: {text}");
    wait_for(&vm, Duration::from_secs(60), "traffic to backend-b", || {
        through(web).as_deref() == Some("backend-b")
    });

    assert!(vm.power_off(Duration::from_secs(120)), "clean shutdown");
    // The same disk on UEFI firmware this time.
    let started = Instant::now();
    let mut vm = Vm::boot_uefi("vm1-again", &disk, &nics());
    wait_for(&vm, BOOT, "/readyz after the power cycle", || ready(admin));
    eprintln!("reboot to ready: {:.0?}", started.elapsed());
    let token = login(admin);
    let (_, text) = api(admin, "GET", "/api/v1/config", Some(&token), None).unwrap();
    assert!(
        text.contains(&format!("10.0.2.2:{}", b.addr.port())),
        "the change survived: {text}"
    );
    wait_for(
        &vm,
        Duration::from_secs(60),
        "traffic to backend-b after reboot",
        || through(web).as_deref() == Some("backend-b"),
    );
    // The cluster exists, so keel.yaml keeps only the password's hash.
    assert!(vm.power_off(Duration::from_secs(120)), "clean shutdown");
    let yaml = disk.read_config();
    assert!(
        !yaml.contains(PASSWORD) && yaml.contains("password_hash: '$argon2"),
        "keel.yaml after the cluster was made:\n{yaml}"
    );
    drop(rt);
}

/// Runs `command` in the guest as root over SSH with `key`; its output.
fn ssh(port: u16, key: &std::path::Path, command: &str) -> Option<String> {
    let out = std::process::Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("root@127.0.0.1")
        .arg(command)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn config_json(member_port: u16) -> String {
    let doc = keel_tests::spec(&config(member_port));
    serde_json::to_string(&keel_model::Document::from_spec(&doc)).unwrap()
}

#[test]
fn two_appliances_on_one_network_form_a_cluster() {
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let [admin1, admin2, link] = keel_tests::free_ports();
    let mac = |i: u8| format!("52:54:00:77:00:{i:02x}");
    let network = |i: u8| {
        format!(
            "network:\n  interfaces:\n    - {{ match: \"{}\", address: 10.77.0.{i}/24 }}\n\
             cluster:\n  advertise: 10.77.0.{i}\n",
            mac(i)
        )
    };

    let disk1 = Disk::copy(&image, dir.path(), "vm-a");
    disk1.write_config(&format!(
        "node_name: appliance-a\nadmin:\n  password: {PASSWORD}\n{}",
        network(1)
    ));
    let vm1 = Vm::boot(
        "vm-a",
        &disk1,
        &[
            Nic::Link {
                port: link,
                listen: true,
                mac: mac(1),
            },
            Nic::User {
                forward: vec![(admin1, 9090)],
            },
        ],
    );
    wait_for(&vm1, BOOT, "/readyz", || ready(admin1));
    let token = login(admin1);
    let (code, text) = api(
        admin1,
        "POST",
        "/api/v1/tokens",
        Some(&token),
        Some("{\"ttl\": \"1h\"}"),
    )
    .unwrap();
    assert_eq!(code, 201, "join token: {text}");
    let join = json(&text)["token"].as_str().unwrap().to_owned();

    // The second one is the qcow2 image, configured the cloud way: a
    // NoCloud seed.
    let disk2 = Disk::overlay(&image_qcow2(), dir.path(), "vm-b");
    let keel_settings: String = format!(
        "{}  join:\n    address: 10.77.0.1:9091\n    token: {join}\n",
        network(2)
    )
    .lines()
    .map(|l| format!("  {l}\n"))
    .collect();
    let seed = nocloud_seed(
        dir.path(),
        &format!("#cloud-config\nhostname: appliance-b\nkeel:\n{keel_settings}"),
        "instance-id: keel-b\nlocal-hostname: appliance-b\n",
    );
    let vm2 = Vm::boot_with(
        "vm-b",
        &disk2,
        &seed,
        &[
            Nic::Link {
                port: link,
                listen: false,
                mac: mac(2),
            },
            Nic::User {
                forward: vec![(admin2, 9090)],
            },
        ],
    );
    wait_for(&vm2, BOOT, "the second node ready", || ready(admin2));
    // The same cluster seen from both: both nodes, the same config version.
    let both_agree = |port: u16| {
        let token = login(port);
        let Some((200, text)) = api(port, "GET", "/api/v1/status", Some(&token), None) else {
            return false;
        };
        let s = json(&text);
        let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
        let versions: Vec<_> = nodes.iter().map(|n| n["applied_version"].clone()).collect();
        names.contains(&"appliance-a")
            && names.contains(&"appliance-b")
            && versions.len() == 2
            && versions[0].is_u64()
            && versions[0] == versions[1]
    };
    wait_for(
        &vm1,
        Duration::from_secs(60),
        "both nodes in status on a",
        || both_agree(admin1),
    );
    wait_for(
        &vm2,
        Duration::from_secs(60),
        "both nodes in status on b",
        || both_agree(admin2),
    );
}

/// The generated password as the latest banner on the console shows it.
fn banner_password(console: &str) -> Option<String> {
    let banner = console.rsplit("Keel load balancer appliance").next()?;
    let after = banner.split("Password:").nth(1)?;
    after.split_whitespace().next().map(str::to_owned)
}

#[test]
fn an_unconfigured_appliance_bootstraps_alone_and_shows_its_password_until_changed() {
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::copy(&image, dir.path(), "vm-plain");
    let admin = free_port();
    let vm = Vm::boot(
        "vm-plain",
        &disk,
        &[Nic::User {
            forward: vec![(admin, 9090)],
        }],
    );
    wait_for(&vm, BOOT, "/readyz", || ready(admin));
    let mut generated = None;
    wait_for(
        &vm,
        Duration::from_secs(60),
        "the password on the console",
        || {
            generated = banner_password(&vm.console());
            generated.is_some()
        },
    );
    let generated = generated.unwrap();
    let console = vm.console();
    assert!(
        console.contains("node keel-"),
        "a generated node name: {console}"
    );
    assert!(
        console.contains("https://10.0.2.15:9090/ui/"),
        "DHCP address in the banner"
    );

    // The CLI trusts the node by the CA fingerprint on its console: nothing
    // copied off the appliance, no certificate check skipped.
    let fingerprint = console
        .rsplit("Keel load balancer appliance")
        .next()
        .and_then(|b| b.split("SHA256:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(|hex| format!("SHA256:{hex}"))
        .unwrap_or_else(|| panic!("no CA fingerprint on the console: {console}"));
    let home = tempfile::tempdir().unwrap();
    let server = format!("https://127.0.0.1:{admin}");
    let keel = |args: &[&str], stdin: &str| {
        let args: Vec<&str> = args.iter().copied().chain(["--server", &server]).collect();
        keel_tests::node::keel_command(
            &args,
            &[("XDG_CONFIG_HOME", home.path().to_str().unwrap())],
            stdin,
        )
    };
    let out = keel(
        &[
            "login",
            "--password-stdin",
            "--ca-fingerprint",
            &fingerprint,
        ],
        &generated,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The generated password opens nothing else until it is changed.
    let out = keel(&["status"], "");
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("must change their password"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = keel(
        &["user", "passwd", "--password-stdin"],
        &format!("{generated}\n{PASSWORD}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = keel(&["status"], "");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&fingerprint),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        &vm,
        Duration::from_secs(60),
        "the banner without the password",
        || {
            let console = vm.console();
            banner_password(&console).is_none()
                && console
                    .rsplit("Keel load balancer appliance")
                    .next()
                    .is_some_and(|b| b.contains("Dashboard:"))
        },
    );
    login(admin);
}
