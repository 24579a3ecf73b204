//! A generated fleet shaped like the real CSV (its ten metrics, value ranges and precision, on
//! random walks), written straight into etcd as folded chunks, the way the maintainer leaves a
//! store once every window is closed. Benches that query a large folded store start here
//! rather than stream and fold for an hour.

use etcd_client::{Client, Txn, TxnOp};
use rand::{Rng, SeedableRng};
use telemetry::entries::GpuInfo;
use telemetry::keys::Keys;
use telemetry::proto::TelemetryRecord;

/// The scrape interval: 10 s.
pub const STEP_NS: i64 = 10_000_000_000;

pub const METRICS: [(&str, f64, f64, f64); 10] = [
    // (name, low, high, step of the walk); integers where DCGM reports integers.
    ("DCGM_FI_DEV_GPU_TEMP", 30.0, 90.0, 1.0),
    ("DCGM_FI_DEV_POWER_USAGE", 60.0, 700.0, 7.5),
    ("DCGM_FI_DEV_GPU_UTIL", 0.0, 100.0, 5.0),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", 0.0, 100.0, 5.0),
    ("DCGM_FI_DEV_FB_USED", 0.0, 81_000.0, 512.0),
    ("DCGM_FI_DEV_FB_FREE", 0.0, 81_000.0, 512.0),
    ("DCGM_FI_DEV_SM_CLOCK", 345.0, 1980.0, 15.0),
    ("DCGM_FI_DEV_MEM_CLOCK", 2619.0, 2619.0, 0.0),
    ("DCGM_FI_DEV_ENC_UTIL", 0.0, 0.0, 0.0),
    ("DCGM_FI_DEV_DEC_UTIL", 0.0, 0.0, 0.0),
];

/// A GPU's identity in the generated fleet, with the labels dcgm-exporter's `labels_raw`
/// leaves once the streamer has moved its fields out (what `streamer generate` produces).
pub fn gpu(host: usize, index: usize) -> TelemetryRecord {
    let hostname = format!("bench-host-{host:03}");
    let labels = [
        ("DCGM_FI_DRIVER_VERSION", "535.129.03".to_string()),
        ("instance", format!("{hostname}:9400")),
        ("job", "dcgm_exporter".to_string()),
    ];
    TelemetryRecord {
        gpu_id: index.to_string(),
        uuid: format!("GPU-bench-{host:03}-{index}"),
        device: format!("nvidia{index}"),
        model: "NVIDIA H100 80GB HBM3".into(),
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        hostname,
        ..Default::default()
    }
}

/// One GPU's window of samples, in raw-key order (time, then content hash).
fn window(
    template: &TelemetryRecord,
    walk: &mut [f64; 10],
    rng: &mut rand::rngs::StdRng,
    start_ns: i64,
    steps: usize,
) -> Vec<TelemetryRecord> {
    let mut out = Vec::with_capacity(steps * METRICS.len());
    for s in 0..steps {
        let at = start_ns + s as i64 * STEP_NS;
        let mut instant = Vec::with_capacity(METRICS.len());
        for (i, (name, low, high, step)) in METRICS.iter().enumerate() {
            walk[i] =
                (walk[i] + rng.random_range(-1.0..=1.0_f64).round() * step).clamp(*low, *high);
            let mut r = TelemetryRecord {
                metric: name.to_string(),
                value: walk[i],
                timestamp_unix_nano: at,
                ..template.clone()
            };
            telemetry::record::assign_identity(&mut r);
            instant.push(r);
        }
        instant.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
        out.extend(instant);
    }
    out
}

/// Writes `windows` consecutive windows of `steps` 10 s scrapes per GPU from `start`, each
/// folded into one chunk keyed by its end as the maintainer writes it, with every window's fold
/// marker and the GPU registry; returns (samples, chunks).
pub async fn write_folded(
    client: &Client,
    keys: &Keys,
    hosts: usize,
    start: i64,
    (windows, steps): (i64, usize),
) -> (u64, u64) {
    let window_ns = steps as i64 * STEP_NS;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<TxnOp>>(8);
    let keys2 = keys.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut samples = 0u64;
        let mut chunks = 0u64;
        let mut ops = Vec::new();
        for host in 0..hosts {
            for index in 0..8 {
                let template = gpu(host, index);
                let mut rng = rand::rngs::StdRng::seed_from_u64((host * 8 + index) as u64);
                let mut walk: [f64; 10] =
                    std::array::from_fn(|i| (METRICS[i].1 + METRICS[i].2) / 2.0);
                let mut newest = None;
                for w in 0..windows {
                    let from = start + w * window_ns;
                    let records = window(&template, &mut walk, &mut rng, from, steps);
                    samples += records.len() as u64;
                    let bytes = telemetry::store::chunk::fold(&records).expect("fold");
                    ops.push(TxnOp::put(
                        keys2.chunk(&template.hostname, &template.gpu_id, from + window_ns),
                        bytes,
                        None,
                    ));
                    chunks += 1;
                    newest = records.last().cloned();
                    if ops.len() >= 100 && tx.blocking_send(std::mem::take(&mut ops)).is_err() {
                        return (samples, chunks);
                    }
                }
                let info = GpuInfo::of(&newest.expect("at least one window"));
                ops.push(TxnOp::put(
                    keys2.gpu(&template.hostname, &template.gpu_id),
                    serde_json::to_vec(&info).unwrap(),
                    None,
                ));
                if ops.len() >= 100 && tx.blocking_send(std::mem::take(&mut ops)).is_err() {
                    return (samples, chunks);
                }
            }
        }
        for w in 0..windows {
            if ops.len() >= 100 && tx.blocking_send(std::mem::take(&mut ops)).is_err() {
                return (samples, chunks);
            }
            ops.push(TxnOp::put(
                keys2.folded(start + (w + 1) * window_ns),
                Vec::new(),
                None,
            ));
        }
        let _ = tx.blocking_send(ops);
        (samples, chunks)
    });
    while let Some(ops) = rx.recv().await {
        client
            .kv_client()
            .txn(Txn::new().and_then(ops))
            .await
            .expect("write chunks");
    }
    producer.await.expect("generator")
}
