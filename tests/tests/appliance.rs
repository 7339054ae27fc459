#![allow(clippy::unwrap_used)]
//! The appliance image, booted in qemu from its disk alone: configured
//! through keel.yaml on its KEEL-CONFIG partition, serving traffic, keeping
//! its config over a power cycle, and two of them forming a cluster.
//! Slow by nature (the image is built, then booted under emulation).

use std::time::{Duration, Instant};

use keel_tests::backend::HttpBackend;
use keel_tests::cluster::json;
use keel_tests::free_port;
use keel_tests::vm::{api, image, wait_for, Disk, Nic, Vm};

const PASSWORD: &str = "appliance-test-password";
const BOOT: Duration = Duration::from_secs(300);

fn login(port: u16) -> String {
    let body = format!("{{\"user\": \"admin\", \"password\": \"{PASSWORD}\"}}");
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
fn appliance_boots_configured_serves_and_keeps_changes_over_a_power_cycle() {
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
    disk.write_config(&format!(
        "node_name: appliance-1\nadmin:\n  password: {PASSWORD}\ncluster:\n  bootstrap:\n{bootstrap}"
    ));
    let (admin, web) = (free_port(), free_port());
    let nics = || {
        vec![Nic::User {
            forward: vec![(admin, 9090), (web, 8080)],
        }]
    };

    let started = Instant::now();
    let mut vm = Vm::boot("vm1", &disk, &nics());
    wait_for(&vm, BOOT, "/readyz", || ready(admin));
    eprintln!("boot to ready: {:.0?}", started.elapsed());
    let console = vm.console();
    assert!(console.contains("node appliance-1"), "banner: {console}");
    assert!(
        console.contains("https://10.0.2.15:9090/ui/"),
        "banner with the dashboard URL"
    );
    assert!(
        !console.contains("Password:"),
        "a given password is not shown"
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
    let started = Instant::now();
    let vm = Vm::boot("vm1-again", &disk, &nics());
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
    drop(rt);
}

fn config_json(member_port: u16) -> String {
    let doc = keel_tests::spec(&config(member_port));
    serde_json::to_string(&keel_model::Document::from_spec(&doc)).unwrap()
}

#[test]
fn two_appliances_on_one_network_form_a_cluster() {
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let (admin1, admin2, link) = (free_port(), free_port(), free_port());
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

    let disk2 = Disk::copy(&image, dir.path(), "vm-b");
    disk2.write_config(&format!(
        "node_name: appliance-b\n{}  join:\n    address: 10.77.0.1:9091\n    token: {join}\n",
        network(2)
    ));
    let vm2 = Vm::boot(
        "vm-b",
        &disk2,
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
