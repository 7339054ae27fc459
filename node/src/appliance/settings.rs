//! `keel.yaml`, the appliance's settings: what a user writes on the
//! KEEL-CONFIG partition (or under `keel:` in a cloud-init user-data), and
//! its validation. Every problem is reported with the field it is in.

use std::net::IpAddr;

use serde::Deserialize;

/// The whole file. Every section is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub node_name: Option<String>,
    pub network: Option<Network>,
    pub admin: Option<Admin>,
    pub cluster: Option<Cluster>,
    pub ssh: Option<Ssh>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// A static `ADDRESS/PREFIX` for the first Ethernet interface.
    pub address: Option<String>,
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    /// Per-interface settings.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ntp: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// An interface name (`ens3`) or MAC address (`52:54:00:12:34:56`).
    #[serde(rename = "match")]
    pub matches: String,
    /// `ADDRESS/PREFIX`; DHCP when absent.
    pub address: Option<String>,
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub password: Option<String>,
    pub password_hash: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The address other nodes reach this one at.
    pub advertise: Option<IpAddr>,
    /// Keel config applied when this node creates the cluster.
    pub bootstrap: Option<serde_yaml_ng::Value>,
    pub join: Option<Join>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// The cluster address (`HOST:PORT`) of a node of the cluster.
    pub address: String,
    /// A join token from `keel token create`.
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    #[serde(default)]
    pub authorized_keys: Vec<String>,
}

/// How an interface entry names its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Name(String),
    Mac(String),
}

impl Settings {
    /// Parses and validates `text`; the error lists every problem, one per
    /// line, each naming its field.
    pub fn parse(text: &str) -> Result<Settings, String> {
        let settings: Settings = if text.trim().is_empty() {
            Settings::default()
        } else {
            serde_yaml_ng::from_str::<Option<Settings>>(text)
                .map_err(|e| e.to_string())?
                .unwrap_or_default()
        };
        let problems = settings.problems();
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems.join("\n"))
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(name) = &self.node_name {
            if let Err(e) = crate::cluster::check_node_name(name) {
                out.push(format!("node_name: {e}"));
            }
        }
        if let Some(net) = &self.network {
            if let Some(a) = &net.address {
                if let Err(e) = parse_cidr(a) {
                    out.push(format!("network.address: {e}"));
                }
            } else if net.gateway.is_some() || !net.dns.is_empty() {
                out.push("network.gateway, network.dns: only with a static network.address (DHCP provides them)".into());
            }
            for (i, iface) in net.interfaces.iter().enumerate() {
                let at = format!("network.interfaces[{i}]");
                if let Err(e) = parse_match(&iface.matches) {
                    out.push(format!("{at}.match: {e}"));
                }
                match &iface.address {
                    Some(a) => {
                        if let Err(e) = parse_cidr(a) {
                            out.push(format!("{at}.address: {e}"));
                        }
                    }
                    None if iface.gateway.is_some() || !iface.dns.is_empty() => out.push(format!(
                        "{at}: gateway and dns only with a static address (DHCP provides them)"
                    )),
                    None => {}
                }
            }
            for (i, server) in net.ntp.iter().enumerate() {
                if server.is_empty() || server.contains(char::is_whitespace) {
                    out.push(format!(
                        "network.ntp[{i}]: {server:?} is not a host name or address"
                    ));
                }
            }
        }
        if let Some(admin) = &self.admin {
            match (&admin.password, &admin.password_hash) {
                (Some(_), Some(_)) => {
                    out.push("admin: give password or password_hash, not both".into())
                }
                (Some(p), None) if p.chars().count() < 12 => {
                    out.push("admin.password: use at least 12 characters".into())
                }
                (None, Some(h)) if !keel_web_core::is_password_hash(h) => out.push(
                    "admin.password_hash: not an argon2 hash (make one with `keel hash-password`)"
                        .into(),
                ),
                _ => {}
            }
        }
        if let Some(cluster) = &self.cluster {
            if cluster.bootstrap.is_some() && cluster.join.is_some() {
                out.push("cluster: bootstrap (a new cluster) and join (an existing one) exclude each other".into());
            }
            if let Some(spec) = &cluster.bootstrap {
                if let Err(e) = bootstrap_text(spec) {
                    out.push(format!("cluster.bootstrap: {e}"));
                }
            }
            if let Some(join) = &cluster.join {
                if !valid_host_port(&join.address) {
                    out.push(format!(
                        "cluster.join.address: {:?} is not HOST:PORT",
                        join.address
                    ));
                }
                if let Err(e) = join.token.parse::<crate::cluster::JoinToken>() {
                    out.push(format!("cluster.join.token: {e}"));
                }
            }
        }
        if let Some(ssh) = &self.ssh {
            for (i, key) in ssh.authorized_keys.iter().enumerate() {
                let mut words = key.split_whitespace();
                let kind_ok = words.next().is_some_and(|k| {
                    k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-")
                });
                if !kind_ok || words.next().is_none() || key.contains('\n') {
                    out.push(format!(
                        "ssh.authorized_keys[{i}]: not an OpenSSH public key line (\"ssh-ed25519 AAAA... comment\")"
                    ));
                }
            }
        }
        out
    }
}

