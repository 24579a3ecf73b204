//! Folded chunks: one GPU's samples of one closed window in one etcd key, as compressed columns.
//!
//! A raw sample costs hundreds of bytes of etcd's database, nearly all of it key, protobuf
//! field tags and descriptive fields repeated on every sample. A chunk keeps each descriptive
//! field once ([`Chunk::templates`]), and three numeric columns that compress well: times
//! (regular intervals: deltas of deltas are mostly zero), which series each row belongs to
//! (a short repeating pattern), and each series' values on their own (a metric's readings
//! follow a walk at a fixed decimal precision). The columns are compressed with `pco`, chosen
//! over Gorilla's XOR encoding by measurement (docs/storage.md): DCGM values are decimals such
//! as 73.432, whose binary mantissas XOR badly, and pco finds their common multiple.
//!
//! Rows stay in the order the raw keys had (time, then content hash), so a folded window reads
//! back in exactly the raw tier's order without hashing anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use pco::standalone::{simple_compress, simple_decompress};
use pco::ChunkConfig;
use prost::Message as _;
use telemetry_proto::{Chunk, ChunkSeries, TelemetryRecord};

/// Why a chunk could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The bytes are not a chunk.
    #[error("chunk is not a Chunk message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A column could not be compressed or decompressed.
    #[error("chunk column {column}: {source}")]
    Column {
        /// Which column.
        column: &'static str,
        /// What pco said.
        #[source]
        source: pco::errors::PcoError,
    },
    /// The columns disagree with each other (a damaged chunk).
    #[error("chunk is inconsistent: {0}")]
    Shape(String),
}

/// What a chunk stores of a record besides its time, metric and value: everything but the
/// identity (`id`, `idempotency_key`, which readers derive from the content) and the legacy
/// text fields (migrated before anything is stored).
fn template_of(r: &TelemetryRecord) -> TelemetryRecord {
    TelemetryRecord {
        id: String::new(),
        idempotency_key: String::new(),
        timestamp_unix_nano: 0,
        metric: String::new(),
        value: 0.0,
        timestamp_text: String::new(),
        value_text: String::new(),
        ..r.clone()
    }
}

/// One column as a chunk stores it (pco with its default configuration; empty when `nums` is).
pub fn compress<T: pco::data_types::Number>(
    column: &'static str,
    nums: &[T],
) -> Result<Vec<u8>, ChunkError> {
    if nums.is_empty() {
        return Ok(Vec::new());
    }
    simple_compress(nums, &ChunkConfig::default())
        .map_err(|source| ChunkError::Column { column, source })
}

fn decompress<T: pco::data_types::Number>(
    column: &'static str,
    bytes: &[u8],
) -> Result<Vec<T>, ChunkError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    simple_decompress(bytes).map_err(|source| ChunkError::Column { column, source })
}

/// Folds `records` (one GPU's, in the order of their raw keys) into a chunk's bytes.
pub fn fold(records: &[TelemetryRecord]) -> Result<Vec<u8>, ChunkError> {
    let mut templates: Vec<TelemetryRecord> = Vec::new();
    let mut template_index: HashMap<(Vec<u8>, BTreeMap<String, String>), u32> = HashMap::new();
    let mut series: Vec<(u32, String, Vec<f64>)> = Vec::new();
    let mut series_index: HashMap<(u32, &str), u32> = HashMap::new();
    let mut times = Vec::with_capacity(records.len());
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        let mut template = template_of(r);
        // Labels are a hash map, encoded in no fixed order: compare them sorted.
        let labels = std::mem::take(&mut template.labels);
        let sorted = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let t = *template_index
            .entry((template.encode_to_vec(), sorted))
            .or_insert_with(|| {
                template.labels = labels;
                templates.push(template);
                (templates.len() - 1) as u32
            });
        let s = *series_index
            .entry((t, r.metric.as_str()))
            .or_insert_with(|| {
                series.push((t, r.metric.clone(), Vec::new()));
                (series.len() - 1) as u32
            });
        series[s as usize].2.push(r.value);
        times.push(r.timestamp_unix_nano);
        rows.push(s);
    }
    let series = series
        .into_iter()
        .map(|(template, metric, values)| {
            Ok(ChunkSeries {
                template,
                metric,
                values: compress("values", &values)?,
            })
        })
        .collect::<Result<_, ChunkError>>()?;
    Ok(Chunk {
        count: records.len() as u32,
        templates,
        series,
        times: compress("times", &times)?,
        rows: compress("rows", &rows)?,
    }
    .encode_to_vec())
}

/// How many samples a chunk holds, without decompressing it.
pub fn count(bytes: &[u8]) -> Option<u64> {
    Chunk::decode(bytes).ok().map(|c| u64::from(c.count))
}

/// The records of a chunk, in the order they were folded, without `id` and `idempotency_key`.
pub fn unfold(bytes: &[u8]) -> Result<Vec<TelemetryRecord>, ChunkError> {
    let chunk = Decoded::new(bytes)?;
    Ok((0..chunk.len()).map(|i| chunk.record(i)).collect())
}

