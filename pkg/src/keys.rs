//! The key layout in etcd. Every key the pipeline writes is built here, under the configured
//! prefix, so the layout can be read in one place (docs/design.md has the table).
//!
//! Timestamps in keys are fixed-width RFC 3339 with nanoseconds, so that etcd's byte order is
//! time order and a time range is one key-range scan.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Where stored telemetry lives, under the prefix.
const DATA: &str = "/telemetry/data/";

/// Key builder bound to one pipeline prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The layout under `prefix` (`ETCD_PREFIX`; empty for none).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Everything under the prefix (an access grant's widest range).
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Every top-level area under the prefix, such as `queue` or `telemetry`.
    pub fn area(&self, name: &str) -> String {
        format!("{}/{name}/", self.prefix)
    }

    /// API tokens, stored by the SHA-256 of their secret (docs/security.md).
    pub fn tokens_root(&self) -> String {
        format!("{}/auth/tokens/", self.prefix)
    }

    /// One API token's record.
    pub fn token(&self, id: &str) -> String {
        format!("{}{id}", self.tokens_root())
    }

    /// The audit log: who changed what, kept for `AUDIT_RETENTION`.
    pub fn audit_root(&self) -> String {
        format!("{}/audit/", self.prefix)
    }

    /// One audit entry (ULIDs sort by time).
    pub fn audit(&self, id: &str) -> String {
        format!("{}{id}", self.audit_root())
    }

    /// All queued messages, every partition.
    pub fn queue_root(&self) -> String {
        format!("{}/queue/msg/", self.prefix)
    }
    /// One partition's queued messages.
    pub fn queue_partition(&self, partition: u16) -> String {
        format!("{}/queue/msg/{partition:04}/", self.prefix)
    }
    /// One queued message.
    pub fn queue_message(&self, partition: u16, id: &str) -> String {
        format!("{}{id}", self.queue_partition(partition))
    }

    /// The queue's partition count, written once by the first process (see `queue::agree`).
    pub fn queue_partitions(&self) -> String {
        format!("{}/queue/meta/partitions", self.prefix)
    }

    /// Who owns a partition: a key under its owner's lease.
    pub fn owners_root(&self) -> String {
        format!("{}/queue/owner/", self.prefix)
    }
    /// The owner key of one partition.
    pub fn owner(&self, partition: u16) -> String {
        format!("{}{partition:04}", self.owners_root())
    }

    /// Live collectors, each under its claim lease: what a fair share of partitions counts.
    pub fn collectors_root(&self) -> String {
        format!("{}/collectors/", self.prefix)
    }
    /// One live collector.
    pub fn collector(&self, id: &str) -> String {
        format!("{}{id}", self.collectors_root())
    }

    /// Every running process of every role, each under its own short lease (see `cluster`).
    pub fn cluster_root(&self) -> String {
        format!("{}/cluster/", self.prefix)
    }
    /// One running process.
    pub fn cluster_member(&self, role: &str, id: &str) -> String {
        format!("{}{role}/{id}", self.cluster_root())
    }

    /// A recent message's processing state (see `trace`).
    pub fn message_state(&self, message_id: &str) -> String {
        format!("{}/trace/{message_id}", self.prefix)
    }

    /// Live configuration, one key per setting (see `settings`).
    pub fn config_root(&self) -> String {
        format!("{}/config/", self.prefix)
    }
    /// One live setting.
    pub fn config(&self, name: &str) -> String {
        format!("{}{name}", self.config_root())
    }

    /// Failed attempts at one message, kept outside any lease so that they survive a crash.
    pub fn attempts(&self, message_id: &str) -> String {
        format!("{}/queue/attempts/{message_id}", self.prefix)
    }
    /// Every dead letter.
    pub fn dead_letters_root(&self) -> String {
        format!("{}/queue/dead/", self.prefix)
    }
    /// One dead letter.
    pub fn dead_letter(&self, message_id: &str) -> String {
        format!("{}{message_id}", self.dead_letters_root())
    }

    /// Shared bucket leases: the lease id for a kind and bucket, so collectors share leases.
    pub fn bucket_lease(&self, kind: &str, bucket: i64) -> String {
        format!("{}/leases/{kind}/{bucket}", self.prefix)
    }

    /// Every stored record.
    pub fn data_root(&self) -> String {
        format!("{}{DATA}", self.prefix)
    }
    /// One GPU's stored records, in time order.
    pub fn data_gpu(&self, hostname: &str, gpu_id: &str) -> String {
        format!("{}{hostname}/{gpu_id}/", self.data_root())
    }
    /// The inverse of [`data_gpu`](Self::data_gpu): the GPU prefix a data key sits under, if
    /// it is one. Borrowed from the key, since the gateway's watch asks for every event.
    pub fn data_gpu_of<'a>(&self, data_key: &'a str) -> Option<&'a str> {
        let rest = data_key.strip_prefix(&self.prefix)?.strip_prefix(DATA)?;
        let host_end = rest.find('/')?;
        let gpu_end = host_end + 1 + rest[host_end + 1..].find('/')?;
        let end = data_key.len() - rest.len() + gpu_end + 1;
        Some(&data_key[..end])
    }
    /// The host and index a GPU prefix from [`data_gpu`](Self::data_gpu) names, if it is one.
    pub fn place_of_data_gpu<'a>(&self, data_gpu: &'a str) -> Option<(&'a str, &'a str)> {
        data_gpu
            .strip_prefix(&self.prefix)?
            .strip_prefix(DATA)?
            .strip_suffix('/')?
            .split_once('/')
    }
    /// `/telemetry/data/{hostname}/{gpu_id}/{timestamp}_{id}`, the contract's layout, with the
    /// record's idempotency key as the id: the key is then a function of the content alone.
    pub fn data(&self, hostname: &str, gpu_id: &str, ts_nanos: i64, id: &str) -> String {
        format!(
            "{}{}",
            self.data_gpu(hostname, gpu_id),
            data_suffix(ts_nanos, id)
        )
    }

    /// Every folded chunk: `{prefix}/telemetry/chunks/{hostname}/{gpu_id}/{window end}`, apart
    /// from the raw samples so that one GPU's chunks are one range in time order, found from
    /// any instant by the first window that ends after it (docs/storage.md).
    pub fn chunks_root(&self) -> String {
        format!("{}/telemetry/chunks/", self.prefix)
    }
    /// One GPU's chunks, in time order.
    pub fn chunks_gpu(&self, hostname: &str, gpu_id: &str) -> String {
        format!("{}{hostname}/{gpu_id}/", self.chunks_root())
    }
    /// The chunk of one GPU's window ending at `end_nanos` (exclusive).
    pub fn chunk(&self, hostname: &str, gpu_id: &str, end_nanos: i64) -> String {
        format!(
            "{}{}",
            self.chunks_gpu(hostname, gpu_id),
            key_time(end_nanos)
        )
    }
    /// The chunk prefix of the GPU whose raw prefix is `data_gpu` (same host and index).
    pub fn chunks_of_data_gpu(&self, data_gpu: &str) -> Option<String> {
        let rest = data_gpu.strip_prefix(&self.data_root())?;
        Some(format!("{}{rest}", self.chunks_root()))
    }

    /// Every window some GPU has been folded in.
    pub fn folded_root(&self) -> String {
        format!("{}/storage/folded/", self.prefix)
    }
    /// Rewritten by every fold of the window ending at `end_nanos`: a commit that compares its
    /// mod revision knows no chunk of the window changed since it looked (`collector::commit`).
    pub fn folded(&self, end_nanos: i64) -> String {
        format!("{}{}", self.folded_root(), key_time(end_nanos))
    }

    /// The GPU registry.
    pub fn gpus_root(&self) -> String {
        format!("{}/telemetry/gpus/", self.prefix)
    }
    /// One GPU's registry entry.
    pub fn gpu(&self, hostname: &str, gpu_id: &str) -> String {
        format!("{}{hostname}/{gpu_id}", self.gpus_root())
    }

    /// A second UUID seen for a host and index, kept beside its registry entry so that both
    /// mappings stay queryable (`@` cannot occur in a GPU index).
    pub fn gpu_alias(&self, hostname: &str, gpu_id: &str, uuid: &str) -> String {
        format!("{}@{uuid}", self.gpu(hostname, gpu_id))
    }

    /// The first UUID a host and index reported: the registry entry never changes it.
    pub fn identity_of_gpu(&self, hostname: &str, gpu_id: &str) -> String {
        format!("{}/telemetry/identity/gpu/{hostname}/{gpu_id}", self.prefix)
    }

    /// The first host and index a UUID was reported on.
    pub fn identity_of_uuid(&self, uuid: &str) -> String {
        format!("{}/telemetry/identity/uuid/{uuid}", self.prefix)
    }

    /// What the storage maintainer publishes (`storage::StorageStatus`).
    pub fn storage_status(&self) -> String {
        format!("{}/storage/status", self.prefix)
    }
    /// The election of the storage maintainer (etcd's election API keeps its candidates here).
    pub fn storage_election(&self) -> String {
        format!("{}/storage/maintainer", self.prefix)
    }

    /// Every alert's state, one key per rule and GPU (see `rules::alert`).
    pub fn alerts_root(&self) -> String {
        format!("{}/alerts/state/", self.prefix)
    }
    /// One rule's alert on one GPU.
    pub fn alert(&self, rule: &str, hostname: &str, gpu_id: &str) -> String {
        format!("{}{rule}/{hostname}/{gpu_id}", self.alerts_root())
    }
    /// Alert transitions waiting for the webhook, oldest first.
    pub fn alert_events_root(&self) -> String {
        format!("{}/alerts/outbox/", self.prefix)
    }
    /// One transition waiting for the webhook.
    pub fn alert_event(&self, id: &str) -> String {
        format!("{}{id}", self.alert_events_root())
    }
    /// The newest revision of stored data that rule evaluation has accounted for.
    pub fn rules_progress(&self) -> String {
        format!("{}/alerts/progress", self.prefix)
    }

    /// Every refused record.
    pub fn invalid_root(&self) -> String {
        format!("{}/telemetry/invalid/", self.prefix)
    }
    /// One refused record, with its reason.
    pub fn invalid(&self, id: &str) -> String {
        format!("{}{id}", self.invalid_root())
    }
}

