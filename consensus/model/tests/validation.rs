use keel_model::{Algorithm, ApplyError, Command, Document, ParseError, Protocol, Spec, TlsPolicy};

fn problems(yaml: &str) -> Vec<String> {
    match Document::parse_spec(yaml) {
        Err(ParseError::Invalid(e)) => e.0.iter().map(|e| e.to_string()).collect(),
        other => panic!("expected validation errors, got {other:?}"),
    }
}

const GOOD: &str = r#"
load_balancers:
  - name: web
    vip: 10.77.0.100/24
    listeners:
      - { port: 80, protocol: http, default_pool: app }
      - { port: 5432, protocol: tcp, default_pool: db }
pools:
  - name: app
    algorithm: round_robin
    health_check: { type: http, path: /health, interval: 2s, timeout: 1s,
                    healthy_threshold: 2, unhealthy_threshold: 2, expected_codes: "200-399" }
    drain_timeout: 30s
    members: [ { address: "10.77.1.10:8080", weight: 1 }, { address: "10.77.1.11:8080" } ]
  - name: db
    algorithm: least_outstanding
    members: [ { address: "10.77.1.20:5432" } ]
"#;

#[test]
fn design_example_parses() {
    let spec = Document::parse_spec(GOOD).unwrap();
    let web = &spec.load_balancers["web"];
    assert_eq!(web.vip.unwrap().to_string(), "10.77.0.100/24");
    assert_eq!(web.listeners[1].protocol, Protocol::Tcp);
    assert_eq!(spec.pools["db"].algorithm, Algorithm::LeastOutstanding);
    assert_eq!(spec.pools["app"].members[1].weight, 1);
    let hc = spec.pools["app"].health_check.as_ref().unwrap();
    assert_eq!(hc.unhealthy_threshold, 2);
}

#[test]
fn json_is_accepted() {
    let json = r#"{"pools":[{"name":"p","members":[{"address":"127.0.0.1:1"}]}],
        "load_balancers":[{"name":"l","listeners":[{"port":81,"protocol":"tcp","default_pool":"p"}]}]}"#;
    let spec = Document::from_json(json).unwrap().into_spec().unwrap();
    assert_eq!(spec.load_balancers["l"].listeners[0].port, 81);
}

#[test]
fn every_problem_is_listed_with_its_path() {
    let got = problems(
        r#"
load_balancers:
  - name: web
    listeners:
      - { port: 80, protocol: http, default_pool: nope }
      - { port: 80, protocol: tcp, default_pool: app }
      - { port: 70000, protocol: udp, default_pool: app, idle_timeout: 0s }
pools:
  - name: app
    members: [ { address: "10.0.0.1:80" } ]
  - name: other
    drain_timeout: -5s
    health_check: { type: http, interval: 1s, timeout: 2s, healthy_threshold: 0, expected_codes: "299-200" }
    members: [ { address: "10.0.0.1:80" }, { address: "not-an-address" }, { address: "10.0.0.1:80", weight: -1 } ]
"#,
    );
    let expect = [
        "load_balancers[0].listeners[2].port: must be 1-65535",
        "load_balancers[0].listeners[2].protocol: unknown protocol \"udp\" (expected tcp, http, https, tls or tls_passthrough)",
        "pools[1].health_check.expected_codes: range 299-200 is empty",
        "pools[1].drain_timeout: \"-5s\" is not a duration (examples: 500ms, 2s, 1m)",
        "pools[1].members[1].address: not a socket address (expected IP:PORT, [IPv6]:PORT for IPv6)",
        "pools[1].members[2].weight: must be 0-1000",
        "load_balancers[0].listeners[0].default_pool: no pool named \"nope\"",
        "load_balancers[0].listeners[1].port: 0.0.0.0:80 is already used by load balancer \"web\" (listener 0)",
    ];
    for e in expect {
        assert!(got.iter().any(|g| g == e), "missing {e:?} in {got:#?}");
    }
    // The zero timeout is found even though the same listener has other problems.
    assert!(got.len() >= expect.len(), "{got:#?}");
}