/// A chunk with its columns decompressed and its records not yet built: a reader that wants
/// a hundred samples of a window builds a hundred records, not the window's thousands. Each
/// row's content hash is computed the first time it is asked for and kept, so a decoded chunk
/// that readers share ([`super::cache::Chunks`]) hashes each sample once.
#[derive(Debug, Clone)]
pub struct Decoded {
    templates: Vec<TelemetryRecord>,
    /// Each series' template and metric.
    series: Vec<(usize, String)>,
    times: Vec<i64>,
    rows: Vec<u32>,
    /// Each row's value, in row order.
    values: Vec<f64>,
    /// Each row's content hash, once computed.
    hashes: Vec<OnceLock<[u8; 32]>>,
}

impl Decoded {
    /// Decompresses a chunk's columns; an error for bytes that are not a consistent chunk.
    pub fn new(bytes: &[u8]) -> Result<Self, ChunkError> {
        let chunk = Chunk::decode(bytes)?;
        let n = chunk.count as usize;
        let times: Vec<i64> = decompress("times", &chunk.times)?;
        let rows: Vec<u32> = decompress("rows", &chunk.rows)?;
        if times.len() != n || rows.len() != n {
            return Err(ChunkError::Shape(format!(
                "{n} samples but {} times and {} rows",
                times.len(),
                rows.len()
            )));
        }
        let mut columns = Vec::with_capacity(chunk.series.len());
        let mut series = Vec::with_capacity(chunk.series.len());
        for s in chunk.series {
            if chunk.templates.get(s.template as usize).is_none() {
                return Err(ChunkError::Shape(format!("no template {}", s.template)));
            }
            columns.push(decompress::<f64>("values", &s.values)?.into_iter());
            series.push((s.template as usize, s.metric));
        }
        let mut values = Vec::with_capacity(n);
        for &row in &rows {
            let value = columns
                .get_mut(row as usize)
                .ok_or_else(|| ChunkError::Shape(format!("no series {row}")))?
                .next()
                .ok_or_else(|| ChunkError::Shape(format!("series {row} ran out of values")))?;
            values.push(value);
        }
        Ok(Self {
            templates: chunk.templates,
            series,
            times,
            rows,
            values,
            hashes: std::iter::repeat_with(OnceLock::new).take(n).collect(),
        })
    }

    /// Roughly the memory it holds, for a cache's budget.
    pub fn weight(&self) -> usize {
        let per_row = size_of::<i64>() + size_of::<u32>() + size_of::<f64>();
        let per_row = per_row + size_of::<OnceLock<[u8; 32]>>();
        let templates: usize = self
            .templates
            .iter()
            .map(|t| t.encoded_len() + size_of::<TelemetryRecord>())
            .sum();
        self.len() * per_row + templates + self.series.len() * 64
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Each sample's time (Unix nanoseconds), in row order.
    pub fn times(&self) -> &[i64] {
        &self.times
    }

    /// Sample `i`'s metric.
    pub fn metric(&self, i: usize) -> &str {
        &self.series[self.rows[i] as usize].1
    }

    /// Sample `i`'s value.
    pub fn value(&self, i: usize) -> f64 {
        self.values[i]
    }

    /// Sample `i` as folded, without `id` and `idempotency_key`.
    pub fn record(&self, i: usize) -> TelemetryRecord {
        let (template, metric) = &self.series[self.rows[i] as usize];
        TelemetryRecord {
            timestamp_unix_nano: self.times[i],
            metric: metric.clone(),
            value: self.values[i],
            ..self.templates[*template].clone()
        }
    }

    /// Sample `i` as it was stored raw: with its content hash and the id derived from it.
    pub fn identified(&self, i: usize) -> TelemetryRecord {
        let mut r = self.record(i);
        r.idempotency_key = crate::record::hex_of(self.hash(i));
        r.id = crate::record::content_id(r.timestamp_unix_nano, &r.idempotency_key)
            .unwrap_or_default();
        r
    }

    /// Sample `i`'s content hash (computed once).
    fn hash(&self, i: usize) -> &[u8; 32] {
        self.hashes[i].get_or_init(|| crate::record::content_hash(&self.record(i)))
    }

    /// The rows at time `t` (rows are in time order).
    pub fn at(&self, t: i64) -> std::ops::Range<usize> {
        self.times.partition_point(|&x| x < t)..self.times.partition_point(|&x| x <= t)
    }

    /// Whether a sample with `r`'s content hash is in the chunk: only the rows of its time and
    /// metric are hashed.
    pub fn contains(&self, r: &TelemetryRecord) -> bool {
        self.at(r.timestamp_unix_nano)
            .filter(|&i| self.metric(i) == r.metric)
            .any(|i| crate::record::hex_of(self.hash(i)) == r.idempotency_key)
    }
}

#[cfg(test)]
mod tests;
