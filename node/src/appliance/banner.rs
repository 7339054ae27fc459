//! The console banner (`/etc/issue`): node name, addresses, the dashboard's
//! URL, the cluster CA's fingerprint (to pin with `keel login
//! --ca-fingerprint`) and, until it is changed, the generated admin password. Addresses
//! are agetty escapes (`\4{ens3}`), so the login prompt shows them as they
//! are now and agetty redraws it when they change.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::setup::{ethernet_interfaces, ADMIN_PORT};

/// What the banner is made from and where it goes.
#[derive(Debug, Clone)]
pub struct Paths {
    pub sys_net: PathBuf,
    pub hostname: PathBuf,
    pub setup_error: PathBuf,
    pub initial_password: PathBuf,
    pub ca: PathBuf,
    pub issue: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            sys_net: "/sys/class/net".into(),
            hostname: "/etc/hostname".into(),
            setup_error: "/run/keel/setup-error".into(),
            initial_password: PathBuf::from("/var/lib/keel/node")
                .join(crate::cluster::INITIAL_PASSWORD_FILE),
            ca: "/var/lib/keel/node/tls/ca.pem".into(),
            issue: "/etc/issue".into(),
        }
    }
}

/// agetty gives `\` a meaning: text from elsewhere is shown as is.
fn literal(text: &str) -> String {
    text.replace('\\', "\\\\")
}

/// The banner's text.
pub fn render(
    name: &str,
    interfaces: &[String],
    ca_fingerprint: Option<&str>,
    password: Option<&str>,
    problems: Option<&str>,
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "Keel load balancer appliance -- node {}", literal(name));
    let _ = writeln!(t);
    for iface in interfaces {
        let _ = writeln!(t, "  {:<10} \\4{{{iface}}}  \\6{{{iface}}}", literal(iface));
    }
    if let Some(problems) = problems {
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "  keel.yaml has problems; Keel is not running until they are fixed:"
        );
        for line in problems.lines() {
            let _ = writeln!(t, "    {}", literal(line));
        }
    } else {
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "  Dashboard:  https://\\4:{ADMIN_PORT}/ui/   (user admin)"
        );
        let _ = writeln!(t, "  Admin API:  https://\\4:{ADMIN_PORT}/api/v1");
        if let Some(fp) = ca_fingerprint {
            let _ = writeln!(t, "  Cluster CA (keel login --ca-fingerprint):");
            let _ = writeln!(t, "    {}", literal(fp));
        }
        if let Some(p) = password {
            let _ = writeln!(
                t,
                "  Password:   {}   (generated; the dashboard asks you to change it)",
                literal(p.trim())
            );
        }
    }
    let _ = writeln!(t);
    t
}

/// Writes the banner from the system's current state.
pub fn write(paths: &Paths) -> std::io::Result<()> {
    let name = std::fs::read_to_string(&paths.hostname).unwrap_or_else(|_| "keel".into());
    let interfaces: Vec<String> = ethernet_interfaces(&paths.sys_net)
        .into_iter()
        .map(|n| n.name)
        .collect();
    let password = std::fs::read_to_string(&paths.initial_password).ok();
    let problems = std::fs::read_to_string(&paths.setup_error).ok();
    let ca_fingerprint = std::fs::read_to_string(&paths.ca)
        .ok()
        .and_then(|pem| crate::pki::fingerprint(&pem).ok())
        .map(|hex| format!("SHA256:{hex}"));
    let text = render(
        name.trim(),
        &interfaces,
        ca_fingerprint.as_deref(),
        password.as_deref(),
        problems.as_deref(),
    );
    let tmp = paths.issue.with_extension("keel-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &paths.issue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_dashboard_and_the_password_until_it_is_changed() {
        let fp = format!("SHA256:{}", "ab".repeat(32));
        let t = render(
            "edge-1",
            &["ens3".into()],
            Some(&fp),
            Some("0123abcd\n"),
            None,
        );
        assert!(t.contains("node edge-1"));
        assert!(t.contains("ens3       \\4{ens3}"));
        assert!(t.contains("https://\\4:9090/ui/"));
        assert!(t.contains("Password:   0123abcd "));
        assert!(t.contains(&fp) && t.lines().all(|l| l.len() <= 80));
        let t = render("edge-1", &["ens3".into()], None, None, None);
        assert!(!t.contains("Password") && !t.contains("Cluster CA"));
    }

    #[test]
    fn problems_replace_the_dashboard_and_backslashes_stay_literal() {
        let t = render(
            "n",
            &[],
            None,
            None,
            Some("keel.yaml: admin.password: use at least 8\\n"),
        );
        assert!(t.contains("not running"));
        assert!(t.contains("at least 8\\\\n"));
        assert!(!t.contains("Dashboard"));
    }
}