#[test]
fn semantic_rules() {
    let got = problems(
        r#"
load_balancers:
  - { name: "bad name!", listeners: [ { port: 80, protocol: http, default_pool: p, idle_timeout: 0s } ] }
pools:
  - name: p
    health_check: { type: http, interval: 1s, timeout: 2s, healthy_threshold: 0, method: get, path: health }
    members: [ { address: "10.0.0.1:80" }, { address: "10.0.0.1:80" }, { address: "0.0.0.0:80" }, { address: "10.0.0.2:80", weight: 1001 } ]
"#,
    );
    let expect = [
        "load_balancers[0].name: must be 1-64 characters of letters, digits, '-', '_' or '.'",
        "load_balancers[0].listeners[0].idle_timeout: must be longer than zero",
        "pools[0].members[1].address: 10.0.0.1:80 is listed twice in this pool",
        "pools[0].members[2].address: needs a specific IP address and a non-zero port",
        "pools[0].members[3].weight: must be 0-1000",
        "pools[0].health_check.timeout: must not be longer than interval",
        "pools[0].health_check.healthy_threshold: must be 1-100",
        "pools[0].health_check.method: must be an HTTP method in capitals, such as GET",
        "pools[0].health_check.path: must start with / and contain no spaces or control characters",
    ];
    for e in expect {
        assert!(got.iter().any(|g| g == e), "missing {e:?} in {got:#?}");
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
}

#[test]
fn duplicate_names_and_wildcard_port_overlap() {
    let got = problems(
        r#"
load_balancers:
  - { name: a, listeners: [ { port: 80, protocol: http, default_pool: p, bind: 127.0.0.1 } ] }
  - { name: b, listeners: [ { port: 80, protocol: http, default_pool: p } ] }
  - { name: a, listeners: [] }
pools:
  - { name: p }
  - { name: p }
"#,
    );
    assert!(
        got.contains(
            &"load_balancers[2].name: duplicate name (also load_balancers[0])".to_string()
        ),
        "{got:#?}"
    );
    assert!(
        got.contains(&"pools[1].name: duplicate name (also pools[0])".to_string()),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|g| g
                .starts_with("load_balancers[1].listeners[0].port: 0.0.0.0:80 is already used")),
        "{got:#?}"
    );
}

#[test]
fn unknown_fields_are_errors_and_hide_no_other_problem() {
    let got = problems(
        "pools: [ { name: p, colour: red, members: [ { address: nowhere, wieght: 2 } ] } ]",
    );
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got[0].starts_with("pools[0].colour: unknown field `colour`"),
        "{got:#?}"
    );
    assert!(
        got[1].starts_with("pools[0].members[0].wieght: unknown field `wieght`"),
        "{got:#?}"
    );
    assert!(
        got[2].starts_with("pools[0].members[0].address: not a socket address"),
        "{got:#?}"
    );
    let err = Document::parse_spec("frontends: []").unwrap_err();
    assert!(matches!(err, ParseError::Invalid(_)), "{err}");
    assert!(
        err.to_string()
            .contains("frontends: unknown field `frontends`"),
        "{err}"
    );
    // The strict readers refuse them as before.
    assert!(Document::from_yaml("pools: [ { name: p, colour: red } ]").is_err());
    assert!(Document::from_json(r#"{"pools": [{"name": "p", "colour": "red"}]}"#).is_err());
}

#[test]
fn problems_are_found_at_their_line() {
    let text = "load_balancers: []\npools:\n  - name: p\n    colour: red\n    members:\n      - { address: nowhere }\n";
    let Err(ParseError::Invalid(errors)) = Document::parse_spec(text) else {
        panic!("not invalid");
    };
    let lines: Vec<_> = errors
        .0
        .iter()
        .map(|e| (e.path.to_string(), keel_model::line_of(text, &e.path)))
        .collect();
    assert_eq!(
        lines,
        [
            ("pools[0].colour".to_owned(), Some(4)),
            ("pools[0].members[0].address".to_owned(), Some(6)),
        ]
    );
}

#[test]
fn tcp_check_rejects_http_fields() {
    let got = problems("pools: [ { name: p, health_check: { type: tcp, path: /x } } ]");
    assert_eq!(
        got,
        vec!["pools[0].health_check.path: only applies to type http"]
    );
}

#[test]
fn vip_and_bind_rules() {
    let got = problems(
        r#"
load_balancers:
  - { name: a, vip: 10.0.0.1/40, listeners: [] }
  - { name: b, vip: 127.0.0.1, listeners: [] }
  - { name: c, vip: 10.0.0.5/24, listeners: [ { port: 80, protocol: http, bind: 10.0.0.5, default_pool: p } ] }
pools: [ { name: p } ]
"#,
    );
    assert_eq!(
        got,
        vec![
            "load_balancers[0].vip: prefix length must be 0-32",
            "load_balancers[1].vip: must be a unicast, non-loopback address",
            "load_balancers[2].listeners[0].bind: cannot be set on a load balancer with a vip (listeners bind the vip)",
        ]
    );
}

#[test]
fn failed_apply_changes_nothing() {
    let mut spec = Document::parse_spec(GOOD).unwrap();
    let before = spec.clone();
    let err = spec
        .apply(&Command::RemovePool { name: "app".into() })
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("default_pool: no pool named \"app\""),
        "{err}"
    );
    assert_eq!(spec, before);
    let err = spec
        .apply(&Command::RemoveMember {
            pool: "app".into(),
            address: "10.9.9.9:1".parse().unwrap(),
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::NotFound { kind: "member", .. }));
    assert_eq!(spec, before);
}

