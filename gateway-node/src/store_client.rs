//! A client of the store that knows several members and tries them in turn: it sticks to the member
//! that answered last, and moves on when one is unreachable or has no leader. Used by gateway nodes
//! and by gwadm.

use gw_proto as pb;
use gw_proto::cluster_client::ClusterClient;
use gw_proto::config_client::ConfigClient;
use prost::Message;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub struct Client {
    servers: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
    /// How long a call keeps retrying while no member can serve it (e.g. during a leader election).
    retry_for: Duration,
}

/// A failed call, with what the user needs to read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no store member reachable (tried {tried}): {last}")]
    Unreachable { tried: String, last: String },
    #[error("{}", status_message(.0))]
    Status(Status),
    #[error("{0}")]
    Usage(String),
}

/// Renders a status with its structured details, one line per problem.
fn status_message(s: &Status) -> String {
    use pb::error_detail::Detail;
    let detail = pb::ErrorDetail::decode(s.details())
        .ok()
        .and_then(|d| d.detail);
    match detail {
        Some(Detail::Invalid(inv)) => inv
            .documents
            .iter()
            .flat_map(|d| {
                let obj = match (d.kind.is_empty(), d.namespace.is_empty()) {
                    (true, _) => String::new(),
                    (false, true) => format!(" ({} {})", d.kind, d.name),
                    (false, false) => format!(" ({} {}/{})", d.kind, d.namespace, d.name),
                };
                d.errors.iter().map(move |e| {
                    let field = if e.path.is_empty() {
                        String::new()
                    } else {
                        format!("{}: ", e.path)
                    };
                    format!(
                        "invalid: {}: document {}{obj}: {field}{}",
                        d.source, d.index, e.message
                    )
                })
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Detail::Conflict(c)) => {
            let t = c.target.unwrap_or_default();
            let ns = if t.namespace.is_empty() {
                String::new()
            } else {
                format!("{}/", t.namespace)
            };
            if c.actual == 0 {
                format!(
                    "conflict: {} {ns}{}: expected resourceVersion {}, but the object does not exist",
                    t.kind, t.name, c.expected
                )
            } else {
                format!(
                    "conflict: {} {ns}{}: expected resourceVersion {}, found {} (it was changed since you read it)",
                    t.kind, t.name, c.expected, c.actual
                )
            }
        }
        Some(Detail::NotFound(n)) => {
            let t = n.target.unwrap_or_default();
            let ns = if t.namespace.is_empty() {
                String::new()
            } else {
                format!(" in namespace {:?}", t.namespace)
            };
            format!("not found: {} {:?}{ns}", t.kind, t.name)
        }
        _ => format!("{} ({:?})", s.message(), s.code()),
    }
}

impl Client {
    /// `servers`: `HOST:PORT` entries (a comma-separated list is split).
    pub fn new(servers: &[String], retry_for: Duration) -> Result<Client, ClientError> {
        let servers: Vec<String> = servers
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err(ClientError::Usage(
                "no store member given (--server HOST:PORT or GW_SERVER)".into(),
            ));
        }
        let channels = servers
            .iter()
            .map(|s| {
                Endpoint::from_shared(format!("http://{s}"))
                    .map(|e| {
                        e.connect_timeout(Duration::from_millis(1000))
                            .tcp_nodelay(true)
                            .connect_lazy()
                    })
                    .map_err(|e| ClientError::Usage(format!("bad server address {s:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Client {
            servers,
            channels,
            current: AtomicUsize::new(0),
            retry_for,
        })
    }

    pub fn config(channel: Channel) -> ConfigClient<Channel> {
        ConfigClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn cluster(channel: Channel) -> ClusterClient<Channel> {
        ClusterClient::new(channel)
    }

    /// The member tried first, then the others in order.
    fn order(&self) -> Vec<usize> {
        let start = self.current.load(Ordering::Relaxed);
        (0..self.servers.len())
            .map(|i| (start + i) % self.servers.len())
            .collect()
    }

    /// Calls `f` on the members in turn until one answers with anything but "unavailable"; while none
    /// can, keeps trying for `retry_for` (an election takes a second or two). A write that failed as
    /// unavailable did not reach the leader, or its outcome is unknown; applying the same documents again
    /// is idempotent, and a conditional write then reports a conflict instead of applying twice.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<(T, usize), ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut last = String::new();
        loop {
            for i in self.order() {
                match f(self.channels[i].clone()).await {
                    Ok(v) => {
                        self.current.store(i, Ordering::Relaxed);
                        return Ok((v, i));
                    }
                    Err(s)
                        if matches!(
                            s.code(),
                            Code::Unavailable
                                | Code::Unknown
                                | Code::DeadlineExceeded
                                | Code::Cancelled
                        ) =>
                    {
                        last = format!("{}: {}", self.servers[i], s.message());
                    }
                    Err(s) => return Err(ClientError::Status(s)),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Unreachable {
                    tried: self.servers.join(", "),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn server(&self, i: usize) -> &str {
        &self.servers[i]
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}
