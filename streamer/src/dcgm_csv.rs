//! The DCGM-exporter CSV format, read as a stream so that memory does not grow with the file.
//!
//! Columns are found by header name, not position, so extra or reordered columns are fine.
//! A UTF-8 BOM and CRLF line endings are accepted. A row that cannot be parsed costs only
//! itself: the reader reports it with its line number and carries on.

use std::collections::HashMap;
use std::io::Read;

use telemetry::proto::TelemetryRecord;

use telemetry::record::parse_timestamp;

use crate::dcgm_fields::{is_dcgm_blank, parse_labels};

/// Why one row was not turned into a record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    /// The CSV itself is malformed at this line (counted as `csv_read_errors`).
    #[error("line {line}: malformed CSV: {reason}")]
    Malformed { line: u64, reason: String },
    /// The row parsed but its content is unusable (counted as `messages_invalid`).
    #[error("line {line}: invalid row: {reason}")]
    Invalid { line: u64, reason: String },
    /// DCGM's "blank" sentinel: the exporter could not read this field (counted, not stored).
    #[error("line {line}: missing reading ({metric} = {raw})")]
    MissingReading {
        line: u64,
        metric: String,
        raw: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the CSV has no header row")]
    NoHeader,
    #[error("the CSV header lacks the column {0:?}")]
    MissingColumn(&'static str),
    #[error("cannot read the CSV header: {0}")]
    Csv(#[from] csv::Error),
}

const REQUIRED: [&str; 4] = ["timestamp", "metric_name", "gpu_id", "value"];

/// Column positions, resolved once from the header.
#[derive(Debug, Clone)]
struct Columns {
    by_name: HashMap<String, usize>,
}

impl Columns {
    fn get<'r>(&self, row: &'r csv::StringRecord, name: &str) -> &'r str {
        self.by_name
            .get(name)
            .and_then(|&i| row.get(i))
            .unwrap_or("")
            .trim()
    }
}

/// Streaming reader of DCGM CSV rows.
pub struct DcgmCsvReader<R: Read> {
    inner: csv::Reader<R>,
    columns: Columns,
    row: csv::StringRecord,
}

impl<R: Read> DcgmCsvReader<R> {
    pub fn new(reader: R) -> Result<Self, OpenError> {
        let mut inner = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(reader);
        let headers = inner.headers()?.clone();
        if headers.is_empty() {
            return Err(OpenError::NoHeader);
        }
        let by_name: HashMap<String, usize> = headers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.trim_start_matches('\u{feff}').trim().to_string(), i))
            .collect();
        for col in REQUIRED {
            if !by_name.contains_key(col) {
                return Err(OpenError::MissingColumn(col));
            }
        }
        Ok(Self {
            inner,
            columns: Columns { by_name },
            row: csv::StringRecord::new(),
        })
    }

    /// The next row, or `None` at the end of the input.
    /// Bytes of input consumed so far, for progress reports.
    pub fn position(&self) -> u64 {
        self.inner.position().byte()
    }

    pub fn next_row(&mut self) -> Option<Result<TelemetryRecord, RowError>> {
        match self.inner.read_record(&mut self.row) {
            Ok(false) => None,
            Ok(true) => {
                let line = self.row.position().map_or(0, |p| p.line());
                Some(parse_row(&self.columns, &self.row, line))
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                // An I/O error cannot be skipped past; the caller sees it once and stops.
                let fatal = matches!(e.kind(), csv::ErrorKind::Io(_));
                let err = RowError::Malformed {
                    line,
                    reason: e.to_string(),
                };
                if fatal {
                    self.row.clear();
                }
                Some(Err(err))
            }
        }
    }
}

impl<R: Read> Iterator for DcgmCsvReader<R> {
    type Item = Result<TelemetryRecord, RowError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_row()
    }
}

