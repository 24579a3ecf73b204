//! `GET /api/v1/messages/{id}`: where a recent message is, with a timestamp per stage.
//!
//! One Txn reads every place a message can be: its final state (written by the collector that
//! finished it), the dead-letter queue, its failed-attempt counter, and its key in each queue
//! partition. A queued message has only been published; a finished one has every stage.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{SecondsFormat, TimeZone, Utc};
use etcd_client::{Txn, TxnOp, TxnOpResponse};
use prost::Message as _;
use serde::Serialize;
use telemetry::entries::DeadLetter;
use telemetry::etcd::{Context, EtcdError};
use telemetry::proto::QueueMessage;
use telemetry::trace::{MessageState, Outcome};

use super::{one, One};
use crate::error::AppError;
use crate::state::AppState;

/// Queue keys read per Txn, with the three other reads well under etcd's 128 operations.
const PARTITIONS_PER_TXN: u16 = 100;

/// A message's processing state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    /// The message id (a ULID).
    id: String,
    /// `queued`, `stored`, `invalid` (every record refused) or `dead_lettered`.
    state: &'static str,
    /// Its W3C trace id.
    trace_id: String,
    /// Further traces whose records it holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    linked_trace_ids: Vec<String>,
    /// Its queue partition.
    partition: u16,
    /// While queued: the collector holding its partition, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// While queued: commits that failed so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_attempts: Option<u32>,
    /// Each stage reached, oldest first.
    stages: Vec<Stage>,
}

/// One stage of a message's processing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stage {
    /// `published`, `claimed`, `validated`, `stored`, `invalid` or `dead_lettered`.
    stage: &'static str,
    /// When (RFC 3339, milliseconds).
    at: String,
    /// `claimed`: the collector.
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<String>,
    /// `claimed`: which attempt (1 unless earlier commits failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    /// `validated`: records that passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    valid: Option<usize>,
    /// `validated`: records refused (kept in the invalid area).
    #[serde(skip_serializing_if = "Option::is_none")]
    invalid: Option<usize>,
    /// `stored`: records newly stored (the other valid ones were already).
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<usize>,
    /// `dead_lettered`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Stage {
    fn at(stage: &'static str, unix_ms: i64) -> Self {
        Self {
            stage,
            at: rfc3339(unix_ms),
            by: None,
            attempt: None,
            valid: None,
            invalid: None,
            stored: None,
            reason: None,
        }
    }
}

fn rfc3339(unix_ms: i64) -> String {
    Utc.timestamp_millis_opt(unix_ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A recent message's processing state, with a timestamp per stage. States are kept for the
/// collectors' `MESSAGE_STATE_TTL` after a message is finished; a queued message is found in
/// the queue.
#[utoipa::path(get, path = "/api/v1/messages/{id}",
    params(("id" = String, Path, pattern = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$",
        description = "a message id (a ULID), as logged in the `message` span and `message_id` fields")),
    responses((status = 200, description = "the message's state", body = One<MessageView>),
        (status = 400, description = "not a message id", body = crate::error::ErrorBody),
        (status = 404, description = "no such message, or its state expired", body = crate::error::ErrorBody)))]
pub async fn message(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<One<MessageView>>, AppError> {
    if ulid::Ulid::from_string(&id).is_err() {
        return Err(AppError::bad(
            "INVALID_MESSAGE_ID",
            format!("{id:?} is not a message id (a 26-character ULID)"),
        ));
    }
    let found = super::etcd_read(find(&s, &id)).await?;
    let view = found.ok_or_else(|| {
        AppError::NotFound(format!(
            "no message {id}: unknown, or finished longer ago than MESSAGE_STATE_TTL"
        ))
    })?;
    let stages = view.stages.len();
    Ok(one(view, stages))
}

/// Where a message is, if anywhere.
async fn find(s: &AppState, id: &str) -> Result<Option<MessageView>, EtcdError> {
    let keys = &s.keys;
    let partitions = telemetry::queue::stored_partitions(&s.client, keys)
        .await?
        .unwrap_or(0);
    let queue_keys = |from: u16| {
        let to = from.saturating_add(PARTITIONS_PER_TXN).min(partitions);
        (from..to).map(|p| keys.queue_message(p, id))
    };
    let head: [String; 3] = [
        keys.message_state(id),
        keys.dead_letter(id),
        keys.attempts(id),
    ];
    let mut reads = gets(s, head.into_iter().chain(queue_keys(0))).await?;
    let mut queue = reads.split_off(3);
    let [state, letter, attempts] = <[_; 3]>::try_from(reads).unwrap_or_default();
    if let Some(state) = state.and_then(|v| serde_json::from_slice(&v).ok()) {
        return Ok(Some(finished(state)));
    }
    if let Some(letter) = letter.and_then(|v| serde_json::from_slice(&v).ok()) {
        return Ok(Some(dead_letter(id, letter)));
    }
    let failed = attempts.and_then(|v| String::from_utf8(v).ok()?.parse().ok());
    let mut from = 0u16;
    loop {
        if let Some((i, v)) = queue
            .iter()
            .enumerate()
            .find_map(|(i, v)| v.as_ref().map(|v| (i, v)))
        {
            return Ok(Some(queued(s, id, from + i as u16, v, failed).await?));
        }
        from = from.saturating_add(PARTITIONS_PER_TXN);
        if from >= partitions {
            return Ok(None);
        }
        queue = gets(s, queue_keys(from)).await?;
    }
}

/// The values of `keys`, read in one Txn.
async fn gets(
    s: &AppState,
    keys: impl Iterator<Item = String>,
) -> Result<Vec<Option<Vec<u8>>>, EtcdError> {
    let ops: Vec<TxnOp> = keys.map(|k| TxnOp::get(k, None)).collect();
    let resp = s
        .client
        .kv_client()
        .txn(Txn::new().and_then(ops))
        .await
        .ctx("find message")?;
    Ok(resp
        .op_responses()
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        })
        .collect())
}

