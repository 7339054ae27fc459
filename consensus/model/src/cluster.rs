//! The replicated state of a cluster: the load-balancer [`Spec`] plus the
//! cluster's own records (identity, CA, join tokens, credentials), and the
//! [`ClusterCommand`]s that change it.
//!
//! Everything here is decided deterministically from the command alone: time
//! enters as a field of the command (the proposer's clock), never by reading a
//! clock during apply, so every node reaches the same state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::access::Role;
use crate::command::{ApplyError, Command};
use crate::spec::Spec;

/// The cluster version this build reads and writes. Raised with every
/// [`ClusterCommand`] variant or state field an earlier Keel cannot read
/// (see [`ClusterCommand::needs`]): 1, everything before drains; 2,
/// [`ClusterCommand::DrainNode`] and [`ClusterCommand::SetVersion`]; 3,
/// [`ClusterCommand::Record`]; 4, [`ClusterCommand::Expect`] and
/// [`Refusal::Stale`]; 5, [`ClusterCommand::SetTiming`],
/// [`ClusterCommand::SetSecret`], [`ClusterState::timing`] and
/// [`ClusterState::secret`]; 6, roles: [`User::role`], [`ApiToken`]'s role
/// and scope, [`ClusterCommand::CreateUser`], [`ClusterCommand::SetRole`],
/// [`ClusterCommand::SetPassword`], [`ClusterCommand::DeleteUser`],
/// [`Refusal::Conflict`] and [`ClusterState::previous_secret`]; 7,
/// [`ClusterCommand::ForgetCaKey`] (the CA key leaves the replicated state
/// for the voters' disks); 8, managers ([`ClusterCommand::Managed`],
/// [`ClusterCommand::Own`]); 9, CA rotation ([`ClusterIdentity::ca_rotation`],
/// [`ClusterCommand::TrustCa`], [`ClusterCommand::SignWithCa`],
/// [`ClusterCommand::DropCa`]); 10, annotations that name their object
/// ([`ClusterCommand::Note`], [`ClusterState::annotated`]); 11, a listener
/// rule has a manager of its own ([`crate::PARTS_APART`]).
pub const CLUSTER_VERSION: u32 = 11;

/// The cluster's Raft timing, in milliseconds: every node runs it, because
/// the leader's lease is safe only if every follower refuses other
/// candidates at least as long as the leader assumes. Checked (by the
/// consensus crate's `Settings`) before it is proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub lease_ms: u64,
}

/// The cluster secret: random bytes (hex) the cluster's own keys derive
/// from, each under a label of its own (the gossip key first). Separate
/// from the CA key, so certificates and these keys have lives of their own.
/// Its `Debug` does not show it, and no history entry names it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterSecret(String);

impl ClusterSecret {
    /// A secret from its hex text.
    pub fn new(hex: String) -> Self {
        ClusterSecret(hex)
    }

    /// The secret's text, to derive keys from.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The 32-byte key `label` names (HKDF-SHA256): each use of the secret
    /// has a label of its own, so one key tells nothing of another.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut key = [0u8; 32];
        let kdf = hkdf::Hkdf::<sha2::Sha256>::new(None, self.0.as_bytes());
        // 32 bytes is well within what HKDF-SHA256 gives (255 × 32).
        let _ = kdf.expand(label.as_bytes(), &mut key);
        key
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// How long after the lease ends the VIP guard may act for a paused node
/// (its own timer's lateness), in milliseconds: the lease must end at
/// least this much before any other node can lead.
pub const GUARD_MARGIN_MS: u64 = 20;

impl Timing {
    /// Refuses timings that are unsafe or cannot work: the field and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let (min, max) = (self.election_min_ms, self.election_max_ms);
        if self.heartbeat_ms == 0 {
            return Err(("heartbeat", "must be more than 0".into()));
        }
        if min <= self.heartbeat_ms || max <= min {
            return Err((
                "election_timeout",
                format!(
                    "must be a range above the heartbeat ({}ms), lowest first; got {min}ms-{max}ms",
                    self.heartbeat_ms
                ),
            ));
        }
        // A quarter of the vote lease is kept as margin for the time between
        // the acknowledgement and the holder noticing its lease ran out; the
        // VIP guard may act GUARD_MARGIN_MS after it, before anyone leads.
        if self.lease_ms == 0
            || self.lease_ms > max * 3 / 4
            || self.lease_ms + GUARD_MARGIN_MS >= max
        {
            return Err((
                "lease",
                format!(
                    "must be more than 0, at most 3/4 of the longest election timeout ({max}ms) \
                     and more than {GUARD_MARGIN_MS}ms shorter; got {}ms",
                    self.lease_ms
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "heartbeat {}ms, election timeout {}ms-{}ms, lease {}ms",
            self.heartbeat_ms, self.election_min_ms, self.election_max_ms, self.lease_ms
        )
    }
}

/// Everything the cluster agrees on.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Set once, by the bootstrap node; `None` before the first entry.
    pub identity: Option<ClusterIdentity>,
    /// The load balancers, listeners and pools every node serves.
    pub spec: Spec,
    /// Join tokens by id. Only a hash of each secret is kept.
    pub join_tokens: BTreeMap<String, JoinToken>,
    /// Bearer tokens for the admin API, by id. Only a hash of each is kept.
    pub api_tokens: BTreeMap<String, ApiToken>,
    /// Admin users by name, with a slow password hash (PHC string).
    pub users: BTreeMap<String, User>,
    /// Tokens that let a backend add or remove itself in one pool, by id.
    /// Only a hash of each is kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registration_tokens: BTreeMap<String, RegistrationToken>,
    /// Access keys for the AWS-compatible API, by access key id. SigV4
    /// needs the secret itself, so it is kept sealed with a key derived
    /// from the cluster CA key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aws_keys: BTreeMap<String, AwsKey>,
    /// What compatibility APIs remember about objects beyond the spec
    /// (their own names, ids and tags), by a key each API makes; opaque
    /// here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, BTreeMap<String, String>>,
    /// The object each annotation describes (from version 10,
    /// [`ClusterCommand::Note`]): it goes when that object goes. Keys
    /// written before are matched to their object by
    /// [`crate::legacy::annotated_exists`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotated: BTreeMap<String, crate::ObjectRef>,
    /// The manager of each load balancer, pool, member, certificate and
    /// (from version 11) listener rule: the one that created or applied it,
    /// or before version 11 the last to change it (from version 8; objects
    /// from before have none until a manager changes or applies them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub managers: crate::Managers,
    /// The fields of those objects another manager changed since (from
    /// version 11, [`crate::PARTS_APART`]): theirs, while the object stays
    /// its manager's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub field_managers: crate::FieldManagers,
    /// The latest changes made by people or tools, oldest first, at most
    /// [`HISTORY_LEN`] (the dashboard's "who changed what").
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// Raft ids of nodes removed from the cluster: their certificates are
    /// refused on every cluster route, and they cannot be admitted again.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub retired_nodes: BTreeSet<u64>,
    /// Raft ids of drained nodes: they keep serving on their own addresses
    /// and keep voting, but hold no VIP and do not stand for election.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub drained_nodes: BTreeSet<u64>,
    /// The cluster version: the newest [`CLUSTER_VERSION`] every member
    /// runs, raised by the leader once they all do. A command that needs a
    /// higher one is refused before it reaches the log (an older node could
    /// not read it). 0 (absent, as earlier versions wrote it) reads as 1.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u32,
    /// The Raft timing every node runs (set at bootstrap, or by the leader
    /// once the cluster reaches version 5; changed with
    /// [`ClusterCommand::SetTiming`]). A node applies a change at its next
    /// start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// The cluster secret (set by the leader once the cluster reaches
    /// version 5): the gossip and sticky-cookie keys derive from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ClusterSecret>,
    /// The secret before the last rotation (from version 6): sticky
    /// cookies signed with its key are still honoured until they expire or
    /// the secret rotates again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<ClusterSecret>,
    /// The outcomes of the latest [`ClusterCommand::Once`] requests, oldest
    /// first, at most [`REQUESTS_KEPT`]: a request retried after it was
    /// committed (its answer lost on the way) gets its first outcome again
    /// instead of applying twice.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub requests: VecDeque<(String, Result<(), Refusal>)>,
}

/// How many request outcomes the state keeps: a retry comes within seconds
/// of its first try, and writes are few per second.
pub const REQUESTS_KEPT: usize = 1000;

/// How many [`HistoryEntry`]s the state keeps.
pub const HISTORY_LEN: usize = 200;

/// One change to the cluster and who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix seconds, by the proposer's clock.
    pub at: u64,
    /// The user (or API token's user) who asked for it.
    pub by: String,
    /// What changed, for people: one line per change.
    pub what: Vec<String>,
    /// An operation on the whole cluster rather than a change
    /// ([`ClusterCommand::Record`]'s kind: `backup`, `restore`, `recovery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// The cluster's id and certificate authority. The CA key is not
/// replicated (from cluster version 7): each voter keeps it in its data
/// directory and a learner never has it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// Random id chosen at bootstrap.
    pub cluster_id: String,
    /// The CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The CA private key, PEM: empty, except in a cluster from before
    /// version 7 until its leader moves the key to the voters' disks
    /// ([`ClusterCommand::ForgetCaKey`]), and in a backup. Never logged.
    #[serde(default)]
    pub ca_key_pem: String,
    /// Set by [`ClusterCommand::ForgetCaKey`]: entries from before it held
    /// the key, so each node compacts its log once it has applied it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ca_key_moved: bool,
    /// A CA rotation under way: while it lasts every node trusts two CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotation: Option<CaRotation>,
}

/// A rotation of the cluster CA, in the order it goes: every node first
/// trusts the new CA while the old one still signs ([`CaStage::Trusting`]),
/// then the new one signs and every certificate is made again while the
/// old one is still trusted ([`CaStage::Reissuing`]); dropping the old one
/// ends it ([`ClusterCommand::DropCa`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    pub stage: CaStage,
    /// The CA certificate trusted besides [`ClusterIdentity::ca_cert_pem`]:
    /// the new one while trusting, the old one while reissuing.
    pub other_pem: String,
}

