//! Frozen: how annotations written before cluster version 10 find the
//! object they describe, read from the key the writing API made.
//!
//! Entries from before [`crate::ClusterCommand::Note`] carry no object
//! reference, so replaying them (from the log, on any node, at any later
//! version) must decide exactly as the nodes that first applied them did:
//! this code may never change, and a test pins its text by hash. Every
//! annotation written since names its object ([`crate::ObjectRef`]), and
//! the model reads no key. This is the only place in the model that knows
//! a compatibility API's key formats.

/// Whether the object an annotation key names is still in `spec`
/// (`targetgroup/NAME` and `tags/targetgroup/NAME` are pools,
/// `tags/loadbalancer/NAME` load balancers, `rules/LB/PORT` listeners;
/// other keys always are).
pub(crate) fn annotated_exists(spec: &crate::Spec, object: &str) -> bool {
    let object = object.strip_prefix("tags/").unwrap_or(object);
    if let Some(rest) = object.strip_prefix("octavia/") {
        return octavia_exists(spec, rest);
    }
    if let Some(rest) = object.strip_prefix("rules/") {
        // ELBv2's rule IDs, per listener: `rules/LB/PORT`.
        return octavia_exists(spec, &format!("listener/{rest}"));
    }
    match object.split_once('/') {
        Some(("targetgroup", name)) => spec.pools.contains_key(name),
        Some(("loadbalancer" | "elb", name)) => spec.load_balancers.contains_key(name),
        _ => true,
    }
}

/// The Octavia API's annotations: `loadbalancer/LB`, `listener/LB/PORT`,
/// `l7policy/LB/PORT/ID`, `pool/POOL`, `healthmonitor/POOL`,
/// `member/POOL/ADDRESS`.
fn octavia_exists(spec: &crate::Spec, key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    let listener = |lb: &str, port: &str| {
        spec.load_balancers
            .get(lb)
            .is_some_and(|l| l.listeners.iter().any(|x| x.port.to_string() == port))
    };
    match parts.as_slice() {
        ["loadbalancer", lb] => spec.load_balancers.contains_key(*lb),
        ["listener", lb, port] | ["l7policy", lb, port, _] => listener(lb, port),
        ["pool", pool] => spec.pools.contains_key(*pool),
        ["healthmonitor", pool] => spec
            .pools
            .get(*pool)
            .is_some_and(|p| p.health_check.is_some()),
        ["member", pool, address] => spec
            .pools
            .get(*pool)
            .is_some_and(|p| p.members.iter().any(|m| m.address.to_string() == *address)),
        _ => true,
    }
}
