//! etcd's raw write ceiling: several clients sending Txns of 100 puts, keys and values the size
//! of a stored record, for a fixed time.

use std::time::Duration;

use etcd_client::{Client, Txn, TxnOp};
use tokio::time::Instant;

pub async fn measure(endpoints: &[String], clients: usize, for_how_long: Duration) -> f64 {
    let value = vec![b'v'; 300];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let endpoints = endpoints.to_vec();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&endpoints, None).await.expect("connect");
            let mut keys = 0u64;
            let mut i = 0u64;
            while start.elapsed() < for_how_long {
                let ops: Vec<TxnOp> = (0..100)
                    .map(|_| {
                        i += 1;
                        TxnOp::put(
                            format!("/bench/ceiling/{c:02}/{i:012}/{}", "k".repeat(60)),
                            value.clone(),
                            None,
                        )
                    })
                    .collect();
                client
                    .txn(Txn::new().and_then(ops))
                    .await
                    .expect("ceiling txn");
                keys += 100;
            }
            keys
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let _ = cleanup(endpoints).await;
    total as f64 / start.elapsed().as_secs_f64()
}

async fn cleanup(endpoints: &[String]) -> Result<(), etcd_client::Error> {
    let mut c = Client::connect(endpoints, None).await?;
    c.delete(
        "/bench/ceiling/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await?;
    Ok(())
}
