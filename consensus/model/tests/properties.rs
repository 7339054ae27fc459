//! Property tests: apply keeps every invariant, diff reproduces its target,
//! and the document form round-trips.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use keel_model::{
    Algorithm, Certificate, CheckKind, Command, Document, HealthCheck, Listener, LoadBalancer,
    Member, Pool, Protocol, Spec, StatusRanges, TlsPolicy,
};
use proptest::prelude::*;

const POOLS: [&str; 4] = ["a", "b", "c", "d"];

fn member() -> impl Strategy<Value = Member> {
    (1u8..6, 8000u16..8004, 0u32..5, any::<bool>()).prop_map(|(host, port, weight, enabled)| {
        Member {
            address: SocketAddr::from(([10, 0, 0, host], port)),
            weight,
            enabled,
        }
    })
}

fn health_check() -> impl Strategy<Value = Option<HealthCheck>> {
    proptest::option::of(
        (
            any::<bool>(),
            1u64..5,
            1u32..4,
            proptest::option::of(1u16..),
        )
            .prop_map(|(http, secs, n, port)| HealthCheck {
                kind: if http {
                    CheckKind::Http {
                        method: "GET".into(),
                        path: "/health".into(),
                        host: None,
                        expected_codes: StatusRanges(vec![(200, 299)]),
                    }
                } else {
                    CheckKind::Tcp
                },
                interval: Duration::from_secs(secs),
                timeout: Duration::from_millis(500),
                healthy_threshold: n,
                unhealthy_threshold: n + 1,
                port,
            }),
    )
}

fn pool(name: &'static str) -> impl Strategy<Value = Pool> {
    (
        prop_oneof![
            Just(Algorithm::RoundRobin),
            Just(Algorithm::LeastOutstanding),
            Just(Algorithm::RandomTwo),
            Just(Algorithm::SourceHash)
        ],
        health_check(),
        proptest::collection::vec(member(), 0..4),
        1u64..60,
    )
        .prop_map(move |(algorithm, health_check, mut members, drain)| {
            let mut seen = Vec::new();
            members.retain(|m| {
                let fresh = !seen.contains(&m.address);
                seen.push(m.address);
                fresh
            });
            Pool {
                name: name.into(),
                algorithm,
                health_check,
                drain_timeout: Duration::from_secs(drain),
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(30),
                proxy_protocol: None,
                hash_on: None,
                stickiness: None,
                tls: None,
                http_version: Default::default(),
                members,
            }
        })
}

