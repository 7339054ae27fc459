//! Gratuitous ARP and unsolicited neighbour advertisements.
//!
//! With the default `arp_accept=0` a neighbour only updates an entry it
//! already has, so one announcement is enough for clients that talked to the
//! VIP before; the rule repeats it anyway in case a frame is lost.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pnet::datalink::{self, Channel};
use pnet::packet::arp::{ArpHardwareTypes, ArpOperation, ArpOperations, MutableArpPacket};
use pnet::packet::ethernet::{EtherTypes, MutableEthernetPacket};
use pnet::packet::icmpv6::{self, Icmpv6Packet};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv6::MutableIpv6Packet;
use pnet::util::MacAddr;

use crate::{Interface, Vip, VipError};

const ETHERNET_HEADER: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HEADER: usize = 40;
/// ICMPv6 neighbour advertisement (24 bytes) with one target link-layer
/// address option (8 bytes).
const NA_LEN: usize = 32;
const NA_OVERRIDE: u8 = 0x20;
const OPTION_TARGET_LINK_LAYER: u8 = 2;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

/// Tells the link that `vip` is at `interface`'s hardware address. Blocking
/// (raw socket); call from `spawn_blocking`.
pub fn announce(vip: Vip, interface: &Interface) -> Result<(), VipError> {
    let failed = |reason: String| VipError::Announce {
        vip,
        interface: interface.name.clone(),
        reason,
    };
    let mac = interface
        .mac
        .map(|m| MacAddr::new(m[0], m[1], m[2], m[3], m[4], m[5]))
        .ok_or_else(|| failed("the interface has no hardware address".into()))?;
    let frames = match vip.addr {
        IpAddr::V4(ip) => vec![
            arp_frame(mac, ip, ArpOperations::Request),
            arp_frame(mac, ip, ArpOperations::Reply),
        ],
        IpAddr::V6(ip) => vec![neighbour_advert_frame(mac, ip)],
    };
    let raw = datalink::interfaces()
        .into_iter()
        .find(|i| i.index == interface.index)
        .ok_or_else(|| failed("the interface is gone".into()))?;
    let config = datalink::Config {
        read_timeout: Some(std::time::Duration::from_millis(1)),
        ..Default::default()
    };
    let mut tx = match datalink::channel(&raw, config) {
        Ok(Channel::Ethernet(tx, _rx)) => tx,
        Ok(_) => return Err(failed("not an Ethernet interface".into())),
        Err(e) => return Err(failed(e.to_string())),
    };
    for frame in frames {
        match tx.send_to(&frame, None) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(failed(e.to_string())),
            None => return Err(failed("the channel refused the frame".into())),
        }
    }
    Ok(())
}

/// A gratuitous ARP: sender and target IP are both the VIP, broadcast.
fn arp_frame(mac: MacAddr, ip: Ipv4Addr, operation: ArpOperation) -> Vec<u8> {
    let mut buffer = vec![0u8; ETHERNET_HEADER + ARP_LEN];
    {
        let mut arp = MutableArpPacket::new(&mut buffer[ETHERNET_HEADER..])
            .expect("buffer sized for an ARP packet");
        arp.set_hardware_type(ArpHardwareTypes::Ethernet);
        arp.set_protocol_type(EtherTypes::Ipv4);
        arp.set_hw_addr_len(6);
        arp.set_proto_addr_len(4);
        arp.set_operation(operation);
        arp.set_sender_hw_addr(mac);
        arp.set_sender_proto_addr(ip);
        // Requests leave the target hardware address unknown; the reply form
        // names the sender again, as arping -A does.
        arp.set_target_hw_addr(if operation == ArpOperations::Reply {
            mac
        } else {
            MacAddr::zero()
        });
        arp.set_target_proto_addr(ip);
    }
    let mut ethernet =
        MutableEthernetPacket::new(&mut buffer).expect("buffer sized for an Ethernet header");
    ethernet.set_destination(MacAddr::broadcast());
    ethernet.set_source(mac);
    ethernet.set_ethertype(EtherTypes::Arp);
    buffer
}

