//! Errors of the data plane, saying whose fault each is and whether a retry is safe.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

/// Who caused a proxy error: it decides the log level and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The member (backend) misbehaved or is unreachable.
    Upstream,
    /// The client misbehaved or went away.
    Downstream,
    /// Keel itself, or its configuration.
    Internal,
}

/// Whether the same request may be sent to another member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing reached the member: another member may take it.
    Yes,
    /// The member may have acted on the request.
    No,
}

/// Why a connection or request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The pool has no member that is enabled, weighted and healthy.
    #[error("no healthy member in pool {pool}")]
    NoMember { pool: String },
    /// The member refused or reset the TCP connection.
    #[error("connect to {member} failed: {source}")]
    Connect {
        member: SocketAddr,
        source: std::io::Error,
    },
    /// The member did not accept the TCP connection in time.
    #[error("connect to {member} timed out after {timeout:?}")]
    ConnectTimeout {
        member: SocketAddr,
        timeout: Duration,
    },
    /// The member did not send a response head in time.
    #[error("{member} sent no response within {timeout:?}")]
    ResponseTimeout {
        member: SocketAddr,
        timeout: Duration,
    },
    /// The member broke the HTTP exchange (closed, reset, malformed response).
    #[error("{member} failed the request: {source}{}", cause(source))]
    Upstream {
        member: SocketAddr,
        source: BoxError,
    },
    /// The client's request body is malformed (a bad chunk) or was cut off.
    #[error("request body failed: {source}{}", cause(source))]
    ClientBody { source: BoxError },
    /// The client did not send its whole request within `request_timeout`.
    #[error("request not received within {timeout:?}")]
    RequestTimeout { timeout: Duration },
    /// The client's request body paused longer than `client_timeout`.
    #[error("client sent nothing of its request body for {timeout:?}")]
    ClientIdle { timeout: Duration },
    /// The member was removed or disabled and its drain time ran out.
    #[error("{member} was drained")]
    Drained { member: SocketAddr },
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoMember { .. } | ProxyError::Drained { .. } => Side::Internal,
            ProxyError::ClientBody { .. }
            | ProxyError::RequestTimeout { .. }
            | ProxyError::ClientIdle { .. } => Side::Downstream,
            _ => Side::Upstream,
        }
    }

    pub fn retry(&self) -> Retry {
        match self {
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. } => Retry::Yes,
            _ => Retry::No,
        }
    }

    /// The status an HTTP client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoMember { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::RequestTimeout { .. } | ProxyError::ClientIdle { .. } => {
                StatusCode::REQUEST_TIMEOUT
            }
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Drained { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Why a new configuration was not applied. The previous plan keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A listener's address could not be bound.
    #[error("load balancer {lb}: cannot listen on {addr}: {source}")]
    Bind {
        lb: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A TLS listener's certificates cannot be served.
    #[error("load balancer {lb}: listener {addr}: {message}")]
    Tls {
        lb: String,
        addr: SocketAddr,
        message: String,
    },
    /// A pool's TLS towards its members cannot be set up.
    #[error("pool {pool}: tls: {message}")]
    MemberTls { pool: String, message: String },
    /// The data plane is shutting down.
    #[error("the data plane is shutting down")]
    ShuttingDown,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's errors name their kind only ("http2 error"); what lies under
/// (a stream reset and its reason, an I/O error) is added for the logs.
fn cause(e: &BoxError) -> String {
    e.source().map(|s| format!(" ({s})")).unwrap_or_default()
}