/// See [`CaRotation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaStage {
    Trusting,
    Reissuing,
}

impl fmt::Display for CaStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaStage::Trusting => "trusting",
            CaStage::Reissuing => "reissuing",
        })
    }
}

impl ClusterIdentity {
    /// Every CA certificate a node trusts now: the one that signs, then
    /// the other one of a rotation.
    pub fn trusted(&self) -> Vec<&str> {
        std::iter::once(self.ca_cert_pem.as_str())
            .chain(self.ca_rotation.as_ref().map(|r| r.other_pem.as_str()))
            .collect()
    }

    /// The CA key a cluster from before its secret derived its keys from,
    /// while the replicated state still holds it.
    pub fn legacy_key(&self) -> Option<&str> {
        (!self.ca_key_pem.is_empty()).then_some(self.ca_key_pem.as_str())
    }
}

impl fmt::Debug for ClusterIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterIdentity")
            .field("cluster_id", &self.cluster_id)
            .field("ca_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterState")
            .field("identity", &self.identity)
            .field("load_balancers", &self.spec.load_balancers.len())
            .field("pools", &self.spec.pools.len())
            .field("join_tokens", &self.join_tokens.len())
            .field("api_tokens", &self.api_tokens.len())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A join token's record. The secret itself is only ever in the token string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Unix seconds when it was created.
    pub created_at: u64,
    /// Unix seconds after which it is refused.
    pub expires_at: u64,
    /// How many more joins it admits.
    pub uses_left: u32,
    /// Revoked tokens are kept (refused) until they expire, so `list` shows them.
    pub revoked: bool,
}

/// An admin API bearer token's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Who or what it is for, e.g. "ci" or "session:admin".
    pub name: String,
    /// The user it acts as.
    pub user: String,
    /// Hex SHA-256 of the token secret (the secret is long and random, so a
    /// fast hash is enough here; passwords get a slow one).
    pub secret_sha256: String,
    /// Unix seconds when it was created.
    pub created_at: u64,
    /// Unix seconds after which it is refused; `None` = until revoked.
    pub expires_at: Option<u64>,
    /// At most this role (the user's own, if less, wins); `None`: the
    /// user's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The load balancers it may change; with `pools`, empty both: any.
    /// A token with a scope changes only the objects it names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancers: Vec<String>,
    /// The pools it may change (see `load_balancers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
}

impl ApiToken {
    /// Does it carry a role or a scope, which a Keel before roles would
    /// not read?
    fn restricted(&self) -> bool {
        self.role.is_some() || !self.load_balancers.is_empty() || !self.pools.is_empty()
    }

    /// Is it limited to some load balancers and pools?
    pub fn scoped(&self) -> bool {
        !self.load_balancers.is_empty() || !self.pools.is_empty()
    }
}

/// A token a backend uses to register and deregister itself as a member
/// of one pool, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationToken {
    /// Who or what it is for, e.g. "web servers".
    pub name: String,
    /// The only pool it may change.
    pub pool: String,
    /// Hex SHA-256 of the token secret.
    pub secret_sha256: String,
    /// Unix seconds when it was created.
    pub created_at: u64,
    /// Unix seconds after which it is refused; `None` = until revoked.
    pub expires_at: Option<u64>,
    /// The address ranges (CIDR) registrations with it may come from;
    /// empty: anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// The address ranges (CIDR) the members it registers must be in.
    /// Empty: any address but loopback, link-local, unspecified and
    /// multicast ones (a range given here may name those). The cluster's own
    /// addresses are refused either way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

/// An access key for the AWS-compatible API (SigV4): a credential, like
/// the API tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsKey {
    /// Who or what it is for.
    pub name: String,
    /// The user its changes are recorded as.
    pub user: String,
    /// Hex of nonce ‖ AES-256-GCM ciphertext of the secret access key.
    pub secret_sealed: String,
    /// Unix seconds when it was created.
    pub created_at: u64,
}

impl fmt::Debug for AwsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKey")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("secret_sealed", &"<sealed>")
            .finish_non_exhaustive()
    }
}

/// A user of the admin API and dashboard.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Argon2 hash in PHC string form.
    pub password_hash: String,
    /// True while the password is one someone else chose (generated, or
    /// set by an admin): until the user changes it, the API does nothing
    /// else for them.
    pub must_change_password: bool,
    /// What the user may do.
    #[serde(default, skip_serializing_if = "crate::access::is_admin")]
    pub role: Role,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("must_change_password", &self.must_change_password)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// One change to the cluster state. Stored in the Raft log: add variants, do
/// not reshape old ones (a test decodes entries written by earlier versions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterCommand {
    /// First entry of a cluster: its identity. Refused once set.
    Init(ClusterIdentity),
    /// A change to the load-balancer spec.
    Spec(Command),
    /// Create or replace a user (bootstrap, recovery).
    SetUser { name: String, user: User },
    /// Create a user; refused if the name is taken.
    CreateUser { name: String, user: User },
    /// Change a user's role; refused if no admin would be left.
    SetRole { name: String, role: Role },
    /// Change a user's password, ending their login sessions but
    /// `keep_session` (the token id of the session that changed it).
    SetPassword {
        name: String,
        password_hash: String,
        must_change_password: bool,
        keep_session: Option<String>,
    },
    /// Delete a user with their API tokens and AWS access keys; refused
    /// for the last admin.
    DeleteUser { name: String },
    /// Create a join token.
    CreateJoinToken { id: String, token: JoinToken },
    /// Revoke a join token.
    RevokeJoinToken { id: String },
    /// Spend one use of a join token, if the secret matches and it is valid
    /// at `now` (unix seconds, the proposer's clock).
    ConsumeJoinToken {
        id: String,
        secret_sha256: String,
        now: u64,
    },
    /// Create an API token.
    CreateApiToken { id: String, token: ApiToken },
    /// Revoke (delete) an API token.
    RevokeApiToken { id: String },
    /// Does nothing; used to learn the commit index (a read barrier).
    Noop,
    /// Create a pool-scoped registration token (refused if the pool does
    /// not exist).
    CreateRegistrationToken {
        id: String,
        token: RegistrationToken,
    },
    /// Revoke (delete) a registration token.
    RevokeRegistrationToken { id: String },
    /// Create an access key for the AWS-compatible API.
    CreateAwsKey { id: String, key: AwsKey },
    /// Revoke (delete) an AWS access key.
    RevokeAwsKey { id: String },
    /// Replace the annotations under `object` (a key the writing API
    /// made); empty `values` removes them. For annotations about no object
    /// of the spec (an API's registry); written before version 10, the
    /// object they describe is read from the key ([`crate::legacy`]).
    Annotate {
        object: String,
        values: BTreeMap<String, String>,
    },
    /// Replace the annotations under `key`, which describe `about` and go
    /// when it goes; empty `values` removes them. Refused when `about` does
    /// not exist.
    Note {
        key: String,
        about: crate::ObjectRef,
        values: BTreeMap<String, String>,
    },
    /// Forget API tokens (login sessions) that expired before `now`.
    PurgeExpiredApiTokens { now: u64 },
    /// Node `id` is being removed: refuse its certificate from now on.
    RetireNode { id: u64 },
    /// Drain node `id` (`drained`), or bring it back.
    DrainNode { id: u64, drained: bool },
    /// Raise the cluster version (never lowers it). Proposed by the leader
    /// once every member reports running that version.
    SetVersion { version: u32 },
    /// Set the cluster's Raft timing (checked before it is proposed).
    SetTiming(Timing),
    /// Set the cluster secret.
    SetSecret(ClusterSecret),
    /// AWS access keys sealed again (after a rotation of the secret they
    /// are sealed under): id → the new `secret_sealed`; ids since removed
    /// are skipped.
    ResealAwsKeys(BTreeMap<String, String>),
    /// Take the CA key out of the replicated state (proposed by a leader
    /// that keeps it on disk, as every voter does from version 7).
    ForgetCaKey,
    /// Begin a CA rotation: trust `cert_pem` too (see [`CaRotation`]).
    /// Refused while one is under way.
    TrustCa { cert_pem: String },
    /// Sign with `cert_pem`, the CA a rotation trusts already, keeping the
    /// old one trusted while every certificate is made again.
    SignWithCa { cert_pem: String },
    /// Stop trusting `cert_pem`, a rotation's other CA: the old one (the
    /// rotation is done) or the new one before it signs (abandoned).
    DropCa { cert_pem: String },
    /// `command`, made by `manager`: every object it creates or changes
    /// becomes that manager's (see [`ClusterState::managers`]).
    Managed {
        manager: String,
        command: Box<ClusterCommand>,
    },
    /// Make `objects` `manager`'s; refused, naming them, where another
    /// manager has one, unless `force` (a declarative apply taking what it
    /// changes, and adopting matching objects that had no manager).
    Own {
        manager: String,
        objects: Vec<crate::ObjectRef>,
        force: bool,
    },
    /// Refused unless `object`'s entity tag is still `etag` (see
    /// [`crate::Object`]): the condition of an `If-Match` write, in an
    /// [`ClusterCommand::Atomic`] with the write.
    Expect { object: crate::Object, etag: String },
    /// Changes nothing; recorded in the history when authored: an
    /// operation on the cluster as a whole (`kind` `backup`, `restore`,
    /// `recovery`) and what it did.
    Record { kind: String, what: String },
    /// Several commands applied as one: all of them, or (one refused)
    /// none. A compatibility API's change to the spec and to the
    /// annotations that describe it is one of these.
    Atomic(Vec<ClusterCommand>),
    /// `command` under a request id the proposer chose: applied once
    /// however many times it is proposed (a retry after a lost answer).
    Once {
        request: String,
        command: Box<ClusterCommand>,
    },
    /// `command`, asked for by `by` at `at` (unix seconds, the proposer's
    /// clock); applied, it is also recorded in [`ClusterState::history`].
    Authored {
        by: String,
        at: u64,
        command: Box<ClusterCommand>,
    },
    /// A new cluster's state from a backup: everything but the identity
    /// (the first node sets that, from the same backup, with `Init`) and the
    /// request outcomes. Refused once the cluster has an identity: a backup
    /// seeds a new cluster, it never rolls a running one back.
    Restore(Box<ClusterState>),
}

