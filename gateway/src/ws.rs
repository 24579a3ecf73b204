//! The WebSocket live stream: one connection per client, fed by the [`crate::hub`].
//!
//! Each client has a filter and a bounded queue (`WS_BUFFER`). A client whose queue is full
//! loses the frame (counted), and once it has lost `WS_MAX_DROPPED` it is closed with 1008
//! (policy violation), so a slow one can neither slow the pipeline nor the other clients, and
//! memory is bounded per client.
//!
//! `?since_revision=R` first replays what etcd still holds from revision R (one range read
//! filtered on mod revision, which suits write-once telemetry keys), then continues live
//! without a gap or a repeat: the client subscribes before the read, and skips live frames at
//! or below the read's revision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::time::Instant;

use crate::api::{param, typed_param, Params};
use crate::error::{status_error, AppError};
use crate::hub::{Filter, Frame};
use crate::state::AppState;

/// Decrements the connection count when a client goes away, however it goes.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("ws_clients").decrement(1.0);
    }
}

/// Live stream of newly stored records as JSON text frames.
#[utoipa::path(get, path = "/api/v1/ws/telemetry",
    params(("gpu" = Option<String>, Query, description = "GPU UUID or index"), ("hostname" = Option<String>, Query), ("metric" = Option<String>, Query),
        ("since_revision" = Option<i64>, Query, description = "replay from this etcd revision first"),
        ("include" = Option<String>, Query, description = "`alerts`: also send alert changes, as frames with \"type\": \"alert\"", pattern = "^(alerts)?$")),
    responses((status = 101, description = "switching to WebSocket"), (status = 400, description = "not a WebSocket request, or a bad parameter", body = crate::error::ErrorBody), (status = 404, description = "the stream is disabled", body = crate::error::ErrorBody), (status = 410, description = "since_revision is older than the compacted history (REVISION_COMPACTED)", body = crate::error::ErrorBody), (status = 503, description = "too many clients", body = crate::error::ErrorBody)))]
pub async fn ws_handler(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    State(s): State<AppState>,
    p: Params,
) -> Result<Response, AppError> {
    if !s.cfg.ws_enabled {
        return Ok(status_error(
            StatusCode::NOT_FOUND,
            "WS_DISABLED",
            "the WebSocket stream is disabled (WS_ENABLED=false)",
        ));
    }
    let since = typed_param(&p, "since_revision")
        .map(|v| {
            v.parse::<i64>().ok().filter(|r| *r > 0).ok_or_else(|| {
                AppError::bad(
                    "INVALID_REVISION",
                    format!("since_revision {v:?} is not a positive integer"),
                )
            })
        })
        .transpose()?;
    if let Some(since) = since {
        if let Some(gone) = compacted_since(&s, since).await? {
            return Ok(gone);
        }
    }
    let ws = ws.map_err(|e| {
        AppError::bad(
            "UPGRADE_REQUIRED",
            format!("this endpoint speaks WebSocket only: {e}"),
        )
    })?;
    let filter = Filter {
        gpu: param(&p, "gpu").map(str::to_string),
        hostname: param(&p, "hostname").map(str::to_string),
        metric: param(&p, "metric").map(str::to_string),
        alerts: match param(&p, "include") {
            None => false,
            Some("alerts") => true,
            Some(other) => {
                return Err(AppError::bad(
                    "INVALID_PARAMETER",
                    format!("include={other:?}: the only thing to include is alerts"),
                ))
            }
        },
    };
    if s.ws_clients.fetch_add(1, Ordering::Relaxed) >= s.cfg.ws_max_connections {
        s.ws_clients.fetch_sub(1, Ordering::Relaxed);
        metrics::counter!("ws_refused").increment(1);
        return Err(AppError::Unavailable(format!(
            "too many WebSocket clients (WS_MAX_CONNECTIONS={})",
            s.cfg.ws_max_connections
        )));
    }
    metrics::gauge!("ws_clients").increment(1.0);
    let slot = Slot(s.ws_clients.clone());
    let tracked = s.ws_tasks.token();
    // A browser that carried its token as a subprotocol must be answered with one it offered.
    Ok(ws
        .protocols(["telemetry.v1"])
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            let _tracked = tracked;
            serve_client(socket, s, filter, since).await;
        }))
}

