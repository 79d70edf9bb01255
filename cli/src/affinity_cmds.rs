//! `gwadm affinity`: the replicated session affinity table — list, show, evict, rotate the token key.
//! A session has an entry from the first time its client comes back with its token; one never used
//! again has none (and nothing to evict: rotate the key twice to end every token at once).

use crate::error::{Error, Result};
use crate::output::{self, Format};
use clap::Subcommand;
use gw_client::{Client, clock};
use gw_model::affinity::token::session_of;
use gw_model::affinity::{KIND, SessionEntry};
use gw_model::kinds::GW_GROUP;
use gw_proto as pb;
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub enum AffinityCommand {
    /// List sessions (every namespace), optionally only those of one route or policy. IDLE counts
    /// from the activity recorded in the entry (at its creation, last failover or expiry): later
    /// activity is committed beside the entry, for expiry, and not shown.
    Ls {
        /// `KIND/NAMESPACE/NAME` (HTTPRoute/default/web), `NAMESPACE/NAME` of an HTTPRoute, or a
        /// BackendLBPolicy as `BackendLBPolicy/NAMESPACE/NAME`.
        #[arg(long)]
        route: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// One session, by its id or by a token as a client holds it (cookie or header value).
    Show {
        session: String,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Format,
    },
    /// Expire sessions now: their tokens stop binding and their clients get new sessions.
    Evict {
        /// Session ids (or tokens).
        sessions: Vec<String>,
        /// Every session of this route or policy (as for `ls`).
        #[arg(long)]
        route: Option<String>,
        /// Every session.
        #[arg(long)]
        all: bool,
    },
    /// Seal new tokens with a new key; tokens sealed with the current one stay valid until the next
    /// rotation.
    RotateKey,
}

pub async fn run(client: &Client, cmd: AffinityCommand) -> Result<()> {
    match cmd {
        AffinityCommand::Ls {
            route,
            output: Format::Table,
        } => {
            // Rows, not objects, are kept until the columns can be aligned.
            let now = clock::now_ms();
            let mut rows = vec![HEADER.map(String::from)];
            each_session(client, route.as_deref(), |o| {
                rows.extend(SessionEntry::from_object(&o).map(|e| row(&e, now)))
            })
            .await?;
            print!("{}", output::columns_of(&rows));
            Ok(())
        }
        AffinityCommand::Ls { route, output } => {
            // JSON (a bare array of entries) and YAML are printed page by page as they are read.
            let mut printer = output::ListPrinter::new(output, true, true);
            each_session(client, route.as_deref(), |o| printer.push(o)).await?;
            printer
                .finish()
                .map_err(|e| Error::Local(anyhow::anyhow!("writing the sessions: {e}")))?;
            Ok(())
        }
        AffinityCommand::Show { session, output } => {
            let id = session_id(&session);
            let found: Vec<Value> = list(client, None)
                .await?
                .into_iter()
                .filter(|o| o["metadata"]["name"] == id.as_str())
                .collect();
            match found.as_slice() {
                [] => Err(Error::Usage(format!(
                    "no session {id} (its token never came back, or it expired and was purged)"
                ))),
                [one] => {
                    print!("{}", output::render_one(one, output, true));
                    Ok(())
                }
                _ => Err(Error::Usage(format!(
                    "session id {id} is in several namespaces"
                ))),
            }
        }
        AffinityCommand::Evict {
            sessions,
            route,
            all,
        } => {
            let targets: Vec<pb::SessionRef> = if all || route.is_some() {
                if !sessions.is_empty() {
                    return Err(Error::Usage(
                        "give session ids, or --route, or --all".into(),
                    ));
                }
                list(client, route.as_deref())
                    .await?
                    .iter()
                    .filter_map(SessionEntry::from_object)
                    .filter(|e| !e.expired())
                    .map(|e| pb::SessionRef {
                        namespace: e.namespace,
                        id: e.id,
                    })
                    .collect()
            } else {
                let ids: Vec<String> = sessions.iter().map(|s| session_id(s)).collect();
                list(client, None)
                    .await?
                    .iter()
                    .filter_map(SessionEntry::from_object)
                    .filter(|e| ids.contains(&e.id))
                    .map(|e| pb::SessionRef {
                        namespace: e.namespace,
                        id: e.id,
                    })
                    .collect()
            };
            if targets.is_empty() {
                println!("no live session to evict");
                return Ok(());
            }
            let resp = client.evict(targets).await?;
            for r in &resp.results {
                if let Some(t) = &r.target {
                    let what = if r.action == "configured" {
                        "evicted"
                    } else {
                        "already expired"
                    };
                    println!("session {}/{} {what}", t.namespace, t.name);
                }
            }
            println!("revision {}", resp.revision);
            Ok(())
        }
        AffinityCommand::RotateKey => rotate_key(client).await,
    }
}

/// The session id of an id or of a token as a client holds it.
fn session_id(s: &str) -> String {
    session_of(s).unwrap_or_else(|| s.to_string())
}

/// The scope `--route` names.
fn scope_prefix(route: &str) -> String {
    match route.split('/').count() {
        2 => format!("HTTPRoute/{route}/"),
        _ => format!("{route}/"),
    }
}

async fn list(client: &Client, route: Option<&str>) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    each_session(client, route, |o| out.push(o)).await?;
    Ok(out)
}