impl ClusterCommand {
    /// The cluster version every node must run to read this command: it is
    /// refused while the cluster is below it. (`SetVersion` is proposed
    /// only once every member runs its version, so it needs nothing.)
    pub fn needs(&self) -> u32 {
        match self {
            ClusterCommand::DrainNode { .. } => 2,
            ClusterCommand::Record { .. } => 3,
            ClusterCommand::Expect { .. } => 4,
            ClusterCommand::SetTiming(_) | ClusterCommand::SetSecret(_) => 5,
            ClusterCommand::CreateUser { .. }
            | ClusterCommand::SetRole { .. }
            | ClusterCommand::SetPassword { .. }
            | ClusterCommand::DeleteUser { .. }
            | ClusterCommand::ResealAwsKeys(_) => 6,
            ClusterCommand::ForgetCaKey => 7,
            ClusterCommand::TrustCa { .. }
            | ClusterCommand::SignWithCa { .. }
            | ClusterCommand::DropCa { .. } => 9,
            ClusterCommand::Note { .. } => 10,
            ClusterCommand::Own { objects, .. } => {
                if objects
                    .iter()
                    .any(|o| matches!(o, crate::ObjectRef::Rule { .. }))
                {
                    crate::PARTS_APART
                } else {
                    8
                }
            }
            ClusterCommand::Managed { command, .. } => command.needs().max(8),
            ClusterCommand::SetUser { user, .. } if user.role != Role::Admin => 6,
            ClusterCommand::CreateApiToken { token, .. } if token.restricted() => 6,
            ClusterCommand::Authored { command, .. } | ClusterCommand::Once { command, .. } => {
                command.needs()
            }
            ClusterCommand::Atomic(commands) => commands
                .iter()
                .map(ClusterCommand::needs)
                .max()
                .unwrap_or(1),
            _ => 1,
        }
    }

    /// May a follower forward this to the leader? A node's own API wraps
    /// every write in [`ClusterCommand::Once`]: a change a user made,
    /// [`ClusterCommand::Authored`] (anything but what only a leader or a
    /// bootstrap writes: the identity, a restore, the version, a user set
    /// whole); a login's session, a logout, the purge of expired sessions,
    /// a join's use of its token, a read barrier, its config file's spec.
    /// Anything else from a follower's certificate is refused, so a leaked
    /// node certificate cannot write what no API of a follower would.
    pub fn forwardable(&self) -> Result<(), String> {
        let ClusterCommand::Once { command, .. } = self else {
            return Err("a forwarded write comes under a request id (Once)".into());
        };
        match &**command {
            ClusterCommand::Authored { command, .. } => command.authorable(),
            ClusterCommand::CreateApiToken { token, .. }
                if token.name.starts_with(crate::SESSION_PREFIX)
                    && token.expires_at.is_some()
                    && !token.restricted() =>
            {
                Ok(())
            }
            ClusterCommand::RevokeApiToken { .. }
            | ClusterCommand::PurgeExpiredApiTokens { .. }
            | ClusterCommand::ConsumeJoinToken { .. }
            | ClusterCommand::Noop
            | ClusterCommand::Spec(_) => Ok(()),
            other => Err(format!("a follower does not forward this: {other}")),
        }
    }

    /// Could a user's API request have made this (see
    /// [`ClusterCommand::forwardable`])?
    fn authorable(&self) -> Result<(), String> {
        match self {
            ClusterCommand::Init(_)
            | ClusterCommand::Restore(_)
            | ClusterCommand::ForgetCaKey
            | ClusterCommand::SetVersion { .. }
            | ClusterCommand::SetUser { .. }
            | ClusterCommand::Authored { .. }
            | ClusterCommand::Once { .. } => Err(format!(
                "no user's request makes {}",
                self.describe().join("; ")
            )),
            ClusterCommand::Atomic(commands) => {
                commands.iter().try_for_each(ClusterCommand::authorable)
            }
            ClusterCommand::Managed { command, .. } => command.authorable(),
            _ => Ok(()),
        }
    }

    /// The kind of a [`ClusterCommand::Record`] (under `Once`), if it is one.
    pub fn record_kind(&self) -> Option<&str> {
        match self {
            ClusterCommand::Record { kind, .. } => Some(kind),
            ClusterCommand::Once { command, .. } => command.record_kind(),
            _ => None,
        }
    }

    /// What the command changes, one line per change, for people.
    pub fn describe(&self) -> Vec<String> {
        match self {
            ClusterCommand::Spec(Command::Batch(changes)) => {
                changes.iter().map(ToString::to_string).collect()
            }
            ClusterCommand::Authored { command, .. }
            | ClusterCommand::Once { command, .. }
            | ClusterCommand::Managed { command, .. } => command.describe(),
            ClusterCommand::Atomic(commands) => {
                commands.iter().flat_map(ClusterCommand::describe).collect()
            }
            // A condition, not a change.
            ClusterCommand::Expect { .. } => Vec::new(),
            other => vec![other.to_string()],
        }
    }
}

impl fmt::Display for ClusterCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterCommand::Init(id) => write!(f, "init cluster {}", id.cluster_id),
            ClusterCommand::Spec(c) => c.fmt(f),
            ClusterCommand::SetUser { name, .. } => write!(f, "set password of user {name}"),
            ClusterCommand::CreateUser { name, user } => {
                write!(f, "create user {name} ({})", user.role)
            }
            ClusterCommand::SetRole { name, role } => write!(f, "make user {name} {role}"),
            ClusterCommand::SetPassword {
                name,
                must_change_password,
                ..
            } => {
                if *must_change_password {
                    write!(f, "reset the password of user {name}")
                } else {
                    write!(f, "change the password of user {name}")
                }
            }
            ClusterCommand::DeleteUser { name } => write!(f, "delete user {name}"),
            ClusterCommand::CreateJoinToken { id, token } => {
                write!(f, "create join token {id} ({} uses)", token.uses_left)
            }
            ClusterCommand::RevokeJoinToken { id } => write!(f, "revoke join token {id}"),
            ClusterCommand::ConsumeJoinToken { id, .. } => write!(f, "use join token {id}"),
            ClusterCommand::CreateApiToken { id, token } => {
                write!(f, "create api token {id} ({})", token.name)
            }
            ClusterCommand::RevokeApiToken { id } => write!(f, "revoke api token {id}"),
            ClusterCommand::Noop => f.write_str("no-op"),
            ClusterCommand::CreateRegistrationToken { id, token } => write!(
                f,
                "create registration token {id} ({}) for pool {}",
                token.name, token.pool
            ),
            ClusterCommand::RevokeRegistrationToken { id } => {
                write!(f, "revoke registration token {id}")
            }
            ClusterCommand::CreateAwsKey { id, key } => {
                write!(f, "create aws access key {id} ({})", key.name)
            }
            ClusterCommand::RevokeAwsKey { id } => write!(f, "revoke aws access key {id}"),
            ClusterCommand::Annotate { object, .. } => write!(f, "annotate {object}"),
            ClusterCommand::Note { key, about, .. } => write!(f, "annotate {key} ({about})"),
            ClusterCommand::PurgeExpiredApiTokens { .. } => f.write_str("purge expired api tokens"),
            ClusterCommand::RetireNode { id } => write!(f, "retire node {id:x}"),
            ClusterCommand::DrainNode { id, drained: true } => write!(f, "drain node {id:x}"),
            ClusterCommand::DrainNode { id, drained: false } => {
                write!(f, "undrain node {id:x}")
            }
            ClusterCommand::SetVersion { version } => {
                write!(f, "raise the cluster version to {version}")
            }
            ClusterCommand::SetTiming(timing) => write!(f, "set the cluster's timing: {timing}"),
            ClusterCommand::SetSecret(_) => f.write_str("set the cluster secret"),
            ClusterCommand::ResealAwsKeys(keys) => {
                write!(
                    f,
                    "seal {} AWS access key(s) under the new secret",
                    keys.len()
                )
            }
            ClusterCommand::ForgetCaKey => {
                f.write_str("keep the CA key on the voters only, out of the replicated state")
            }
            ClusterCommand::TrustCa { .. } => {
                f.write_str("rotate the cluster CA: trust a new CA besides the old one")
            }
            ClusterCommand::SignWithCa { .. } => f.write_str(
                "rotate the cluster CA: sign with the new CA, and make every certificate again",
            ),
            ClusterCommand::DropCa { .. } => f.write_str("rotate the cluster CA: drop a CA"),
            ClusterCommand::Record { kind, what } => write!(f, "{kind}: {what}"),
            ClusterCommand::Expect { object, etag } => write!(f, "expect {object} at {etag}"),
            ClusterCommand::Managed { manager, command } => write!(f, "{command} (as {manager})"),
            ClusterCommand::Own {
                manager, objects, ..
            } => write!(f, "{manager} manages {} objects", objects.len()),
            ClusterCommand::Atomic(commands) => {
                let all: Vec<String> = commands.iter().map(ToString::to_string).collect();
                f.write_str(&all.join("; "))
            }
            ClusterCommand::Authored { by, command, .. } => write!(f, "{command} (by {by})"),
            ClusterCommand::Restore(_) => f.write_str("restore the state from a backup"),
            ClusterCommand::Once { command, .. } => command.fmt(f),
        }
    }
}