/// A resume from a revision that compaction has removed cannot be exact: samples expired
/// since then left no trace. Say so (410 `REVISION_COMPACTED`) rather than replay with a gap.
async fn compacted_since(s: &AppState, since: i64) -> Result<Option<Response>, AppError> {
    let ctx = |e| telemetry::etcd::EtcdError::new("check since_revision", e);
    let count = || etcd_client::GetOptions::new().with_count_only();
    let mut kv = s.client.kv_client();
    let now = kv
        .get(s.keys.data_root(), Some(count()))
        .await
        .map_err(ctx)?;
    // etcd answers OutOfRange both for a compacted and for a future revision: tell them
    // apart by the current one. A future revision has nothing to replay yet.
    if now.header().is_none_or(|h| since > h.revision()) {
        return Ok(None);
    }
    match kv
        .get(s.keys.data_root(), Some(count().with_revision(since)))
        .await
        .map_err(ctx)
    {
        Ok(_) => Ok(None),
        Err(e) if e.is_compacted() => Ok(Some(status_error(
            StatusCode::GONE,
            "REVISION_COMPACTED",
            format!(
                "since_revision {since} is older than etcd's compacted history (STORAGE_HISTORY); \
                 read what you missed with GET /api/v1/gpus/{{id}}/telemetry, then connect again \
                 without since_revision"
            ),
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn serve_client(socket: WebSocket, s: AppState, filter: Filter, since: Option<i64>) {
    // Subscribe before the replay read, so nothing stored meanwhile is missed.
    let (mut rx, dropped) = s.hub.subscribe(filter.clone(), s.cfg.ws_buffer);
    let (mut tx, mut incoming) = socket.split();
    let mut replayed_to = 0;
    if let Some(since) = since {
        let mut frames = Vec::new();
        match crate::live::replay(&s.client, &s.keys.data_root(), since, |rev, v| {
            frames.extend(Frame::of(rev, v))
        })
        .await
        {
            Ok(rev) => replayed_to = rev,
            Err(e) => {
                let reason = format!("cannot replay from revision {since}: {e}");
                let _ = tx
                    .send(Message::Close(Some(CloseFrame {
                        code: 1011,
                        reason: reason.into(),
                    })))
                    .await;
                return;
            }
        }
        for f in frames.iter().filter(|f| filter.accepts(f)) {
            if tx.send(Message::Text(f.json.clone())).await.is_err() {
                return;
            }
            metrics::counter!("ws_frames_sent").increment(1);
        }
    }
    let ping_every = s.cfg.ws_ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut last_pong = Instant::now();
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => {
                let close = Message::Close(Some(CloseFrame { code: 1001, reason: "gateway shutting down".into() }));
                let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(close)).await;
                break;
            }
            frame = rx.recv() => match frame {
                Some(f) if f.revision > replayed_to => {
                    let lost = dropped.load(Ordering::Relaxed);
                    if lost > s.cfg.ws_max_dropped {
                        close_slow(&mut tx, &format!("client too slow: {lost} frames dropped")).await;
                        break;
                    }
                    // A client that cannot take a frame within a ping interval is stuck, and
                    // one that loses too many frames meanwhile is too slow.
                    let sent = tokio::select! {
                        r = tokio::time::timeout(ping_every, tx.send(Message::Text(f.json.clone()))) => match r {
                            Ok(Ok(())) => Sent::Yes,
                            Ok(Err(_)) => Sent::Gone,
                            Err(_) => Sent::Stuck("client not reading".to_string()),
                        },
                        lost = losses_past(&dropped, s.cfg.ws_max_dropped) => {
                            Sent::Stuck(format!("client too slow: {lost} frames dropped (WS_MAX_DROPPED={})", s.cfg.ws_max_dropped))
                        }
                    };
                    match sent {
                        Sent::Yes => metrics::counter!("ws_frames_sent").increment(1),
                        Sent::Gone => break,
                        Sent::Stuck(reason) => {
                            close_slow(&mut tx, &reason).await;
                            break;
                        }
                    }
                }
                Some(_) => {}
                None => break,
            },
            msg = incoming.next() => match msg {
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if last_pong.elapsed() > ping_every * 2 {
                    let _ = tx.send(Message::Close(Some(CloseFrame { code: 1001, reason: "no pong".into() }))).await;
                    break;
                }
                if tx.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
}

enum Sent {
    Yes,
    Gone,
    Stuck(String),
}

/// Resolves once a client has lost more than `max` frames, with the count.
async fn losses_past(dropped: &AtomicU64, max: u64) -> u64 {
    loop {
        let lost = dropped.load(Ordering::Relaxed);
        if lost > max {
            return lost;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Closes a client that cannot keep up with 1008 (policy violation). The close frame itself
/// may not fit a full socket, so it gets a second at most.
async fn close_slow(tx: &mut futures::stream::SplitSink<WebSocket, Message>, reason: &str) {
    metrics::counter!("ws_closed_slow").increment(1);
    let close = Message::Close(Some(CloseFrame {
        code: 1008,
        reason: reason.to_string().into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(close)).await;
}
