//! CSV source adapter (placeholder until the CSV work lands).
use super::*;

/// Reads and writes a CSV file.
#[derive(Debug)]
pub struct CsvSource {
    path: std::path::PathBuf,
}

impl CsvSource {
    /// Builds the adapter.
    pub fn new(config: &SourceConfig) -> Self {
        Self {
            path: config.path.clone().unwrap_or_default(),
        }
    }
    /// Streams records.
    pub async fn read(
        &self,
        _request: ReadRequest,
        _tx: mpsc::Sender<SourceItem>,
    ) -> Result<ReadSummary, SourceError> {
        Err(SourceError::Io {
            path: self.path.display().to_string(),
            reason: "not implemented".into(),
        })
    }
    /// Writes changes back.
    pub async fn write_back(&self, _changes: &[CrmChange]) -> Result<WriteReport, SourceError> {
        Err(SourceError::Io {
            path: self.path.display().to_string(),
            reason: "not implemented".into(),
        })
    }
    /// Deletes rows.
    pub async fn delete_records(&self, _ids: &[ExternalId]) -> Result<WriteReport, SourceError> {
        Err(SourceError::Io {
            path: self.path.display().to_string(),
            reason: "not implemented".into(),
        })
    }
    /// Describes the adapter.
    pub fn describe(&self) -> String {
        format!("csv {}", self.path.display())
    }
}