/// Why a cluster command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "kind", content = "message")]
pub enum Refusal {
    /// The spec change was refused; the text names the fields.
    #[error("{0}")]
    Spec(String),
    /// The object the command names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The cluster already has an identity.
    #[error("the cluster is already initialised")]
    AlreadyInitialised,
    /// The join token is unknown, wrong, expired, revoked or used up. The
    /// text says which, for the operator; the joiner sees it too.
    #[error("join token refused: {0}")]
    Token(String),
    /// An `If-Match` write whose object changed since it was read.
    #[error("{0}")]
    Stale(String),
    /// The change would break a rule about the cluster's users (a name
    /// taken, no admin left).
    #[error("{0}")]
    Conflict(String),
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ClusterState {
    /// The cluster version (1 for a state written before versions).
    pub fn version(&self) -> u32 {
        self.version.max(1)
    }

    /// Who manages what, as an apply reads it.
    pub fn owners(&self) -> crate::Owners<'_> {
        crate::Owners {
            managers: &self.managers,
            fields: &self.field_managers,
            apart: self.version() >= crate::PARTS_APART,
        }
    }

    /// Records `manager` for what turning `before` into the spec changed
    /// (from version 11): an object it created, or one no manager had, is
    /// its; in another's object, the fields it changed are its (in its
    /// own, they are the object's again).
    fn record_parts(&mut self, before: &Spec, manager: &str) {
        for object in before.changed_objects(&self.spec, true) {
            let fields = before.changed_fields(&self.spec, &object, true);
            let owner = self.managers.get(&object).filter(|_| before.has(&object));
            match owner {
                Some(owner) if !fields.is_empty() => {
                    let theirs = owner != manager;
                    let entry = self.field_managers.entry(object).or_default();
                    for field in fields {
                        entry.retain(|path, _| !crate::manager::related(path, &field));
                        if theirs {
                            entry.insert(field, manager.to_owned());
                        }
                    }
                }
                _ => {
                    self.field_managers.remove(&object);
                    self.managers.insert(object, manager.to_owned());
                }
            }
        }
        self.field_managers.retain(|_, fields| !fields.is_empty());
    }

    fn identity_mut(&mut self) -> Result<&mut ClusterIdentity, Refusal> {
        self.identity
            .as_mut()
            .ok_or_else(|| Refusal::NotFound("the cluster has no identity yet".into()))
    }