/// A valid spec: pools `a` and maybe more, load balancers on distinct ports.
fn spec() -> impl Strategy<Value = Spec> {
    (
        pool("a"),
        proptest::collection::vec(pool("b"), 0..2),
        proptest::collection::vec(pool("c"), 0..2),
        proptest::collection::vec((0usize..3, 0usize..4, any::<bool>()), 0..4),
        proptest::collection::btree_set(0u8..4, 0..3),
    )
        .prop_map(|(a, b, c, lbs, certs)| {
            let mut pools = BTreeMap::new();
            for p in std::iter::once(a).chain(b).chain(c) {
                pools.insert(p.name.clone(), p);
            }
            let names: Vec<String> = pools.keys().cloned().collect();
            let mut load_balancers = BTreeMap::new();
            for (i, (n_listeners, pool_i, http)) in lbs.into_iter().enumerate() {
                let name = format!("lb{i}");
                let listeners = (0..n_listeners)
                    .map(|j| Listener {
                        port: 1000 + (i * 10 + j) as u16,
                        protocol: if http { Protocol::Http } else { Protocol::Tcp },
                        bind: None,
                        default_pool: Some(names[(pool_i + j) % names.len()].clone()),
                        idle_timeout: Duration::from_secs(60),
                        header_timeout: Duration::from_secs(10),
                        certificates: Vec::new(),
                        tls_policy: TlsPolicy::default(),
                        http2: true,
                        rules: Vec::new(),
                        accept_proxy_protocol: false,
                        request_timeout: None,
                        client_timeout: None,
                        keepalive_timeout: None,
                        max_connections: None,
                        rate_limit: None,
                        trusted_proxies: Vec::new(),
                    })
                    .collect();
                load_balancers.insert(
                    name.clone(),
                    LoadBalancer {
                        name,
                        vip: None,
                        listeners,
                    },
                );
            }
            let certificates = certs
                .into_iter()
                .map(|n| {
                    let name = format!("cert{n}");
                    let cert = Certificate {
                        name: name.clone(),
                        cert_pem: format!(
                            "-----BEGIN CERTIFICATE-----\n{n}\n-----END CERTIFICATE-----\n"
                        ),
                        key_pem: format!(
                            "-----BEGIN PRIVATE KEY-----\n{n}\n-----END PRIVATE KEY-----\n"
                        ),
                    };
                    (name, cert)
                })
                .collect();
            Spec {
                load_balancers,
                pools,
                certificates,
            }
        })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        pool("a").prop_map(|p| Command::UpsertPool(Box::new(p))),
        pool("d").prop_map(|p| Command::UpsertPool(Box::new(p))),
        (0usize..4).prop_map(|i| Command::RemovePool {
            name: POOLS[i].into()
        }),
        (0usize..3).prop_map(|i| Command::RemoveLoadBalancer {
            name: format!("lb{i}")
        }),
        (0usize..4, member()).prop_map(|(i, member)| Command::UpsertMember {
            pool: POOLS[i].into(),
            member
        }),
        (0usize..4, member()).prop_map(|(i, m)| Command::RemoveMember {
            pool: POOLS[i].into(),
            address: m.address
        }),
        (0usize..4, member(), any::<bool>()).prop_map(|(i, m, enabled)| {
            Command::SetMemberEnabled {
                pool: POOLS[i].into(),
                address: m.address,
                enabled,
            }
        }),
        (0usize..4, 1000u16..1040).prop_map(|(i, port)| Command::UpsertLoadBalancer(
            LoadBalancer {
                name: "new".into(),
                vip: None,
                listeners: vec![Listener {
                    port,
                    protocol: Protocol::Http,
                    bind: None,
                    default_pool: Some(POOLS[i].into()),
                    idle_timeout: Duration::from_secs(1),
                    header_timeout: Duration::from_secs(1),
                    certificates: Vec::new(),
                    tls_policy: TlsPolicy::default(),
                    http2: true,
                    rules: Vec::new(),
                    accept_proxy_protocol: false,
                    request_timeout: None,
                    client_timeout: None,
                    keepalive_timeout: None,
                    max_connections: None,
                    rate_limit: None,
                    trusted_proxies: Vec::new(),
                }],
            }
        )),
    ]
}

proptest! {
    #[test]
    fn generated_specs_are_valid(s in spec()) {
        prop_assert!(s.check().is_empty(), "{:?}", s.check());
    }

    #[test]
    fn diff_then_apply_reaches_target(a in spec(), b in spec()) {
        let mut x = a.clone();
        x.apply(&Command::Batch(a.diff(&b))).unwrap();
        prop_assert_eq!(&x, &b);
        prop_assert!(b.diff(&b).is_empty());
    }

    #[test]
    fn apply_keeps_invariants_or_changes_nothing(s in spec(), cmds in proptest::collection::vec(command(), 1..8)) {
        let mut cur = s;
        for c in &cmds {
            let before = cur.clone();
            match cur.apply(c) {
                Ok(()) => prop_assert!(cur.check().is_empty()),
                Err(_) => prop_assert_eq!(&cur, &before),
            }
        }
    }

    #[test]
    fn document_round_trips(s in spec()) {
        let yaml = Document::from_spec(&s).to_yaml();
        prop_assert_eq!(Document::parse_spec(&yaml).unwrap(), s.clone());
        let json = serde_json::to_string(&Document::from_spec(&s)).unwrap();
        prop_assert_eq!(Document::from_json(&json).unwrap().into_spec().unwrap(), s);
    }
}
