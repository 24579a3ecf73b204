//! Each etcd member on its own: its size, its alarm, its defragmentation.
//!
//! A client talks to whichever member its balancer picks, but sizes differ per member and a
//! defragmentation blocks the member it runs on, so the maintainer keeps one client per member
//! and defragments them one at a time.

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client};
use telemetry::config::EtcdArgs;
use telemetry::etcd::{Context, EtcdError};

/// One member's figures.
#[derive(Debug, Clone)]
pub(super) struct MemberStatus {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) db_size: i64,
    pub(super) in_use: i64,
    pub(super) reported_quota: i64,
    pub(super) revision: i64,
}

/// A client per member, kept between rounds.
pub(super) struct Members {
    args: EtcdArgs,
    clients: HashMap<u64, (String, Client)>,
    /// Connected to every endpoint when no member client is.
    admin: Option<Client>,
}

/// A defragmentation of a large database takes a while; it must still end.
const DEFRAG_TIMEOUT: Duration = Duration::from_secs(300);
/// A member that does not answer its status within this is skipped this round.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

impl Members {
    pub(super) fn new(args: EtcdArgs) -> Self {
        Self {
            args,
            clients: HashMap::new(),
            admin: None,
        }
    }

    /// A client logged in for the calls etcd reserves to its root role (compaction, alarm
    /// disarm): one of the member clients, or one connected now to every endpoint. Never the
    /// collector's own client, whose user may lack the root role.
    pub(super) async fn admin(&mut self) -> Result<Client, EtcdError> {
        if let Some((_, c)) = self.clients.values().next() {
            return Ok(c.clone());
        }
        if self.admin.is_none() {
            let c = telemetry::etcd::connect(&self.args)
                .await
                .map_err(|e| match e {
                    telemetry::etcd::ConnectError::Etcd(e) => e,
                    telemetry::etcd::ConnectError::Setting(s) => {
                        EtcdError::new("maintenance login", etcd_client::Error::InvalidArgs(s.0))
                    }
                })?;
            self.admin = Some(c);
        }
        Ok(self.admin.clone().expect("connected above"))
    }

    /// Every member that answers, with its figures.
    pub(super) async fn statuses(
        &mut self,
        client: &Client,
    ) -> Result<Vec<MemberStatus>, EtcdError> {
        let list = client.clone().member_list().await.ctx("member list")?;
        let mut out = Vec::new();
        for m in list.members() {
            let Some(url) = m.client_urls().first() else {
                continue;
            };
            if !self.clients.contains_key(&m.id()) {
                let mut one = self.args.clone();
                one.endpoints = vec![url.clone()];
                match telemetry::etcd::connect(&one).await {
                    Ok(c) => {
                        self.clients.insert(m.id(), (m.name().to_string(), c));
                    }
                    Err(e) => {
                        tracing::debug!(member = m.name(), error = %e, "member does not answer");
                        continue;
                    }
                }
            }
            let (name, c) = &self.clients[&m.id()];
            match tokio::time::timeout(STATUS_TIMEOUT, c.clone().status()).await {
                Ok(Ok(s)) => out.push(MemberStatus {
                    id: m.id(),
                    name: name.clone(),
                    db_size: s.db_size(),
                    in_use: s.raft_used_db_size(),
                    reported_quota: s.db_size_quota(),
                    revision: s.header().map_or(0, |h| h.revision()),
                }),
                _ => {
                    // Reconnect next round: the member may have moved or restarted.
                    self.clients.remove(&m.id());
                }
            }
        }
        let live: Vec<u64> = list.members().iter().map(|m| m.id()).collect();
        self.clients.retain(|id, _| live.contains(id));
        Ok(out)
    }

    /// Defragments one member, waiting for it to finish.
    pub(super) async fn defragment(&self, id: u64) -> Result<(), EtcdError> {
        let Some((_, c)) = self.clients.get(&id) else {
            return Ok(());
        };
        match tokio::time::timeout(DEFRAG_TIMEOUT, c.clone().defragment()).await {
            Ok(r) => r.map(|_| ()).ctx("defragment"),
            Err(_) => Err(EtcdError::new(
                "defragment",
                etcd_client::Error::InvalidArgs(format!("no answer within {DEFRAG_TIMEOUT:?}")),
            )),
        }
    }
}

/// The members whose NOSPACE alarm is raised.
pub(super) async fn alarmed(client: &Client) -> Result<Vec<u64>, EtcdError> {
    let resp = client
        .clone()
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .ctx("alarm list")?;
    Ok(resp
        .alarms()
        .iter()
        .filter(|a| a.alarm() == AlarmType::Nospace)
        .map(|a| a.member_id())
        .collect())
}

/// Disarms one member's NOSPACE alarm: etcd accepts writes again.
pub(super) async fn disarm(client: &Client, member: u64) -> Result<(), EtcdError> {
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    client
        .clone()
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
        .await
        .ctx("disarm alarm")?;
    Ok(())
}
