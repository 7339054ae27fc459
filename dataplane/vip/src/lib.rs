//! Claims and releases virtual IPs on this host.
//!
//! A claim adds the address to an interface through netlink (IPv6 with
//! `nodad`, both without a prefix route so the node's own traffic keeps its
//! source address) with a short kernel lifetime that the owner keeps
//! refreshing: a process that hangs or is stopped loses the address by
//! itself. An announcement sends gratuitous ARP in request and reply form, or
//! an unsolicited IPv6 neighbour advertisement with the Override flag, so
//! neighbours repoint their caches at this host.
//!
//! This crate does what it is told; when to claim is decided in `node`.

mod announce;
mod netlink;

use std::future::Future;
use std::time::Duration;

pub use announce::announce;
pub use keel_model::Vip;
pub use netlink::Netlink;

/// The interface a VIP lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// Hardware address; announcements need one.
    pub mac: Option<[u8; 6]>,
    /// Administratively up and with carrier.
    pub running: bool,
}

/// Why a VIP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// No interface was named and none has an address in the VIP's subnet.
    #[error("no interface has an address in the subnet of {0}; name one with --vip-interface")]
    NoInterface(Vip),
    /// The named interface does not exist.
    #[error("interface {0} does not exist")]
    UnknownInterface(String),
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// Sending an announcement failed (raw sockets need CAP_NET_RAW).
    #[error("announcing {vip} on {interface}: {reason}")]
    Announce {
        vip: Vip,
        interface: String,
        reason: String,
    },
}

/// Finds the interface for `vip`: the one named, or else the one with an
/// address whose network contains the VIP.
pub fn interface_for(vip: &Vip, name: Option<&str>) -> Result<Interface, VipError> {
    let all = pnet::datalink::interfaces();
    let found = match name {
        Some(name) => all
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| VipError::UnknownInterface(name.to_owned()))?,
        None => all
            .into_iter()
            .filter(|i| !i.is_loopback())
            .find(|i| {
                i.ips
                    .iter()
                    .any(|n| n.ip() != vip.addr && n.contains(vip.addr))
            })
            .ok_or(VipError::NoInterface(*vip))?,
    };
    Ok(Interface {
        running: found.is_up() && found.is_running(),
        mac: found.mac.map(|m| m.octets()),
        name: found.name,
        index: found.index,
    })
}

/// Every address of this host's interfaces: (interface, address, prefix
/// length).
pub fn host_addresses() -> Vec<(String, std::net::IpAddr, u8)> {
    pnet::datalink::interfaces()
        .into_iter()
        .flat_map(|i| {
            i.ips
                .iter()
                .map(|n| (i.name.clone(), n.ip(), n.prefix()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The address operations the VIP rule needs; netlink in production, an
/// in-memory table in tests.
pub trait Addresses: Send + Sync + 'static {
    /// Adds `vip` to `interface` (or refreshes its lifetime); true when it was
    /// not there before.
    fn hold(
        &self,
        vip: Vip,
        interface: &Interface,
        lifetime: Duration,
    ) -> impl Future<Output = Result<bool, VipError>> + Send;
    /// Removes `vip` from every interface; true when it was there.
    fn release(&self, vip: Vip) -> impl Future<Output = Result<bool, VipError>> + Send;
    /// True when `vip` is on an interface of this host.
    fn holds(&self, vip: Vip) -> impl Future<Output = Result<bool, VipError>> + Send;
}