#[test]
fn member_commands() {
    let mut spec = Document::parse_spec(GOOD).unwrap();
    let addr = "10.77.1.10:8080".parse().unwrap();
    spec.apply(&Command::SetMemberEnabled {
        pool: "app".into(),
        address: addr,
        enabled: false,
    })
    .unwrap();
    assert!(!spec.pools["app"].members[0].enabled);
    spec.apply(&Command::RemoveMember {
        pool: "app".into(),
        address: addr,
    })
    .unwrap();
    assert_eq!(spec.pools["app"].members.len(), 1);
}

#[test]
fn document_round_trip() {
    let spec = Document::parse_spec(GOOD).unwrap();
    let yaml = Document::from_spec(&spec).to_yaml();
    assert_eq!(Document::parse_spec(&yaml).unwrap(), spec, "{yaml}");
    let json = serde_json::to_string(&Command::ReplaceSpec(spec.clone())).unwrap();
    assert_eq!(
        serde_json::from_str::<Command>(&json).unwrap(),
        Command::ReplaceSpec(spec)
    );
}

#[test]
fn empty_document_is_empty_spec() {
    assert_eq!(Document::parse_spec("").unwrap(), Spec::default());
    assert_eq!(Document::parse_spec("{}").unwrap(), Spec::default());
}

#[test]
fn paths_keep_document_positions_when_a_sibling_is_unparseable() {
    let got = problems(
        r#"
load_balancers:
  - name: web
    listeners:
      - { port: 80, protocol: udp, default_pool: p }
      - { port: 81, protocol: http, default_pool: missing }
pools:
  - name: p
    members: [ { address: "nowhere" }, { address: "10.0.0.1:80", weight: 5000 } ]
"#,
    );
    assert!(
        got.contains(&"pools[0].members[1].weight: must be 0-1000".to_string()),
        "{got:#?}"
    );
    assert!(
        got.contains(
            &"load_balancers[0].listeners[1].default_pool: no pool named \"missing\"".to_string()
        ),
        "{got:#?}"
    );
}