fn parse_row(
    cols: &Columns,
    row: &csv::StringRecord,
    line: u64,
) -> Result<TelemetryRecord, RowError> {
    let invalid = |reason: String| RowError::Invalid { line, reason };
    let metric = cols.get(row, "metric_name").to_string();
    let raw_value = cols.get(row, "value");
    let value: f64 = raw_value
        .parse()
        .map_err(|_| invalid(format!("value {raw_value:?} is not a number")))?;
    if !value.is_finite() {
        // NaN, ±inf, and numbers too large for an f64 (1e400 parses as inf).
        return Err(invalid(format!(
            "value {raw_value:?} is not a finite number"
        )));
    }
    if is_dcgm_blank(value) {
        return Err(RowError::MissingReading {
            line,
            metric,
            raw: raw_value.to_string(),
        });
    }
    let ts = cols.get(row, "timestamp");
    let timestamp_unix_nano = parse_timestamp(ts).map_err(invalid)?;
    let labels_raw = cols.get(row, "labels_raw");
    let mut labels = parse_labels(labels_raw).map_err(|e| invalid(format!("labels_raw: {e}")))?;
    let mut field = |name: &str, label: &str| {
        let v = cols.get(row, name);
        let from_label = labels.remove(label);
        if v.is_empty() {
            from_label.unwrap_or_default()
        } else {
            v.to_string()
        }
    };
    let record = TelemetryRecord {
        gpu_id: field("gpu_id", "gpu"),
        device: field("device", "device"),
        uuid: field("uuid", "UUID"),
        model: field("modelName", "modelName"),
        hostname: field("Hostname", "Hostname"),
        container: field("container", "container"),
        pod: field("pod", "pod"),
        namespace: field("namespace", "namespace"),
        metric,
        value,
        timestamp_unix_nano,
        ..Default::default()
    };
    labels.remove("__name__");
    Ok(TelemetryRecord {
        labels: labels.into_iter().collect(),
        ..record
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n";

    fn row(value: &str) -> String {
        format!("\"2025-07-18T20:42:34Z\",\"DCGM_FI_DEV_GPU_UTIL\",\"0\",\"nvidia0\",\"GPU-1\",\"NVIDIA H100 80GB HBM3\",\"host-a\",\"\",\"\",\"\",\"{value}\",\"DCGM_FI_DRIVER_VERSION=\"\"535.129.03\"\",Hostname=\"\"host-a\"\",job=\"\"dcgm\"\"\"\n")
    }

    fn read(text: &str) -> Vec<Result<TelemetryRecord, RowError>> {
        DcgmCsvReader::new(text.as_bytes()).unwrap().collect()
    }

    #[test]
    fn parses_quoted_fields_and_labels() {
        let rows = read(&format!("{HEADER}{}", row("87")));
        let r = rows[0].as_ref().unwrap();
        assert_eq!(
            (r.hostname.as_str(), r.gpu_id.as_str(), r.value),
            ("host-a", "0", 87.0)
        );
        assert_eq!(
            r.labels.get("DCGM_FI_DRIVER_VERSION").map(String::as_str),
            Some("535.129.03")
        );
        assert!(
            !r.labels.contains_key("Hostname"),
            "labels that are fields are not repeated"
        );
    }

    #[test]
    fn bom_and_crlf_are_accepted() {
        let text = format!("\u{feff}{HEADER}{}", row("1")).replace('\n', "\r\n");
        let rows = read(&text);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].is_ok(), "{:?}", rows[0]);
    }

    #[test]
    fn a_bad_row_costs_only_itself() {
        let text = format!("{HEADER}{}{}{}", row("1"), row("abc"), row("3"));
        let rows = read(&text);
        assert_eq!(rows.len(), 3);
        assert!(rows[0].is_ok() && rows[2].is_ok());
        assert!(
            matches!(&rows[1], Err(RowError::Invalid { line: 3, .. })),
            "{:?}",
            rows[1]
        );
    }

    #[test]
    fn truncation_inside_a_quote_costs_only_the_last_row() {
        let full = format!("{HEADER}{}{}", row("1"), row("2"));
        let cut = &full[..full.len() - 20];
        let rows = read(cut);
        assert!(rows[0].is_ok());
        assert_eq!(rows.iter().filter(|r| r.is_ok()).count(), 1);
    }

    #[test]
    fn dcgm_blanks_are_missing_readings() {
        for blank in ["9223372036854775794", "140737488355328", "2147483632"] {
            let rows = read(&format!("{HEADER}{}", row(blank)));
            assert!(
                matches!(rows[0], Err(RowError::MissingReading { .. })),
                "{blank}"
            );
        }
        assert!(!is_dcgm_blank(81_559.0));
        assert!(
            !is_dcgm_blank(1e308),
            "a huge value is a value, not DCGM's blank"
        );
        for bad in ["NaN", "inf", "-inf", "1e400", "-1e400"] {
            let rows = read(&format!("{HEADER}{}", row(bad)));
            assert!(matches!(rows[0], Err(RowError::Invalid { .. })), "{bad}");
        }
    }

    #[test]
    fn missing_columns_are_refused() {
        assert!(matches!(
            DcgmCsvReader::new("a,b\n1,2\n".as_bytes()),
            Err(OpenError::MissingColumn(_))
        ));
    }
}