/// The bootstrap config as the YAML `keel run --config` reads, once it has
/// passed Keel's own validation.
pub fn bootstrap_text(spec: &serde_yaml_ng::Value) -> Result<String, String> {
    let text = serde_yaml_ng::to_string(spec).map_err(|e| e.to_string())?;
    keel_model::Document::parse_spec(&text).map_err(|e| e.to_string())?;
    Ok(text)
}

/// `ADDRESS/PREFIX`.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (ip, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} needs a prefix length, e.g. 192.168.1.10/24"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix.parse::<u8>() {
        Ok(p) if p <= max => Ok((ip, p)),
        _ => Err(format!("the prefix length {prefix:?} is not 0 to {max}")),
    }
}

/// An interface name or a MAC address.
pub fn parse_match(text: &str) -> Result<Match, String> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() == 6 {
        if parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Ok(Match::Mac(text.to_ascii_lowercase()));
        }
        return Err(format!("{text:?} is not a MAC address"));
    }
    let name_ok = !text.is_empty()
        && text.len() <= 15
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if name_ok {
        Ok(Match::Name(text.to_string()))
    } else {
        Err(format!(
            "{text:?} is neither an interface name nor a MAC address"
        ))
    }
}

fn valid_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty()
        && !host.contains(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// Settings from a cloud-init NoCloud seed: `keel:` in the `#cloud-config`
/// user-data holds the same settings as keel.yaml; cloud-init's own
/// `hostname` (or meta-data's `local-hostname`) and `ssh_authorized_keys`
/// are used too.
pub fn from_cloud_init(user_data: &str, meta_data: Option<&str>) -> Result<Settings, String> {
    if !user_data.starts_with("#cloud-config") {
        return Err("user-data: only #cloud-config user-data is understood".into());
    }
    #[derive(Deserialize, Default)]
    struct CloudConfig {
        keel: Option<serde_yaml_ng::Value>,
        hostname: Option<String>,
        #[serde(default)]
        ssh_authorized_keys: Vec<String>,
    }
    #[derive(Deserialize, Default)]
    struct MetaData {
        #[serde(rename = "local-hostname")]
        local_hostname: Option<String>,
    }
    let cloud: CloudConfig = serde_yaml_ng::from_str::<Option<CloudConfig>>(user_data)
        .map_err(|e| format!("user-data: {e}"))?
        .unwrap_or_default();
    let meta: MetaData = match meta_data {
        Some(text) => serde_yaml_ng::from_str::<Option<MetaData>>(text)
            .map_err(|e| format!("meta-data: {e}"))?
            .unwrap_or_default(),
        None => MetaData::default(),
    };
    let keel_text = match &cloud.keel {
        Some(v) => serde_yaml_ng::to_string(v).map_err(|e| format!("user-data: keel: {e}"))?,
        None => String::new(),
    };
    let mut settings = Settings::parse(&keel_text).map_err(|e| {
        e.lines()
            .map(|l| format!("user-data: keel.{l}"))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    if settings.node_name.is_none() {
        settings.node_name = cloud.hostname.or(meta.local_hostname);
        if let Some(name) = &settings.node_name {
            crate::cluster::check_node_name(name)
                .map_err(|e| format!("user-data: hostname: {e}"))?;
        }
    }
    if !cloud.ssh_authorized_keys.is_empty() {
        settings
            .ssh
            .get_or_insert_with(Ssh::default)
            .authorized_keys
            .extend(cloud.ssh_authorized_keys);
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../../images/keel.yaml.example");
        let s = Settings::parse(text).expect("the shipped example parses");
        assert_eq!(s.node_name.as_deref(), Some("keel-1"));
    }

    #[test]
    fn empty_and_comment_only_files_mean_defaults() {
        assert!(Settings::parse("").is_ok());
        assert!(Settings::parse("# nothing\n").is_ok());
        assert!(Settings::parse("admin:\ncluster:\n").is_ok());
    }

    #[test]
    fn every_problem_names_its_field() {
        let text = "node_name: 'bad name'\n\
            network:\n  address: 10.0.0.5\n  interfaces:\n    - match: '52:54:zz:00:00:01'\n      address: 10.1.0.1/40\n\
            admin:\n  password: short\n\
            cluster:\n  join:\n    address: nohost\n    token: nope\n\
            ssh:\n  authorized_keys: [hello]\n";
        let err = Settings::parse(text).unwrap_err();
        for field in [
            "node_name:",
            "network.address:",
            "network.interfaces[0].match:",
            "network.interfaces[0].address:",
            "admin.password:",
            "cluster.join.address:",
            "cluster.join.token:",
            "ssh.authorized_keys[0]:",
        ] {
            assert!(err.contains(field), "{field} missing from:\n{err}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_bootstrap_configs_are_refused() {
        let err = Settings::parse("netwrk: {}\n").unwrap_err();
        assert!(err.contains("unknown field `netwrk`"), "{err}");
        let err = Settings::parse(
            "cluster:\n  bootstrap:\n    pools:\n      - name: app\n        members: [{address: 'not-an-address'}]\n",
        )
        .unwrap_err();
        assert!(err.starts_with("cluster.bootstrap:"), "{err}");
    }

    #[test]
    fn bootstrap_and_join_exclude_each_other() {
        let token = format!(
            "KEEL1.{}.{}.{}",
            "a".repeat(64),
            "b".repeat(8),
            "c".repeat(32)
        );
        let text = format!(
            "cluster:\n  bootstrap: {{}}\n  join: {{address: '10.0.0.1:9091', token: '{token}'}}\n"
        );
        let err = Settings::parse(&text).unwrap_err();
        assert!(err.contains("exclude each other"), "{err}");
    }

    #[test]
    fn cloud_init_user_data_carries_the_same_settings() {
        let user =
            "#cloud-config\nhostname: edge-2\nssh_authorized_keys: ['ssh-ed25519 AAAA me']\n\
            keel:\n  admin: {password: 'long enough pw'}\n";
        let s = from_cloud_init(user, Some("local-hostname: other\n")).unwrap();
        assert_eq!(s.node_name.as_deref(), Some("edge-2"));
        assert_eq!(s.ssh.unwrap().authorized_keys.len(), 1);
        let s = from_cloud_init("#cloud-config\n", Some("local-hostname: edge-3\n")).unwrap();
        assert_eq!(s.node_name.as_deref(), Some("edge-3"));
        let err =
            from_cloud_init("#cloud-config\nkeel: {admin: {password: x}}\n", None).unwrap_err();
        assert!(err.contains("user-data: keel.admin.password"), "{err}");
        assert!(from_cloud_init("#!/bin/sh\necho hi\n", None).is_err());
    }
}