fn finished(m: MessageState) -> MessageView {
    let mut stages = vec![Stage::at("published", m.published_unix_ms)];
    stages.push(Stage {
        by: Some(m.claimed_by.clone()),
        attempt: Some(m.attempt),
        ..Stage::at("claimed", m.claimed_unix_ms)
    });
    if m.validated_unix_ms > 0 {
        stages.push(Stage {
            valid: Some(m.valid),
            invalid: Some(m.invalid),
            ..Stage::at("validated", m.validated_unix_ms)
        });
    }
    let (state, last) = match m.outcome {
        Outcome::Stored => (
            "stored",
            Stage {
                stored: Some(m.stored),
                ..Stage::at("stored", m.done_unix_ms)
            },
        ),
        Outcome::Invalid => ("invalid", Stage::at("invalid", m.done_unix_ms)),
        Outcome::DeadLettered => (
            "dead_lettered",
            Stage {
                reason: m.reason.clone(),
                ..Stage::at("dead_lettered", m.done_unix_ms)
            },
        ),
    };
    stages.push(last);
    MessageView {
        id: m.id,
        state,
        trace_id: m.trace_id,
        linked_trace_ids: m.linked_trace_ids,
        partition: m.partition,
        owner: None,
        failed_attempts: None,
        stages,
    }
}

/// A dead letter whose state has expired (dead letters are kept until requeued).
fn dead_letter(id: &str, l: DeadLetter) -> MessageView {
    let at = chrono::DateTime::parse_from_rfc3339(&l.dead_at)
        .map(|t| t.timestamp_millis())
        .unwrap_or_default();
    let published = ulid::Ulid::from_string(id)
        .map(|u| u.timestamp_ms() as i64)
        .unwrap_or_default();
    MessageView {
        id: id.to_string(),
        state: "dead_lettered",
        trace_id: telemetry::trace::of_message_id(id),
        linked_trace_ids: Vec::new(),
        partition: l.partition,
        owner: None,
        failed_attempts: Some(l.attempts),
        stages: vec![
            Stage::at("published", published),
            Stage {
                reason: Some(l.reason),
                ..Stage::at("dead_lettered", at)
            },
        ],
    }
}

async fn queued(
    s: &AppState,
    id: &str,
    partition: u16,
    value: &[u8],
    failed: Option<u32>,
) -> Result<MessageView, EtcdError> {
    let msg = QueueMessage::decode(value).unwrap_or_default();
    let owner = s
        .client
        .kv_client()
        .get(s.keys.owner(partition), None)
        .await
        .ctx("read partition owner")?
        .kvs()
        .first()
        .and_then(|kv| kv.value_str().ok().map(str::to_string));
    let published = if msg.created_unix_ms > 0 {
        msg.created_unix_ms
    } else {
        ulid::Ulid::from_string(id).map_or(0, |u| u.timestamp_ms() as i64)
    };
    Ok(MessageView {
        id: id.to_string(),
        state: "queued",
        trace_id: if msg.trace_id.is_empty() {
            telemetry::trace::of_message_id(id)
        } else {
            msg.trace_id
        },
        linked_trace_ids: msg.linked_trace_ids,
        partition,
        owner,
        failed_attempts: Some(failed.unwrap_or(0)),
        stages: vec![Stage::at("published", published)],
    })
}
