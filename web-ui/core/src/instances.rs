//! The instance registry: EC2-style instance IDs and the address each
//! stands for (`keel instance add`, `/api/v1/instances`), kept as the
//! annotations `instance/ID`. Classic ELB registers instances by ID, and
//! ELBv2 instance target groups name them; the admin API manages them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use keel_model::{ClusterCommand, ClusterState};

/// Every registered instance ID and its address.
pub fn all(state: &ClusterState) -> impl Iterator<Item = (String, IpAddr)> + '_ {
    state.annotations.iter().filter_map(|(object, values)| {
        let id = object.strip_prefix("instance/")?;
        let address = values.get("address")?.parse().ok()?;
        Some((id.to_owned(), address))
    })
}

/// Instance IDs: 1-64 letters, digits, `-`, `_` or `.`.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > 64 || !id.chars().all(ok) {
        return Err("must be 1-64 letters, digits, '-', '_' or '.'".into());
    }
    Ok(())
}

/// The command that adds (or moves) instance `id`, or with no address
/// removes it.
pub fn register(id: &str, address: Option<IpAddr>) -> ClusterCommand {
    ClusterCommand::Annotate {
        object: format!("instance/{id}"),
        values: address
            .map(|a| BTreeMap::from([("address".to_owned(), a.to_string())]))
            .unwrap_or_default(),
    }
}

/// The address an instance ID stands for: the registry's, or the ID
/// itself when it is an IP address.
pub fn address_of(state: &ClusterState, id: &str) -> Option<IpAddr> {
    all(state)
        .find(|(i, _)| i == id)
        .map(|(_, a)| a)
        .or_else(|| id.parse().ok())
}

/// The instance ID an address stands for (the address itself when no
/// registered instance has it).
pub fn id_of(state: &ClusterState, ip: IpAddr) -> String {
    all(state)
        .find(|(_, a)| *a == ip)
        .map_or_else(|| ip.to_string(), |(id, _)| id)
}