#[test]
fn tls_listener_fields_are_checked() {
    let cert = "{ name: site, cert_pem: \"-----BEGIN CERTIFICATE-----\", key_pem: \"-----BEGIN PRIVATE KEY-----\" }";
    let got = problems(&format!(
        r#"
load_balancers:
  - name: web
    listeners:
      - {{ port: 443, protocol: https, default_pool: p }}
      - {{ port: 444, protocol: tls, default_pool: p, certificates: [site, nope, site] }}
      - {{ port: 80, protocol: http, default_pool: p, certificates: [site], tls_policy: modern }}
      - {{ port: 81, protocol: tcp, default_pool: p, http2: true }}
      - {{ port: 445, protocol: https, default_pool: p, certificates: [site], tls_policy: ancient }}
pools:
  - {{ name: p }}
certificates:
  - {cert}
"#
    ));
    let want = [
        "load_balancers[0].listeners[0].certificates: a https listener needs at least one certificate",
        "load_balancers[0].listeners[1].certificates[1]: no certificate named \"nope\"",
        "load_balancers[0].listeners[1].certificates[2]: \"site\" is listed twice",
        "load_balancers[0].listeners[2].certificates: only applies to https and tls listeners",
        "load_balancers[0].listeners[2].tls_policy: only applies to https and tls listeners",
        "load_balancers[0].listeners[3].http2: only applies to http and https listeners",
        "load_balancers[0].listeners[4].tls_policy: unknown TLS policy \"ancient\" (expected modern or compatible)",
    ];
    for w in want {
        assert!(got.contains(&w.to_string()), "missing {w}\n{got:#?}");
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");

    let ok = Document::parse_spec(&format!(
        "load_balancers:\n  - {{ name: w, listeners: [ {{ port: 443, protocol: https, default_pool: p, certificates: [site], tls_policy: modern, http2: false }} ] }}\npools:\n  - {{ name: p }}\ncertificates:\n  - {cert}\n"
    ))
    .unwrap();
    let l = &ok.load_balancers["w"].listeners[0];
    assert_eq!(l.protocol, Protocol::Https);
    assert_eq!(l.tls_policy, TlsPolicy::Modern);
    assert!(!l.http2);
    // The document written back reads the same.
    let again = Document::from_yaml(&Document::from_spec(&ok).to_yaml())
        .unwrap()
        .into_spec()
        .unwrap();
    assert_eq!(again, ok);
}

#[test]
fn rules_are_checked_field_by_field() {
    let got = problems(
        r##"
load_balancers:
  - name: web
    listeners:
      - port: 80
        protocol: http
        default_pool: p
        rules:
          - { priority: 10, path_prefix: /blog, pool: nope }
          - { priority: 10, path: blog, pool: p }
          - { priority: 0, pool: p }
          - { priority: 20, method: get, source: 10.0.0.0/40, pool: p, fixed_response: { status: 200 } }
          - { priority: 30, path: /x, redirect: { status: 200, scheme: ftp, port: 0, path: "#{nope}" } }
          - { priority: 40, path: /x, fixed_response: { status: 99, body: "" } }
          - { priority: 50, header: { "bad name": x }, forward: [ { pool: p, weight: 0 }, { pool: q, weight: 2000 } ] }
          - { priority: 60, path: /x, redirect: {} }
      - { port: 81, protocol: tcp, default_pool: p, rules: [ { priority: 1, path: /, pool: p } ] }
pools:
  - { name: p }
"##,
    );
    let want = [
        "load_balancers[0].listeners[0].rules[0].pool: no pool named \"nope\"",
        "load_balancers[0].listeners[0].rules[1].priority: 10 is also the priority of rules[0]",
        "load_balancers[0].listeners[0].rules[1].path: \"blog\" must start with /",
        "load_balancers[0].listeners[0].rules[2].priority: must be 1-50000",
        "load_balancers[0].listeners[0].rules[2]: needs at least one condition (host, path, path_prefix, path_glob, header, method, query or source)",
        "load_balancers[0].listeners[0].rules[3].source: \"10.0.0.0/40\": prefix length must be 0-32",
        "load_balancers[0].listeners[0].rules[3]: needs exactly one action: pool, forward, redirect or fixed_response",
        "load_balancers[0].listeners[0].rules[3].method: \"get\" is not an HTTP method in capitals",
        "load_balancers[0].listeners[0].rules[4].redirect.status: must be 301, 302, 303, 307 or 308",
        "load_balancers[0].listeners[0].rules[4].redirect.scheme: must be http or https",
        "load_balancers[0].listeners[0].rules[4].redirect.port: must be 1-65535",
        "load_balancers[0].listeners[0].rules[4].redirect.path: unknown variable #{nope} (expected #{protocol}, #{host}, #{port}, #{path} or #{query})",
        "load_balancers[0].listeners[0].rules[5].fixed_response.status: must be 200-599",
        "load_balancers[0].listeners[0].rules[6].header: \"bad name\" is not a header name",
        "load_balancers[0].listeners[0].rules[6].forward[1].weight: must be 0-1000",
        "load_balancers[0].listeners[0].rules[6].forward: no pool named \"q\"",
        "load_balancers[0].listeners[0].rules[7].redirect: changes nothing (set scheme, host, port, path or query)",
        "load_balancers[0].listeners[1].rules: only apply to http, https and tls_passthrough listeners",
    ];
    for w in want {
        assert!(got.contains(&w.to_string()), "missing {w}\n{got:#?}");
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
}

#[test]
fn rules_round_trip_through_the_document() {
    let spec = Document::parse_spec(
        r#"
load_balancers:
  - name: web
    listeners:
      - port: 80
        protocol: http
        default_pool: p
        rules:
          - { priority: 1, host: ["*.a.test", b.test], path_prefix: /x, path_glob: "/*.png", header: { X-Env: [dev, "st*"] }, method: GET, query: { q: "1" }, source: [10.0.0.0/8, "fd00::/8"], pool: p }
          - { priority: 2, path: /c, forward: [ { pool: p, weight: 3 }, { pool: q } ] }
          - { priority: 3, path: /r, redirect: { scheme: https, port: 8443 } }
          - { priority: 4, path: /f, fixed_response: { status: 404, body: gone } }
pools:
  - { name: p }
  - { name: q }
"#,
    )
    .unwrap();
    let rules = &spec.load_balancers["web"].listeners[0].rules;
    assert_eq!(rules.len(), 4);
    assert_eq!(
        rules[0].conditions.headers[0].name, "x-env",
        "header names are lower-cased"
    );
    let again = Document::from_yaml(&Document::from_spec(&spec).to_yaml())
        .unwrap()
        .into_spec()
        .unwrap();
    assert_eq!(again, spec);
}

#[test]
fn proxy_protocol_fields_are_checked() {
    let got = problems(
        r#"
load_balancers:
  - name: web
    listeners:
      - { port: 80, protocol: http, default_pool: p, accept_proxy_protocol: true, trusted_proxies: [10.0.0.0/8, nonsense] }
      - { port: 81, protocol: tcp, default_pool: p, accept_proxy_protocol: true }
pools:
  - { name: p, proxy_protocol: v3 }
"#,
    );
    assert_eq!(
        got,
        vec![
            "load_balancers[0].listeners[0].trusted_proxies[1]: \"nonsense\" is not an IP address or CIDR range".to_string(),
            "load_balancers[0].listeners[1].trusted_proxies: accept_proxy_protocol needs the peers allowed to send a PROXY header".to_string(),
            "pools[0].proxy_protocol: unknown PROXY protocol version \"v3\" (expected v1, v2 or none)".to_string(),
        ]
    );
}

#[test]
fn stickiness_and_hashing_fields_are_checked() {
    // Shape errors come before cross-field checks; compare as sets.
    let mut got = problems(
        r#"
load_balancers: []
pools:
  - { name: a, hash_on: "header:x-user" }
  - { name: b, algorithm: consistent_hash, hash_on: "header:bad header" }
  - { name: c, algorithm: consistent_hash, hash_on: "path" }
  - { name: d, stickiness: { type: lb_cookie, duration: 8d } }
  - { name: e, stickiness: { type: app_cookie } }
  - { name: f, stickiness: { type: lb_cookie, cookie: X } }
  - { name: g, stickiness: { type: app_cookie, cookie: keel-x } }
  - { name: h, stickiness: { type: forever } }
  - { name: i, stickiness: { type: app_cookie, cookie: "a;b", duration: 500ms } }
"#,
    );
    got.sort();
    assert_eq!(
        got,
        vec![
            "pools[0].hash_on: only applies to algorithm consistent_hash",
            "pools[1].hash_on: \"bad header\" is not a valid header name",
            "pools[2].hash_on: \"path\" is not source, header:NAME or cookie:NAME",
            "pools[3].stickiness.duration: must be 1s to 7 days",
            "pools[4].stickiness.cookie: is required: the application's cookie to follow",
            "pools[5].stickiness.cookie: only applies to type app_cookie (lb_cookie names its own)",
            "pools[6].stickiness.cookie: names starting with keel- are Keel's own",
            "pools[7].stickiness.type: unknown stickiness \"forever\" (expected lb_cookie or app_cookie)",
            "pools[8].stickiness.cookie: \"a;b\" is not a valid cookie name",
            "pools[8].stickiness.duration: must be 1s to 7 days",
        ]
    );

    let text = r#"
load_balancers: []
pools:
  - { name: a, algorithm: consistent_hash, hash_on: "cookie:cart", stickiness: { type: app_cookie, cookie: JSESSIONID, duration: 2h } }
  - { name: b, algorithm: consistent_hash, hash_on: source, stickiness: { type: lb_cookie } }
"#;
    let spec = Document::from_yaml(text).unwrap().into_spec().unwrap();
    assert_eq!(
        spec.pools["b"].stickiness,
        Some(keel_model::Stickiness::LbCookie {
            duration: std::time::Duration::from_secs(86400)
        })
    );
    let again = Document::from_yaml(&Document::from_spec(&spec).to_yaml())
        .unwrap()
        .into_spec()
        .unwrap();
    assert_eq!(again, spec);
}

#[test]
fn tls_passthrough_rules_match_only_names_and_sources() {
    let got = problems(
        r#"
load_balancers:
  - name: edge
    listeners:
      - port: 443
        protocol: tls_passthrough
        default_pool: p
        rules:
          - { priority: 1, host: "*.a.test", source: 10.0.0.0/8, pool: p }
          - { priority: 2, host: b.test, forward: [ { pool: p, weight: 1 } ] }
          - { priority: 3, path_prefix: /x, pool: p }
          - { priority: 4, host: c.test, fixed_response: { status: 200 } }
pools:
  - { name: p }
"#,
    );
    assert_eq!(
        got,
        vec![
            "load_balancers[0].listeners[0].rules[2]: a tls_passthrough listener matches only host (the SNI name) and source",
            "load_balancers[0].listeners[0].rules[3]: a tls_passthrough listener can only forward (pool or forward)",
        ]
    );
}

#[test]
fn member_tls_and_http_version_are_checked() {
    let mut got = problems(
        r#"
load_balancers: []
pools:
  - { name: a, tls: {} }
  - { name: b, tls: { verify: false, ca: "-----BEGIN CERTIFICATE-----" } }
  - { name: c, tls: { ca: "not pem" } }
  - { name: d, tls: { verify: false, server_name: "bad name!" } }
  - { name: e, http_version: http3 }
"#,
    );
    got.sort();
    assert_eq!(
        got,
        vec![
            "pools[0].tls.ca: is required to verify members (or set verify: false to skip verification)",
            "pools[1].tls.ca: is unused when verify is false",
            "pools[2].tls.ca: needs at least one PEM certificate (-----BEGIN CERTIFICATE-----)",
            "pools[3].tls.server_name: \"bad name!\" is not a DNS name or IP address",
            "pools[4].http_version: unknown HTTP version \"http3\" (expected http1 or http2)",
        ]
    );
}

#[test]
fn limits_are_checked() {
    let mut got = problems(
        r#"
load_balancers:
  - name: web
    listeners:
      - { port: 80, protocol: tcp, default_pool: p, request_timeout: 1s, max_connections: 0, keepalive_timeout: 5s }
      - { port: 81, protocol: http, default_pool: p, request_timeout: 0s, rate_limit: { per_second: 0, burst: -1 }, keepalive_timeout: 0s }
      - { port: 82, protocol: http, default_pool: p, request_timeout: soon, max_connections: 99999999999 }
pools:
  - { name: p }
"#,
    );
    got.sort();
    assert_eq!(
        got,
        vec![
            "load_balancers[0].listeners[0].keepalive_timeout: only applies to http and https listeners",
            "load_balancers[0].listeners[0].max_connections: must be 1-10000000",
            "load_balancers[0].listeners[0].request_timeout: only applies to http and https listeners",
            "load_balancers[0].listeners[1].keepalive_timeout: must be longer than zero",
            "load_balancers[0].listeners[1].rate_limit.burst: must be 1-10000000",
            "load_balancers[0].listeners[1].rate_limit.per_second: must be 1-10000000",
            "load_balancers[0].listeners[1].request_timeout: must be longer than zero",
            "load_balancers[0].listeners[2].max_connections: must be 1-10000000",
            "load_balancers[0].listeners[2].request_timeout: \"soon\" is not a duration (examples: 500ms, 2s, 1m)",
        ]
    );
    let spec = Document::from_yaml(
        "load_balancers:\n  - { name: w, listeners: [ { port: 80, protocol: http, default_pool: p, request_timeout: 30s, max_connections: 1000, rate_limit: { per_second: 50 }, keepalive_timeout: 75s } ] }\npools:\n  - { name: p }\n",
    )
    .unwrap()
    .into_spec()
    .unwrap();
    let l = &spec.load_balancers["w"].listeners[0];
    assert_eq!(
        l.rate_limit.unwrap().burst,
        50,
        "burst defaults to the rate"
    );
    assert_eq!(l.keepalive_timeout(), std::time::Duration::from_secs(75));
    let again = Document::from_yaml(&Document::from_spec(&spec).to_yaml())
        .unwrap()
        .into_spec()
        .unwrap();
    assert_eq!(again, spec);
}
