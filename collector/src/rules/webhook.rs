//! Delivers alert transitions to `ALERT_WEBHOOK_URL`, in the JSON that Alertmanager sends its
//! webhook receivers, so that anything that takes Alertmanager's webhooks takes ours.
//!
//! Each transition is an event in etcd's outbox, written in the Txn that moved the alert; it
//! is deleted once the webhook answered 2xx. A failure is counted (`alert_webhook_failures`)
//! and retried with backoff, oldest event first, so events arrive in order. An event that
//! cannot be delivered for [`super::flush::RESOLVED_KEPT`] expires with its lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, SortOrder, SortTarget};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use telemetry::backoff::Backoff;
use telemetry::rules::alert::State;
use telemetry::rules::Alert;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Events read per round.
const BATCH: i64 = 64;

pub(super) async fn run(shared: Arc<Shared>, url: String, leading: CancellationToken) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; alerts are not delivered");
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let root = shared.keys.alert_events_root();
    loop {
        let mut wait = Duration::from_millis(500);
        let read = shared
            .client
            .kv_client()
            .get(
                root.as_str(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_limit(BATCH)
                        .with_sort(SortTarget::Key, SortOrder::Ascend),
                ),
            )
            .await;
        match read {
            Ok(r) => {
                for kv in r.kvs() {
                    let Ok(alert) = serde_json::from_slice::<Alert>(kv.value()) else {
                        tracing::warn!(key = ?kv.key_str(), "an alert event that is not an alert; dropping it");
                        let _ = shared.client.kv_client().delete(kv.key(), None).await;
                        continue;
                    };
                    match post(&http, &url, &alert).await {
                        Ok(()) => {
                            metrics::counter!("alert_webhook_sent").increment(1);
                            backoff.reset();
                            if let Err(e) = shared.client.kv_client().delete(kv.key(), None).await {
                                tracing::warn!(error = %e, "delivered an alert event but cannot delete it; it may be sent again");
                            }
                        }
                        Err(e) => {
                            metrics::counter!("alert_webhook_failures").increment(1);
                            wait = backoff.next_delay();
                            tracing::warn!(error = %e, rule = alert.rule, retry_in = ?wait, "alert webhook failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read alert events yet"),
        }
        if telemetry::shutdown::or_cancel(&leading, tokio::time::sleep(wait))
            .await
            .is_none()
        {
            return;
        }
    }
}

async fn post(http: &reqwest::Client, url: &str, alert: &Alert) -> Result<(), String> {
    let resp = http
        .post(url)
        .json(&payload(alert))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", resp.status()))
    }
}

/// Alertmanager's webhook body (version 4) for one alert's transition.
pub(crate) fn payload(a: &Alert) -> Value {
    let status = if a.state == State::Resolved {
        "resolved"
    } else {
        "firing"
    };
    let labels: BTreeMap<&str, &str> = [
        ("alertname", a.rule.as_str()),
        ("metric", a.metric.as_str()),
        ("hostname", a.hostname.as_str()),
        ("gpu", a.gpu_id.as_str()),
        ("uuid", a.uuid.as_str()),
    ]
    .into_iter()
    .collect();
    let fingerprint = {
        let mut h = Sha256::new();
        for (k, v) in &labels {
            h.update(k.as_bytes());
            h.update([0xff]);
            h.update(v.as_bytes());
            h.update([0xff]);
        }
        hex::encode(&h.finalize()[..8])
    };
    let summary = format!(
        "{} {} {} on {} GPU {} (value {})",
        a.metric, a.op, a.threshold, a.hostname, a.gpu_id, a.value
    );
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", a.rule),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "gpu-telemetry",
        "groupLabels": {"alertname": a.rule},
        "commonLabels": labels,
        "commonAnnotations": {"summary": summary},
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": {"summary": summary, "for": a.hold},
            "startsAt": a.fired_at.as_deref().unwrap_or(&a.started_at),
            "endsAt": a.resolved_at.as_deref().unwrap_or("0001-01-01T00:00:00Z"),
            "generatorURL": "",
            "fingerprint": fingerprint,
        }],
    })
}