/// Every session entry (of a route or policy), page by page.
async fn each_session(
    client: &Client,
    route: Option<&str>,
    mut each: impl FnMut(Value),
) -> Result<()> {
    let prefix = route.map(scope_prefix);
    let req = pb::ListRequest {
        group: GW_GROUP.into(),
        kind: KIND.into(),
        ..Default::default()
    };
    client
        .list_paged(req, |page| {
            for o in page
                .objects_json
                .iter()
                .filter_map(|s| serde_json::from_str::<Value>(s).ok())
            {
                let scope = format!("{}/", o["spec"]["scope"].as_str().unwrap_or(""));
                if prefix.as_deref().is_none_or(|p| scope.starts_with(p)) {
                    each(o);
                }
            }
        })
        .await?;
    Ok(())
}

const HEADER: [&str; 8] = [
    "NAMESPACE",
    "SESSION",
    "SCOPE",
    "BACKEND",
    "AGE",
    "IDLE",
    "FAILOVERS",
    "STATE",
];

/// A session's row in the table.
fn row(e: &SessionEntry, now: u64) -> [String; 8] {
    let secs = |ms: u64| format!("{}s", now.saturating_sub(ms) / 1000);
    [
        e.namespace.clone(),
        e.id.clone(),
        e.spec.scope.clone(),
        e.spec.backend.clone(),
        secs(e.status.created_ms),
        secs(e.status.last_active_ms),
        e.status.failovers.len().to_string(),
        if e.expired() { "expired" } else { "live" }.into(),
    ]
}

async fn rotate_key(client: &Client) -> Result<()> {
    let resp = client.rotate_key().await?;
    println!(
        "session key rotated at revision {} (tokens under the previous key stay valid until the next rotation)",
        resp.revision
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_session_and_routes_their_scope() {
        let keys = gw_model::affinity::token::Keys::new(b"k", None);
        let t = keys.issue(
            &gw_model::affinity::token::Token {
                session: "abc".into(),
                scope: "HTTPRoute/d/r/rules/0".into(),
                backend: "x".into(),
                issued_ms: 1,
            },
            [0; 12],
        );
        assert_eq!(session_id(&t), "abc");
        assert_eq!(session_id("plain-id"), "plain-id");
        assert_eq!(scope_prefix("d/r"), "HTTPRoute/d/r/");
        assert_eq!(scope_prefix("BackendLBPolicy/d/p"), "BackendLBPolicy/d/p/");
    }
}