/// An unsolicited neighbour advertisement with the Override flag, to all
/// nodes.
fn neighbour_advert_frame(mac: MacAddr, ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut advert = [0u8; NA_LEN];
    advert[0] = ICMPV6_NEIGHBOR_ADVERT;
    advert[4] = NA_OVERRIDE;
    advert[8..24].copy_from_slice(&ip.octets());
    advert[24] = OPTION_TARGET_LINK_LAYER;
    advert[25] = 1; // option length in units of 8 bytes
    advert[26..32].copy_from_slice(&mac.octets());
    let checksum = icmpv6::checksum(
        &Icmpv6Packet::new(&advert).expect("buffer sized for ICMPv6"),
        &ip,
        &all_nodes,
    );
    advert[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut buffer = vec![0u8; ETHERNET_HEADER + IPV6_HEADER + NA_LEN];
    buffer[ETHERNET_HEADER + IPV6_HEADER..].copy_from_slice(&advert);
    {
        let mut ipv6 = MutableIpv6Packet::new(&mut buffer[ETHERNET_HEADER..])
            .expect("buffer sized for an IPv6 header");
        ipv6.set_version(6);
        ipv6.set_payload_length(NA_LEN as u16);
        ipv6.set_next_header(IpNextHeaderProtocols::Icmpv6);
        // Receivers drop neighbour discovery that crossed a router.
        ipv6.set_hop_limit(255);
        ipv6.set_source(ip);
        ipv6.set_destination(all_nodes);
    }
    let mut ethernet =
        MutableEthernetPacket::new(&mut buffer).expect("buffer sized for an Ethernet header");
    // 33:33 + the low 32 bits of ff02::1.
    ethernet.set_destination(MacAddr::new(0x33, 0x33, 0, 0, 0, 1));
    ethernet.set_source(mac);
    ethernet.set_ethertype(EtherTypes::Ipv6);
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet::packet::arp::ArpPacket;
    use pnet::packet::Packet;

    #[test]
    fn gratuitous_arp_names_the_vip_as_sender_and_target() {
        let mac = MacAddr::new(2, 0, 0, 0, 0, 1);
        let vip = Ipv4Addr::new(10, 77, 0, 100);
        for op in [ArpOperations::Request, ArpOperations::Reply] {
            let frame = arp_frame(mac, vip, op);
            assert_eq!(&frame[0..6], &[0xff; 6], "broadcast");
            assert_eq!(&frame[12..14], &[0x08, 0x06], "ethertype ARP");
            let arp = ArpPacket::new(&frame[ETHERNET_HEADER..]).unwrap();
            assert_eq!(arp.get_operation(), op);
            assert_eq!(arp.get_sender_proto_addr(), vip);
            assert_eq!(arp.get_target_proto_addr(), vip);
            assert_eq!(arp.get_sender_hw_addr(), mac);
        }
    }

    #[test]
    fn neighbour_advert_has_override_and_a_valid_checksum() {
        let mac = MacAddr::new(2, 0, 0, 0, 0, 1);
        let vip: Ipv6Addr = "fd77::100".parse().unwrap();
        let frame = neighbour_advert_frame(mac, vip);
        let ipv6 = pnet::packet::ipv6::Ipv6Packet::new(&frame[ETHERNET_HEADER..]).unwrap();
        assert_eq!(ipv6.get_hop_limit(), 255);
        let icmp = Icmpv6Packet::new(ipv6.payload()).unwrap();
        assert_eq!(icmp.packet()[0], ICMPV6_NEIGHBOR_ADVERT);
        assert_eq!(icmp.packet()[4] & NA_OVERRIDE, NA_OVERRIDE);
        let expected = icmpv6::checksum(&icmp, &vip, &ipv6.get_destination());
        assert_eq!(icmp.get_checksum(), expected);
        assert_eq!(&icmp.packet()[26..32], &mac.octets());
    }
}