/// Fixed-width, sortable timestamp used inside keys: `2025-07-18T20:42:34.000000000Z`.
pub fn key_time(ts_nanos: i64) -> String {
    Utc.timestamp_nanos(ts_nanos)
        .to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// A data key after its GPU prefix, `{timestamp}_{id}`: the order of samples within a GPU,
/// which a folded chunk's rows keep and the API's cursor records.
pub fn data_suffix(ts_nanos: i64, id: &str) -> String {
    data_suffix_at(&key_time(ts_nanos), id)
}

/// [`data_suffix`] with the key time already formatted, for readers that build many suffixes
/// of one instant.
pub fn data_suffix_at(key_time: &str, id: &str) -> String {
    format!("{key_time}_{id}")
}

/// The key-time of an instant, for range bounds.
pub fn key_time_of(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The smallest key strictly greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_follow_the_contract_and_sort_by_time() {
        let k = Keys::new("/p");
        let a = k.data("host-1", "0", 1_752_871_354_000_000_000, "01ABC");
        assert_eq!(
            a,
            "/p/telemetry/data/host-1/0/2025-07-18T20:42:34.000000000Z_01ABC"
        );
        let b = k.data("host-1", "0", 1_752_871_354_000_000_001, "00000");
        assert!(a < b, "a later timestamp must sort later whatever the id");
    }

    #[test]
    fn queue_keys_are_per_partition() {
        let k = Keys::new("");
        assert_eq!(k.queue_message(7, "01J"), "/queue/msg/0007/01J");
    }

    #[test]
    fn gpu_prefix_of_a_data_key() {
        let k = Keys::new("/p");
        let key = k.data("host-1", "3", 1_752_871_354_000_000_000, "01J");
        assert_eq!(
            k.data_gpu_of(&key),
            Some(k.data_gpu("host-1", "3").as_str())
        );
        assert_eq!(k.data_gpu_of("/p/telemetry/data/host-1"), None);
        assert_eq!(k.data_gpu_of("/other/telemetry/data/host/0/x"), None);
        assert_eq!(
            k.place_of_data_gpu(&k.data_gpu("host-1", "3")),
            Some(("host-1", "3"))
        );
        assert_eq!(k.place_of_data_gpu("/p/telemetry/data/host-1/"), None);
    }

    #[test]
    fn prefix_end_is_exclusive_upper_bound() {
        assert_eq!(prefix_end("a/"), b"a0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
