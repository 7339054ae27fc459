//! Address add and remove through rtnetlink.

use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, CacheInfo};
use rtnetlink::Handle;

use crate::{Addresses, Interface, Vip, VipError};

/// Netlink access to this network namespace's addresses.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket; its connection runs as a task on the current
    /// runtime until the last handle is dropped.
    pub fn open() -> Result<Self, VipError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| VipError::Netlink(e.to_string()))?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    async fn find(&self, addr: IpAddr) -> Result<Vec<AddressMessage>, VipError> {
        self.handle
            .address()
            .get()
            .set_address_filter(addr)
            .execute()
            .try_collect()
            .await
            .map_err(|e| VipError::Netlink(e.to_string()))
    }
}

impl Addresses for Netlink {
    async fn hold(
        &self,
        vip: Vip,
        interface: &Interface,
        lifetime: Duration,
    ) -> Result<bool, VipError> {
        let present = self
            .find(vip.addr)
            .await?
            .iter()
            .any(|m| m.header.index == interface.index);
        let mut request = self
            .handle
            .address()
            .add(interface.index, vip.addr, vip.prefix_len)
            .replace();
        let message = request.message_mut();
        // No prefix route: the node's own traffic must keep using its own
        // address as source, or its connections would break when the VIP
        // moves. No DAD: the address must be usable at once.
        let mut flags = AddressFlags::Noprefixroute;
        if vip.addr.is_ipv6() {
            flags |= AddressFlags::Nodad;
        }
        message.attributes.push(AddressAttribute::Flags(flags));
        let seconds = u32::try_from(lifetime.as_secs().max(1)).unwrap_or(u32::MAX);
        let mut lifetimes = CacheInfo::default();
        lifetimes.ifa_valid = seconds;
        lifetimes.ifa_preferred = seconds;
        message
            .attributes
            .push(AddressAttribute::CacheInfo(lifetimes));
        request
            .execute()
            .await
            .map_err(|e| VipError::Netlink(format!("adding {vip} to {}: {e}", interface.name)))?;
        Ok(!present)
    }

    async fn release(&self, vip: Vip) -> Result<bool, VipError> {
        let found = self.find(vip.addr).await?;
        let was_there = !found.is_empty();
        for message in found {
            self.handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(|e| VipError::Netlink(format!("removing {vip}: {e}")))?;
        }
        Ok(was_there)
    }

    async fn holds(&self, vip: Vip) -> Result<bool, VipError> {
        Ok(!self.find(vip.addr).await?.is_empty())
    }
}
