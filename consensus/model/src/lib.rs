//! Keel's vocabulary: the load-balancer [`Spec`], the document users write
//! ([`Document`], YAML or JSON), validation that names every problem with its
//! field path, the [`Command`]s that change a spec, `apply` and `diff`, and
//! the replicated [`ClusterState`] with its [`ClusterCommand`]s.
//!
//! This crate is pure: no I/O, no async runtime, no network. Maps are
//! `BTreeMap`s so iteration, serialisation and diffs are deterministic.

mod access;
mod cluster;
mod command;
mod document;
mod error;
mod etag;
mod legacy;
mod manager;
mod rules;
mod spec;

pub use access::{check_user_name, Role, SESSION_PREFIX};
pub use cluster::{
    constant_time_eq, ApiToken, AwsKey, CaRotation, CaStage, ClusterCommand, ClusterIdentity,
    ClusterSecret, ClusterState, HistoryEntry, JoinToken, Refusal, RegistrationToken, Timing, User,
    CLUSTER_VERSION, GUARD_MARGIN_MS, HISTORY_LEN,
};
pub use command::{ApplyError, Command};
pub use document::{
    defaults, line_of, CertificateDoc, Document, DurationDoc, HealthCheckDoc, ListenerDoc,
    LoadBalancerDoc, MemberDoc, MemberTlsDoc, ParseError, PoolDoc, RuleDoc, Scalar, StickinessDoc,
};
pub use error::{FieldError, Path, Segment, ValidationErrors};
pub use etag::Object;
pub use manager::{
    check_manager, Conflict, FieldManagers, ManagedApply, Managers, ObjectRef, Owners, PARTS_APART,
};
pub use rules::{
    glob_match, Action, Cidr, Conditions, FixedResponse, HeaderMatch, PathMatch, QueryMatch,
    Redirect, Rule, WeightedPool, MAX_FIXED_BODY, MAX_RULES,
};
pub use spec::{
    Algorithm, Certificate, CheckKind, HashOn, HealthCheck, HttpVersion, Listener, LoadBalancer,
    Member, MemberTls, Pool, Protocol, ProxyProtocol, RateLimit, Spec, StatusRanges, Stickiness,
    TlsPolicy, Vip, MAX_LIMIT, MAX_STICKINESS,
};