    /// Join token `id`, if `secret_sha256` is its secret's hash and it has a
    /// use left at `now`: what `ConsumeJoinToken` checks, so a node can
    /// refuse a join against its applied state before proposing anything.
    pub fn join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: u64,
    ) -> Result<&JoinToken, Refusal> {
        let token = self
            .join_tokens
            .get(id)
            .ok_or_else(|| Refusal::Token("unknown token".into()))?;
        if !constant_time_eq(token.secret_sha256.as_bytes(), secret_sha256.as_bytes()) {
            return Err(Refusal::Token("wrong secret".into()));
        }
        if token.revoked {
            return Err(Refusal::Token("revoked".into()));
        }
        if now >= token.expires_at {
            return Err(Refusal::Token("expired".into()));
        }
        if token.uses_left == 0 {
            return Err(Refusal::Token("used up".into()));
        }
        Ok(token)
    }

    /// Apply one command: all of it, or nothing and the reason.
    pub fn apply(&mut self, command: &ClusterCommand) -> Result<(), Refusal> {
        match command {
            ClusterCommand::Init(identity) => {
                if self.identity.is_some() {
                    return Err(Refusal::AlreadyInitialised);
                }
                self.identity = Some(identity.clone());
            }
            ClusterCommand::Spec(change) => {
                self.spec.apply(change).map_err(|e| match e {
                    ApplyError::NotFound { .. } => Refusal::NotFound(e.to_string()),
                    other => Refusal::Spec(other.to_string()),
                })?;
                // Annotations go with their object, however it was removed.
                let spec = &self.spec;
                let about = &self.annotated;
                self.annotations.retain(|key, _| match about.get(key) {
                    Some(object) => spec.has(object),
                    None => crate::legacy::annotated_exists(spec, key),
                });
                self.annotated
                    .retain(|key, _| self.annotations.contains_key(key));
                self.managers.retain(|object, _| spec.has(object));
                self.field_managers.retain(|object, _| spec.has(object));
            }
            ClusterCommand::SetUser { name, user } => {
                self.users.insert(name.clone(), user.clone());
            }
            ClusterCommand::CreateUser { name, user } => {
                if self.users.contains_key(name) {
                    return Err(Refusal::Conflict(format!("user {name:?} already exists")));
                }
                self.users.insert(name.clone(), user.clone());
            }
            ClusterCommand::SetRole { name, role } => {
                self.user(name)?;
                self.keep_an_admin(name, Some(*role))?;
                if let Some(user) = self.users.get_mut(name) {
                    user.role = *role;
                }
            }
            ClusterCommand::SetPassword {
                name,
                password_hash,
                must_change_password,
                keep_session,
            } => {
                self.user(name)?;
                if let Some(user) = self.users.get_mut(name) {
                    user.password_hash.clone_from(password_hash);
                    user.must_change_password = *must_change_password;
                }
                self.end_sessions(name, keep_session.as_deref());
            }
            ClusterCommand::DeleteUser { name } => self.delete_user(name)?,
            ClusterCommand::CreateJoinToken { id, token } => {
                self.join_tokens.insert(id.clone(), token.clone());
            }
            ClusterCommand::RevokeJoinToken { id } => match self.join_tokens.get_mut(id) {
                Some(token) => token.revoked = true,
                None => {
                    return Err(Refusal::NotFound(format!(
                        "join token {id:?} does not exist"
                    )))
                }
            },
            ClusterCommand::ConsumeJoinToken {
                id,
                secret_sha256,
                now,
            } => {
                self.join_token(id, secret_sha256, *now)?;
                if let Some(token) = self.join_tokens.get_mut(id) {
                    token.uses_left -= 1;
                }
            }
            ClusterCommand::CreateApiToken { id, token } => {
                self.api_tokens.insert(id.clone(), token.clone());
            }
            ClusterCommand::RevokeApiToken { id } => {
                if self.api_tokens.remove(id).is_none() {
                    return Err(Refusal::NotFound(format!(
                        "api token {id:?} does not exist"
                    )));
                }
            }
            ClusterCommand::Noop => {}
            ClusterCommand::CreateRegistrationToken { id, token } => {
                if !self.spec.pools.contains_key(&token.pool) {
                    return Err(Refusal::NotFound(format!(
                        "pool {:?} does not exist",
                        token.pool
                    )));
                }
                self.registration_tokens.insert(id.clone(), token.clone());
            }
            ClusterCommand::Annotate { object, values } => {
                self.annotated.remove(object);
                if values.is_empty() {
                    self.annotations.remove(object);
                } else {
                    self.annotations.insert(object.clone(), values.clone());
                }
            }
            ClusterCommand::Note { key, about, values } => {
                if values.is_empty() {
                    self.annotations.remove(key);
                    self.annotated.remove(key);
                } else if self.spec.has(about) {
                    self.annotations.insert(key.clone(), values.clone());
                    self.annotated.insert(key.clone(), about.clone());
                } else {
                    return Err(Refusal::NotFound(format!(
                        "{about} does not exist: nothing to note about it"
                    )));
                }
            }
            ClusterCommand::CreateAwsKey { id, key } => {
                self.aws_keys.insert(id.clone(), key.clone());
            }
            ClusterCommand::RevokeAwsKey { id } => {
                if self.aws_keys.remove(id).is_none() {
                    return Err(Refusal::NotFound(format!(
                        "aws access key {id:?} does not exist"
                    )));
                }
            }
            ClusterCommand::RevokeRegistrationToken { id } => {
                if self.registration_tokens.remove(id).is_none() {
                    return Err(Refusal::NotFound(format!(
                        "registration token {id:?} does not exist"
                    )));
                }
            }
            ClusterCommand::PurgeExpiredApiTokens { now } => {
                self.api_tokens
                    .retain(|_, t| t.expires_at.is_none_or(|at| at > *now));
            }
            ClusterCommand::RetireNode { id } => {
                self.retired_nodes.insert(*id);
                self.drained_nodes.remove(id);
            }
            ClusterCommand::SetVersion { version } => {
                self.version = self.version().max(*version);
            }
            ClusterCommand::SetTiming(timing) => self.timing = Some(*timing),
            ClusterCommand::ResealAwsKeys(keys) => {
                for (id, sealed) in keys {
                    if let Some(key) = self.aws_keys.get_mut(id) {
                        key.secret_sealed.clone_from(sealed);
                    }
                }
            }
            ClusterCommand::SetSecret(secret) => {
                let previous = self.secret.replace(secret.clone());
                // A Keel before version 6 keeps no previous secret: every
                // node applies the same change whatever it runs.
                if self.version() >= 6 {
                    self.previous_secret = previous;
                }
            }
            ClusterCommand::ForgetCaKey => {
                if let Some(identity) = &mut self.identity {
                    identity.ca_key_pem.clear();
                    identity.ca_key_moved = true;
                }
            }
            ClusterCommand::TrustCa { cert_pem } => {
                let identity = self.identity_mut()?;
                if let Some(rotation) = &identity.ca_rotation {
                    return Err(Refusal::Conflict(format!(
                        "a CA rotation is under way ({}): finish or abandon it first",
                        rotation.stage
                    )));
                }
                if *cert_pem == identity.ca_cert_pem {
                    return Err(Refusal::Conflict("that CA is the one in use".into()));
                }
                identity.ca_rotation = Some(CaRotation {
                    stage: CaStage::Trusting,
                    other_pem: cert_pem.clone(),
                });
            }
            ClusterCommand::SignWithCa { cert_pem } => {
                let identity = self.identity_mut()?;
                match &identity.ca_rotation {
                    Some(r) if r.stage == CaStage::Trusting && r.other_pem == *cert_pem => {}
                    _ => {
                        return Err(Refusal::Conflict(
                            "only a CA every node trusts already (a rotation's new CA, before \
                             it signs) can sign"
                                .into(),
                        ))
                    }
                }
                let old = std::mem::replace(&mut identity.ca_cert_pem, cert_pem.clone());
                identity.ca_rotation = Some(CaRotation {
                    stage: CaStage::Reissuing,
                    other_pem: old,
                });
            }
            ClusterCommand::DropCa { cert_pem } => {
                let identity = self.identity_mut()?;
                if identity
                    .ca_rotation
                    .as_ref()
                    .is_none_or(|r| r.other_pem != *cert_pem)
                {
                    return Err(Refusal::Conflict(
                        "only a rotation's other CA can be dropped: the CA that signs stays".into(),
                    ));
                }
                identity.ca_rotation = None;
            }
            ClusterCommand::Record { .. } => {}
            ClusterCommand::Expect { object, etag } => {
                if self.spec.etag(object).as_deref() != Some(etag.as_str()) {
                    return Err(Refusal::Stale(format!(
                        "{object} was changed since it was read (by someone else, a \
                         registration or an API): read it again and make the change again"
                    )));
                }
            }
            ClusterCommand::Managed { manager, command } => {
                let before = self.spec.clone();
                self.apply(command)?;
                if self.version() >= crate::PARTS_APART {
                    self.record_parts(&before, manager);
                } else {
                    for object in before.changed_objects(&self.spec, false) {
                        self.managers.insert(object, manager.clone());
                    }
                }
            }
            ClusterCommand::Own {
                manager,
                objects,
                force,
            } => {
                let taken: Vec<String> = objects
                    .iter()
                    .filter_map(|o| {
                        let by = self.managers.get(o)?;
                        (by != manager).then(|| format!("{o} (managed by {by})"))
                    })
                    .collect();
                if !taken.is_empty() && !force {
                    return Err(Refusal::Conflict(format!(
                        "{manager} would change what other managers set: {}; \
                         leave them out, or force to take them over",
                        taken.join(", ")
                    )));
                }
                let rules_apart = self.version() >= crate::PARTS_APART;
                let owns = |o: &&crate::ObjectRef| {
                    o.ownable()
                        && self.spec.has(o)
                        && (rules_apart || !matches!(o, crate::ObjectRef::Rule { .. }))
                };
                for object in objects.iter().filter(owns) {
                    self.managers.insert(object.clone(), manager.clone());
                    if *force {
                        self.field_managers.remove(object);
                    }
                }
            }
            ClusterCommand::DrainNode { id, drained } => {
                if *drained {
                    self.drained_nodes.insert(*id);
                } else {
                    self.drained_nodes.remove(id);
                }
            }
            ClusterCommand::Atomic(commands) => {
                let mut next = self.clone();
                for command in commands {
                    next.apply(command)?;
                }
                *self = next;
            }
            ClusterCommand::Once { request, command } => {
                if let Some((_, first)) = self.requests.iter().find(|(r, _)| r == request) {
                    return first.clone();
                }
                let outcome = self.apply(command);
                if self.requests.len() >= REQUESTS_KEPT {
                    self.requests.pop_front();
                }
                self.requests.push_back((request.clone(), outcome.clone()));
                return outcome;
            }
            ClusterCommand::Authored { by, at, command } => {
                self.apply(command)?;
                if self.history.len() >= HISTORY_LEN {
                    self.history.remove(0);
                }
                self.history.push(HistoryEntry {
                    at: *at,
                    by: by.clone(),
                    what: command.describe(),
                    kind: command.record_kind().map(str::to_owned),
                });
            }
            ClusterCommand::Restore(backup) => {
                if self.identity.is_some() {
                    return Err(Refusal::AlreadyInitialised);
                }
                let requests = std::mem::take(&mut self.requests);
                // The backup's node ids are not this cluster's.
                *self = ClusterState {
                    identity: None,
                    requests,
                    drained_nodes: BTreeSet::new(),
                    ..(**backup).clone()
                };
            }
        }
        Ok(())
    }
}

