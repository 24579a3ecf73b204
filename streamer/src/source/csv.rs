//! DCGM CSV files: one pass, or forever with `--loop`. Reading is synchronous file I/O, so it
//! runs on a blocking thread and hands rows over as it goes: memory stays flat whatever the
//! file's size. `-` is standard input, read once (`streamer generate --out - | streamer --csv -`
//! streams a fleet larger than any file one would keep), and a path may be a named pipe: it
//! is opened once, not checked at start-up by an open that would consume it.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use crate::dcgm_csv::DcgmCsvReader;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{Sink, Source, SourceError};

#[derive(Debug, Clone)]
pub struct CsvSource {
    pub paths: Vec<PathBuf>,
    pub looping: bool,
    pub stamp_now: bool,
}

/// Whether `path` is read once as a stream (standard input, or a named pipe).
pub fn is_stream(path: &PathBuf) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    path.as_os_str() == "-" || std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Opens a file (`-`: standard input) and reads its header, so a bad path fails at start-up
/// with its name.
pub fn open(path: &PathBuf) -> Result<DcgmCsvReader<BufReader<Box<dyn Read + Send>>>, SourceError> {
    let unreadable = |reason: String| SourceError::Unreadable {
        path: path.display().to_string(),
        reason,
    };
    let input: Box<dyn Read + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).map_err(|e| unreadable(e.to_string()))?)
    };
    DcgmCsvReader::new(BufReader::with_capacity(256 * 1024, input))
        .map_err(|e| unreadable(e.to_string()))
}

impl Source for CsvSource {
    fn name(&self) -> String {
        format!("csv {:?}", self.paths)
    }

    fn run(
        self: Box<Self>,
        sink: Sink,
        stop: CancellationToken,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move {
            let handle = tokio::task::spawn_blocking(move || self.read_all(&sink, &stop));
            handle
                .await
                .map_err(|e| SourceError::Other(e.to_string()))?
        })
    }
}

impl CsvSource {
    fn read_all(&self, sink: &Sink, stop: &CancellationToken) -> Result<(), SourceError> {
        let mut pass = 0u64;
        loop {
            pass += 1;
            for path in &self.paths {
                let name = path.display().to_string();
                let mut rows = open(path)?;
                let mut done_before = 0;
                while let Some(row) = rows.next_row() {
                    if stop.is_cancelled() {
                        return Ok(());
                    }
                    let at = rows.position();
                    sink.counters.bytes_read(at - done_before);
                    done_before = at;
                    match row {
                        Ok(mut r) => {
                            if self.stamp_now {
                                // Stamped when published, not when read: see pipeline::STAMP_AT_PUBLISH.
                                r.timestamp_unix_nano = crate::pipeline::STAMP_AT_PUBLISH;
                            }
                            if !sink.blocking_send(r) {
                                return Ok(());
                            }
                        }
                        Err(e) => sink.reject(&name, &e),
                    }
                }
            }
            if !self.looping || stop.is_cancelled() || self.paths.iter().any(is_stream) {
                return Ok(());
            }
            tracing::debug!(pass, "CSV pass complete; starting again");
        }
    }
}