/// Compare secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authored_commands_are_recorded_and_refusals_are_not() {
        let mut state = ClusterState::default();
        let authored = |command| ClusterCommand::Authored {
            by: "admin".into(),
            at: 7,
            command: Box::new(command),
        };
        state
            .apply(&authored(ClusterCommand::RevokeJoinToken {
                id: "x".into(),
            }))
            .unwrap_err();
        assert!(
            state.history.is_empty(),
            "a refused command leaves no trace"
        );
        for _ in 0..HISTORY_LEN + 5 {
            state.apply(&authored(ClusterCommand::Noop)).unwrap();
        }
        assert_eq!(state.history.len(), HISTORY_LEN);
        assert_eq!(
            state.history[0],
            HistoryEntry {
                at: 7,
                by: "admin".into(),
                what: vec!["no-op".into()],
                kind: None,
            }
        );
    }

    #[test]
    fn a_backup_seeds_a_new_state_and_never_rolls_a_running_one_back() {
        let identity = ClusterIdentity {
            cluster_id: "c".into(),
            ca_cert_pem: "cert".into(),
            ca_key_pem: "key".into(),
            ca_key_moved: false,
            ca_rotation: None,
        };
        let mut backup = ClusterState {
            identity: Some(identity.clone()),
            ..ClusterState::default()
        };
        backup.apply(&ClusterCommand::RetireNode { id: 9 }).unwrap();
        backup.requests.push_back(("old".into(), Ok(())));

        let mut fresh = ClusterState::default();
        let restore = ClusterCommand::Once {
            request: "r1".into(),
            command: Box::new(ClusterCommand::Restore(Box::new(backup.clone()))),
        };
        fresh.apply(&restore).unwrap();
        assert!(fresh.retired_nodes.contains(&9));
        // The identity comes with Init; the backup's request outcomes stay
        // behind, this cluster's own are kept.
        assert!(fresh.identity.is_none());
        let requests: Vec<&str> = fresh.requests.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(requests, ["r1"]);
        fresh.apply(&ClusterCommand::Init(identity)).unwrap();

        let mut running = fresh.clone();
        running
            .apply(&ClusterCommand::RetireNode { id: 10 })
            .unwrap();
        assert_eq!(
            running.apply(&ClusterCommand::Restore(Box::new(backup))),
            Err(Refusal::AlreadyInitialised)
        );
        assert!(running.retired_nodes.contains(&10));
    }

    #[test]
    fn commands_name_the_cluster_version_they_need_and_it_only_rises() {
        let drain = ClusterCommand::DrainNode {
            id: 1,
            drained: true,
        };
        assert_eq!(ClusterCommand::Noop.needs(), 1);
        assert_eq!(drain.needs(), 2);
        let record = ClusterCommand::Record {
            kind: "backup".into(),
            what: "taken".into(),
        };
        assert_eq!(record.needs(), 3);
        assert_eq!(record.describe(), ["backup: taken"]);
        let wrapped = ClusterCommand::Authored {
            by: "admin".into(),
            at: 1,
            command: Box::new(ClusterCommand::Once {
                request: "r".into(),
                command: Box::new(ClusterCommand::Atomic(vec![
                    ClusterCommand::Noop,
                    drain.clone(),
                ])),
            }),
        };
        assert_eq!(wrapped.needs(), 2);
        let timing = Timing {
            heartbeat_ms: 30,
            election_min_ms: 80,
            election_max_ms: 160,
            lease_ms: 110,
        };
        assert_eq!(timing.check(), Ok(()));
        assert_eq!(ClusterCommand::SetTiming(timing).needs(), 5);
        let secret = ClusterSecret::new("5ec2e7".into());
        let set = ClusterCommand::SetSecret(secret.clone());
        assert_eq!(set.needs(), 5);
        // The secret shows in neither the history nor a debug print.
        assert_eq!(set.to_string(), "set the cluster secret");
        assert!(!format!("{set:?}").contains("5ec2e7"));
        let mut state = ClusterState::default();
        state.apply(&set).unwrap();
        state.apply(&ClusterCommand::SetTiming(timing)).unwrap();
        assert_eq!(state.secret, Some(secret));
        assert_eq!(state.timing, Some(timing));
        let unsafe_lease = Timing {
            lease_ms: 150,
            ..timing
        };
        assert_eq!(unsafe_lease.check().unwrap_err().0, "lease");
        // Proposed only once every member runs it.
        assert_eq!(ClusterCommand::SetVersion { version: 2 }.needs(), 1);
        const { assert!(CLUSTER_VERSION >= 3) };

        let mut s = ClusterState::default();
        assert_eq!(s.version(), 1);
        let plain = serde_json::to_value(&s).unwrap();
        assert!(plain.get("version").is_none(), "{plain}");
        s.apply(&ClusterCommand::SetVersion { version: 2 }).unwrap();
        s.apply(&ClusterCommand::SetVersion { version: 1 }).unwrap();
        assert_eq!(s.version(), 2);
        let raised = serde_json::to_value(&s).unwrap();
        assert_eq!(raised["version"], 2);
    }

    #[test]
    fn a_write_expecting_a_tag_applies_only_while_it_matches() {
        let mut s = ClusterState::default();
        let pool = |weight: u32| {
            let spec = crate::Document::parse_spec(&format!(
                "load_balancers: []\npools:\n  - name: app\n    members: [ {{ address: \"10.0.0.1:80\", weight: {weight} }} ]\n"
            ))
            .unwrap();
            ClusterCommand::Spec(Command::ReplaceSpec(spec))
        };
        s.apply(&pool(1)).unwrap();
        let object = crate::Object::Pool("app".into());
        let read = s.spec.etag(&object).unwrap();
        let guarded = |etag: &str, weight| {
            ClusterCommand::Atomic(vec![
                ClusterCommand::Expect {
                    object: object.clone(),
                    etag: etag.to_owned(),
                },
                pool(weight),
            ])
        };
        assert_eq!(guarded(&read, 2).needs(), 4);
        assert_eq!(guarded(&read, 2).describe(), pool(2).describe());
        // Someone else changes the pool after it was read ...
        s.apply(&pool(3)).unwrap();
        let before = s.clone();
        // ... so the write made from the old read is refused, whole.
        match s.apply(&guarded(&read, 2)) {
            Err(Refusal::Stale(m)) => assert!(m.contains("pool \"app\" was changed"), "{m}"),
            other => panic!("expected Stale, got {other:?}"),
        }
        assert!(s == before);
        // Read again, it goes through.
        let fresh = s.spec.etag(&object).unwrap();
        s.apply(&guarded(&fresh, 2)).unwrap();
        assert_ne!(s.spec.etag(&object).unwrap(), fresh);
        // A tag for an object that is gone never matches.
        let gone = ClusterCommand::Expect {
            object: crate::Object::Pool("gone".into()),
            etag: fresh,
        };
        assert!(matches!(s.apply(&gone), Err(Refusal::Stale(_))));
    }

    #[test]
    fn drained_nodes_are_kept_until_undrained_retired_or_restored_elsewhere() {
        let mut s = ClusterState::default();
        let drain = |id, drained| ClusterCommand::DrainNode { id, drained };
        s.apply(&drain(7, true)).unwrap();
        s.apply(&drain(8, true)).unwrap();
        // Twice is the same as once; undraining one not drained is no error.
        s.apply(&drain(7, true)).unwrap();
        s.apply(&drain(9, false)).unwrap();
        assert_eq!(s.drained_nodes, BTreeSet::from([7, 8]));
        s.apply(&drain(7, false)).unwrap();
        assert_eq!(s.drained_nodes, BTreeSet::from([8]));
        assert_eq!(drain(8, true).to_string(), "drain node 8");
        // A backup's node ids mean nothing in the cluster it seeds.
        let mut fresh = ClusterState::default();
        fresh
            .apply(&ClusterCommand::Restore(Box::new(s.clone())))
            .unwrap();
        assert!(fresh.drained_nodes.is_empty());
        s.apply(&ClusterCommand::RetireNode { id: 8 }).unwrap();
        assert!(s.drained_nodes.is_empty());
        // No one drained: the snapshot reads as an earlier version wrote it.
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("drained"), "{json}");
    }

    #[test]
    fn an_atomic_command_applies_whole_or_not_at_all() {
        let mut state = ClusterState::default();
        let note = |object: &str| ClusterCommand::Annotate {
            object: object.into(),
            values: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        };
        let refused = ClusterCommand::Atomic(vec![
            note("a"),
            ClusterCommand::RevokeApiToken { id: "none".into() },
        ]);
        state.apply(&refused).unwrap_err();
        assert!(state.annotations.is_empty(), "{:?}", state.annotations);
        state
            .apply(&ClusterCommand::Atomic(vec![note("a"), note("b")]))
            .unwrap();
        assert_eq!(state.annotations.len(), 2);
        // Octavia's annotations go with the objects they describe.
        let spec = crate::Document::parse_spec(
            "load_balancers:\n  - { name: w, listeners: [ { port: 80, protocol: tcp, default_pool: p } ] }\npools:\n  - { name: p, members: [ { address: \"10.0.0.1:80\" } ] }\n",
        )
        .unwrap();
        for (key, exists) in [
            ("octavia/loadbalancer/w", true),
            ("octavia/loadbalancer/x", false),
            ("octavia/listener/w/80", true),
            ("octavia/listener/w/81", false),
            ("octavia/l7policy/w/80/id", true),
            ("octavia/pool/p", true),
            ("octavia/healthmonitor/p", false),
            ("octavia/member/p/10.0.0.1:80", true),
            ("octavia/member/p/10.0.0.2:80", false),
            ("rules/w/80", true),
            ("rules/w/81", false),
        ] {
            assert_eq!(crate::legacy::annotated_exists(&spec, key), exists, "{key}");
        }
    }

    #[test]
    fn a_request_proposed_twice_applies_once_with_one_outcome() {
        let mut s = ClusterState::default();
        let token = |name: &str| ClusterCommand::CreateApiToken {
            id: name.into(),
            token: ApiToken {
                name: name.into(),
                user: "admin".into(),
                secret_sha256: "aa".repeat(32),
                created_at: 0,
                expires_at: Some(100),
                role: None,
                load_balancers: Vec::new(),
                pools: Vec::new(),
            },
        };
        let once = |request: &str, command: ClusterCommand| ClusterCommand::Once {
            request: request.into(),
            command: Box::new(command),
        };
        // Retried after its answer was lost: applied once.
        assert_eq!(s.apply(&once("r1", token("a"))), Ok(()));
        s.apply(&ClusterCommand::RevokeApiToken { id: "a".into() })
            .unwrap();
        assert_eq!(s.apply(&once("r1", token("a"))), Ok(()));
        assert!(s.api_tokens.is_empty(), "the retry applied again");
        // A refusal is the answer to its retries too.
        let revoke = ClusterCommand::RevokeApiToken { id: "nope".into() };
        let first = s.apply(&once("r2", revoke.clone()));
        assert!(matches!(first, Err(Refusal::NotFound(_))));
        assert_eq!(s.apply(&once("r2", revoke)), first);
        // Another request id is another request; the memory is bounded.
        assert_eq!(s.apply(&once("r3", token("b"))), Ok(()));
        assert_eq!(s.api_tokens.len(), 1);
        for i in 0..REQUESTS_KEPT + 5 {
            s.apply(&once(&format!("x{i}"), ClusterCommand::Noop))
                .unwrap();
        }
        assert_eq!(s.requests.len(), REQUESTS_KEPT);
    }

    #[test]
    fn registration_tokens_need_their_pool_and_revoke_once() {
        let mut s = ClusterState::default();
        let token = RegistrationToken {
            name: "web".into(),
            pool: "app".into(),
            secret_sha256: "aa".repeat(32),
            created_at: 0,
            expires_at: None,
            sources: Vec::new(),
            members: Vec::new(),
        };
        let create = ClusterCommand::CreateRegistrationToken {
            id: "r1".into(),
            token,
        };
        assert!(matches!(s.apply(&create), Err(Refusal::NotFound(_))));
        assert!(s.registration_tokens.is_empty());
        s.spec.pools.insert(
            "app".into(),
            crate::Document::parse_spec("load_balancers: []\npools:\n  - { name: app }\n")
                .expect("valid")
                .pools["app"]
                .clone(),
        );
        s.apply(&create).expect("created");
        assert_eq!(s.registration_tokens["r1"].pool, "app");
        let revoke = ClusterCommand::RevokeRegistrationToken { id: "r1".into() };
        s.apply(&revoke).expect("revoked");
        assert!(matches!(s.apply(&revoke), Err(Refusal::NotFound(_))));
    }

    #[test]
    fn a_rule_has_a_manager_of_its_own_from_cluster_version_11() {
        let spec = |rules: &str| {
            crate::Document::parse_spec(&format!(
                "load_balancers:\n  - {{ name: web, listeners: [{{ port: 8080, protocol: http, \
                 default_pool: app, rules: [{rules}] }}] }}\npools:\n  - {{ name: app, members: [] }}\n"
            ))
            .expect("valid")
        };
        let managed = |manager: &str, spec: Spec| ClusterCommand::Managed {
            manager: manager.into(),
            command: Box::new(ClusterCommand::Spec(Command::ReplaceSpec(spec))),
        };
        let lb = crate::ObjectRef::LoadBalancer("web".into());
        let rule = crate::ObjectRef::Rule {
            load_balancer: "web".into(),
            port: 8080,
            priority: 20,
        };
        for (version, lb_manager, rule_manager) in
            [(10, "api", None), (crate::PARTS_APART, "file", Some("api"))]
        {
            let mut s = ClusterState::default();
            s.apply(&ClusterCommand::SetVersion { version })
                .expect("version");
            s.apply(&managed("file", spec(""))).expect("file");
            s.apply(&managed(
                "api",
                spec("{ priority: 20, path_prefix: /b, pool: app }"),
            ))
            .expect("rule");
            assert_eq!(s.managers.get(&lb).map(String::as_str), Some(lb_manager));
            assert_eq!(s.managers.get(&rule).map(String::as_str), rule_manager);
            // The rule's manager goes with the rule.
            s.apply(&managed("file", spec(""))).expect("file again");
            assert_eq!(s.managers.get(&rule), None);
        }
        // Owning a rule needs the version that knows rules apart, and
        // before it an Own naming one takes nothing.
        let own = ClusterCommand::Own {
            manager: "cli".into(),
            objects: vec![rule.clone()],
            force: true,
        };
        assert_eq!(own.needs(), crate::PARTS_APART);
        let mut s = ClusterState::default();
        s.apply(&ClusterCommand::SetVersion { version: 10 })
            .expect("version");
        s.apply(&managed(
            "api",
            spec("{ priority: 20, path_prefix: /b, pool: app }"),
        ))
        .expect("rule");
        s.apply(&own).expect("own");
        assert_eq!(s.managers.get(&rule), None);
    }

    #[test]
    fn a_field_another_manager_changes_is_theirs_from_cluster_version_11() {
        let spec = |extra: &str| {
            crate::Document::parse_spec(&format!(
                "load_balancers: []\npools:\n  - {{ name: app, members: [], {extra} }}\n"
            ))
            .expect("valid")
        };
        let managed = |manager: &str, spec: Spec| ClusterCommand::Managed {
            manager: manager.into(),
            command: Box::new(ClusterCommand::Spec(Command::ReplaceSpec(spec))),
        };
        let pool = crate::ObjectRef::Pool("app".into());
        let file = spec("drain_timeout: 5s");
        let mut s = ClusterState::default();
        s.apply(&ClusterCommand::SetVersion { version: 11 })
            .expect("version");
        s.apply(&managed("file", file.clone())).expect("file");
        // The dashboard changes the algorithm: that field is its, the
        // pool stays the file's.
        s.apply(&managed(
            "dashboard",
            spec("drain_timeout: 5s, algorithm: least_outstanding"),
        ))
        .expect("dashboard");
        assert_eq!(s.managers[&pool], "file");
        assert_eq!(
            s.field_managers[&pool],
            BTreeMap::from([("algorithm".to_owned(), "dashboard".to_owned())])
        );
        // The file's document as it was would undo that: a conflict with
        // the dashboard over that field alone.
        let out = s.spec.apply_as(&s.owners(), "file", &file, false);
        assert_eq!(
            out.conflicts,
            [crate::Conflict {
                object: pool.clone(),
                manager: "dashboard".into(),
                fields: vec!["algorithm".into()],
            }]
        );
        // One that keeps the dashboard's algorithm and changes its own
        // field is no conflict.
        let keeps = spec("drain_timeout: 9s, algorithm: least_outstanding");
        let out = s.spec.apply_as(&s.owners(), "file", &keeps, false);
        assert!(out.conflicts.is_empty(), "{:?}", out.conflicts);
        // The pool's own manager setting the field again takes it back.
        s.apply(&managed("file", file.clone())).expect("file again");
        assert!(s.field_managers.is_empty(), "{:?}", s.field_managers);
        // A forced Own takes the whole object, its fields with it.
        s.apply(&managed(
            "dashboard",
            spec("drain_timeout: 5s, algorithm: least_outstanding"),
        ))
        .expect("dashboard again");
        s.apply(&ClusterCommand::Own {
            manager: "file".into(),
            objects: vec![pool.clone()],
            force: true,
        })
        .expect("own");
        assert!(s.field_managers.is_empty());
        // Before version 11, the dashboard's change made the pool its.
        let mut old = ClusterState::default();
        old.apply(&ClusterCommand::SetVersion { version: 10 })
            .expect("version");
        old.apply(&managed("file", file)).expect("file");
        old.apply(&managed(
            "dashboard",
            spec("drain_timeout: 5s, algorithm: least_outstanding"),
        ))
        .expect("dashboard");
        assert_eq!(old.managers[&pool], "dashboard");
        assert!(old.field_managers.is_empty());
    }

    #[test]
    fn a_managed_change_records_its_manager_and_own_refuses_anothers_objects() {
        let mut s = ClusterState::default();
        let pool = crate::Document::parse_spec(
            "load_balancers: []\npools:\n  - { name: app, members: [{ address: 10.0.0.1:80 }] }\n",
        )
        .expect("valid")
        .pools["app"]
            .clone();
        let as_file = |command| ClusterCommand::Managed {
            manager: "file".into(),
            command: Box::new(ClusterCommand::Spec(command)),
        };
        s.apply(&as_file(Command::UpsertPool(Box::new(pool))))
            .expect("pool");
        let app = crate::ObjectRef::Pool("app".into());
        let member = |a: &str| crate::ObjectRef::Member {
            pool: "app".into(),
            address: a.parse().expect("address"),
        };
        assert_eq!(s.managers.get(&app).map(String::as_str), Some("file"));
        assert_eq!(
            s.managers.get(&member("10.0.0.1:80")).map(String::as_str),
            Some("file")
        );
        // A registration changes only its member; the pool stays the file's.
        let registered = ClusterCommand::Managed {
            manager: "registration".into(),
            command: Box::new(ClusterCommand::Spec(Command::UpsertMember {
                pool: "app".into(),
                member: crate::Member {
                    address: "10.0.0.2:80".parse().expect("address"),
                    weight: 1,
                    enabled: true,
                },
            })),
        };
        s.apply(&registered).expect("registered");
        assert_eq!(
            s.managers.get(&member("10.0.0.2:80")).map(String::as_str),
            Some("registration")
        );
        assert_eq!(s.managers.get(&app).map(String::as_str), Some("file"));
        assert_eq!(registered.needs(), 8);
        // Taking another's object is refused, naming it, unless forced.
        let own = |force| ClusterCommand::Own {
            manager: "cli".into(),
            objects: vec![member("10.0.0.2:80")],
            force,
        };
        let before = s.clone();
        match s.apply(&own(false)) {
            Err(Refusal::Conflict(m)) => {
                assert!(
                    m.contains("member 10.0.0.2:80 of pool \"app\" (managed by registration)"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s, before);
        s.apply(&own(true)).expect("forced");
        assert_eq!(
            s.managers.get(&member("10.0.0.2:80")).map(String::as_str),
            Some("cli")
        );
        // Records go with their objects, whoever removes them.
        s.apply(&ClusterCommand::Spec(Command::RemovePool {
            name: "app".into(),
        }))
        .expect("removed");
        assert!(s.managers.is_empty(), "{:?}", s.managers);
    }

    #[test]
    fn annotations_go_with_their_object() {
        let mut s = ClusterState::default();
        let pool = crate::Document::parse_spec("load_balancers: []\npools:\n  - { name: tg }\n")
            .expect("valid")
            .pools["tg"]
            .clone();
        s.apply(&ClusterCommand::Spec(Command::UpsertPool(Box::new(pool))))
            .expect("pool");
        for object in ["targetgroup/tg", "tags/targetgroup/tg", "other/thing"] {
            s.apply(&ClusterCommand::Annotate {
                object: object.into(),
                values: BTreeMap::from([("k".into(), "v".into())]),
            })
            .expect("annotated");
        }
        s.apply(&ClusterCommand::Spec(Command::RemovePool {
            name: "tg".into(),
        }))
        .expect("removed");
        assert_eq!(
            s.annotations.keys().collect::<Vec<_>>(),
            ["other/thing"],
            "the pool's annotations left with it"
        );
    }

    fn token(expires_at: u64, uses: u32) -> JoinToken {
        JoinToken {
            secret_sha256: "aa".repeat(32),
            created_at: 0,
            expires_at,
            uses_left: uses,
            revoked: false,
        }
    }

    fn consume(state: &mut ClusterState, secret: &str, now: u64) -> Result<(), Refusal> {
        state.apply(&ClusterCommand::ConsumeJoinToken {
            id: "t1".into(),
            secret_sha256: secret.into(),
            now,
        })
    }

    #[test]
    fn join_tokens_enforce_secret_expiry_uses_and_revocation() {
        let mut s = ClusterState::default();
        s.apply(&ClusterCommand::CreateJoinToken {
            id: "t1".into(),
            token: token(100, 2),
        })
        .unwrap();
        let good = "aa".repeat(32);
        assert_eq!(
            consume(&mut s, &"bb".repeat(32), 10),
            Err(Refusal::Token("wrong secret".into()))
        );
        assert_eq!(
            consume(&mut s, &good, 100),
            Err(Refusal::Token("expired".into()))
        );
        consume(&mut s, &good, 10).unwrap();
        consume(&mut s, &good, 11).unwrap();
        assert_eq!(
            consume(&mut s, &good, 12),
            Err(Refusal::Token("used up".into()))
        );
        s.join_tokens.get_mut("t1").unwrap().uses_left = 5;
        s.apply(&ClusterCommand::RevokeJoinToken { id: "t1".into() })
            .unwrap();
        assert_eq!(
            consume(&mut s, &good, 13),
            Err(Refusal::Token("revoked".into()))
        );
    }

    #[test]
    fn a_refused_spec_change_changes_nothing() {
        let mut s = ClusterState::default();
        let before = s.clone();
        let refused = s.apply(&ClusterCommand::Spec(Command::RemovePool {
            name: "nope".into(),
        }));
        assert!(matches!(refused, Err(Refusal::NotFound(_))));
        assert_eq!(s, before);
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let mut s = ClusterState::default();
        s.apply(&ClusterCommand::Init(ClusterIdentity {
            cluster_id: "c".into(),
            ca_cert_pem: "CERT".into(),
            ca_key_pem: "SECRET-KEY".into(),
            ca_key_moved: false,
            ca_rotation: None,
        }))
        .unwrap();
        s.users.insert(
            "admin".into(),
            User {
                password_hash: "$argon2id$SECRET".into(),
                must_change_password: false,
                role: Role::Admin,
            },
        );
        let text = format!("{s:?}");
        assert!(!text.contains("SECRET"), "{text}");
    }

    #[test]
    fn the_ca_key_leaves_the_replicated_state_at_version_7_and_only_by_the_leader() {
        let mut s = ClusterState::default();
        s.apply(&ClusterCommand::Init(ClusterIdentity {
            cluster_id: "c".into(),
            ca_cert_pem: "CERT".into(),
            ca_key_pem: "KEY".into(),
            ca_key_moved: false,
            ca_rotation: None,
        }))
        .unwrap();
        assert_eq!(
            s.identity.as_ref().and_then(|i| i.legacy_key()),
            Some("KEY")
        );
        assert_eq!(ClusterCommand::ForgetCaKey.needs(), 7);
        s.apply(&ClusterCommand::ForgetCaKey).unwrap();
        let identity = s.identity.clone().unwrap();
        assert_eq!(
            (identity.legacy_key(), identity.ca_cert_pem.as_str()),
            (None, "CERT")
        );
        assert!(
            identity.ca_key_moved,
            "nodes compact their logs once they apply it"
        );
        // A follower's certificate cannot make the cluster forget it.
        let forwarded = ClusterCommand::Once {
            request: "r".into(),
            command: Box::new(ClusterCommand::Authored {
                by: "admin".into(),
                at: 1,
                command: Box::new(ClusterCommand::ForgetCaKey),
            }),
        };
        assert!(forwarded.forwardable().is_err());
        // A state written without the field (a backup's identity) reads.
        let read: ClusterIdentity =
            serde_json::from_str(r#"{"cluster_id": "c", "ca_cert_pem": "CERT"}"#).unwrap();
        assert_eq!(read.legacy_key(), None);
    }
    #[test]
    fn a_ca_rotation_trusts_both_then_signs_with_the_new_then_drops_the_old() {
        let mut s = ClusterState::default();
        s.apply(&ClusterCommand::Init(ClusterIdentity {
            cluster_id: "c".into(),
            ca_cert_pem: "OLD".into(),
            ca_key_pem: String::new(),
            ca_key_moved: true,
            ca_rotation: None,
        }))
        .unwrap();
        let trusted = |s: &ClusterState| -> Vec<String> {
            let identity = s.identity.as_ref().unwrap();
            identity.trusted().into_iter().map(str::to_owned).collect()
        };
        let new = || "NEW".to_owned();
        assert_eq!(ClusterCommand::TrustCa { cert_pem: new() }.needs(), 9);
        // Nothing signs with a CA that not every node trusts yet.
        let before = s.clone();
        assert!(s
            .apply(&ClusterCommand::SignWithCa { cert_pem: new() })
            .is_err());
        assert!(s
            .apply(&ClusterCommand::DropCa {
                cert_pem: "OLD".into()
            })
            .is_err());
        assert_eq!(s, before);
        s.apply(&ClusterCommand::TrustCa { cert_pem: new() })
            .unwrap();
        assert_eq!(trusted(&s), ["OLD", "NEW"]);
        assert!(
            s.apply(&ClusterCommand::TrustCa {
                cert_pem: "THIRD".into()
            })
            .is_err(),
            "one rotation at a time"
        );
        s.apply(&ClusterCommand::SignWithCa { cert_pem: new() })
            .unwrap();
        assert_eq!(trusted(&s), ["NEW", "OLD"], "the new one signs");
        assert!(
            s.apply(&ClusterCommand::DropCa { cert_pem: new() })
                .is_err(),
            "the CA that signs stays"
        );
        s.apply(&ClusterCommand::DropCa {
            cert_pem: "OLD".into(),
        })
        .unwrap();
        assert_eq!(trusted(&s), ["NEW"]);
        // Abandoned before it signs: back to the one CA.
        s.apply(&ClusterCommand::TrustCa {
            cert_pem: "THIRD".into(),
        })
        .unwrap();
        s.apply(&ClusterCommand::DropCa {
            cert_pem: "THIRD".into(),
        })
        .unwrap();
        assert_eq!(trusted(&s), ["NEW"]);
        // A snapshot keeps a rotation under way.
        s.apply(&ClusterCommand::TrustCa {
            cert_pem: "FOURTH".into(),
        })
        .unwrap();
        let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
    #[test]
    fn a_note_goes_with_the_object_it_names_whatever_its_key() {
        let mut s = ClusterState::default();
        let doc = "load_balancers:\n  - name: w\n    listeners:\n      - { port: 80, protocol: http, default_pool: p }\n      - { port: 81, protocol: http, default_pool: p }\npools:\n  - name: p\n    health_check: { type: http, path: /h }\n    members: [ { address: \"10.0.0.1:80\" } ]\n";
        let spec = crate::Document::parse_spec(doc).unwrap();
        s.apply(&ClusterCommand::Spec(Command::ReplaceSpec(spec.clone())))
            .unwrap();
        let values = BTreeMap::from([("id".to_owned(), "1".to_owned())]);
        let note = |key: &str, about: &str| ClusterCommand::Note {
            key: key.into(),
            about: crate::ObjectRef::parse(about).unwrap(),
            values: values.clone(),
        };
        assert_eq!(note("k", "pool/p").needs(), 10);
        // Keys mean nothing to the model: any key, any object.
        for (key, about) in [
            ("x/1", "load-balancer/w"),
            ("x/2", "listener/w/81"),
            ("x/3", "health-check/p"),
            ("x/4", "member/p/10.0.0.1:80"),
            ("x/5", "pool/p"),
        ] {
            s.apply(&note(key, about)).unwrap();
        }
        let before = s.clone();
        assert!(
            s.apply(&note("x/6", "listener/w/82")).is_err(),
            "a note about nothing"
        );
        assert_eq!(s, before);
        // The listener on 81 and the health check go: so do their notes.
        let mut less = spec.clone();
        less.load_balancers.get_mut("w").unwrap().listeners.pop();
        less.pools.get_mut("p").unwrap().health_check = None;
        s.apply(&ClusterCommand::Spec(Command::ReplaceSpec(less)))
            .unwrap();
        assert_eq!(
            s.annotations.keys().collect::<Vec<_>>(),
            ["x/1", "x/4", "x/5"]
        );
        assert_eq!(s.annotated.len(), 3);
        // Written before version 10, the same keys are read as the API
        // that made them meant: `x/…` names nothing it knows, so it stays.
        s.apply(&ClusterCommand::Annotate {
            object: "x/1".into(),
            values: values.clone(),
        })
        .unwrap();
        s.apply(&ClusterCommand::Spec(Command::ReplaceSpec(
            crate::Spec::default(),
        )))
        .unwrap();
        assert_eq!(s.annotations.keys().collect::<Vec<_>>(), ["x/1"]);
        assert!(s.annotated.is_empty());
        // A snapshot keeps what each note names.
        s.apply(&ClusterCommand::Spec(Command::ReplaceSpec(spec)))
            .unwrap();
        s.apply(&note("x/7", "listener/w/80")).unwrap();
        let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    /// Entries from before version 10 replay by `legacy.rs` forever: its
    /// text may not change (a changed rule would make a node that replays
    /// them differ from one that applied them).
    #[test]
    fn the_legacy_annotation_rules_are_frozen() {
        use sha2::{Digest, Sha256};
        let text = include_str!("legacy.rs");
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let hash: String = Sha256::digest(code.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hash, "af62de5c2bd2b7a5e63d7aa7131380c69d916b4a3a662c1fdf80b751fed01ee0",
            "legacy.rs changed"
        );
    }
}
