//! Rows kept as parsed for a no-change read: a batch's cells in one store, each row's digest,
//! and its record built only when the digest says the row changed. Apart from the reading of
//! rows (`read.rs`) because this is the cheap path of a cycle in which nothing changed.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};

use super::read::{Row, SeenIds, check, fields_from, row_updated_at};
use super::*;

/// A usable row kept as parsed, with what it takes to build its record later: most rows of a
/// no-change read are only compared by digest and never built.
#[derive(Debug)]
pub struct RawRow {
    /// The batch's cells, filled in before the batch leaves the reader.
    store: Arc<OnceLock<RowStore>>,
    /// This row's cells: `ends[cells]` in the store.
    cells: std::ops::Range<u32>,
    /// Where the row's first cell starts in the store's text.
    start: u32,
    line: u64,
}

impl RawRow {
    /// The record, exactly as a plain read would have yielded it.
    pub(in crate::source) fn into_record(
        self,
        external_id: ExternalId,
        updated_at: Option<DateTime<Utc>>,
    ) -> SourceRecord {
        let store = self
            .store
            .get()
            .expect("a batch's store is sealed before it is sent");
        let ends = &store.ends[self.cells.start as usize..self.cells.end as usize];
        let starts = std::iter::once(self.start).chain(ends.iter().copied());
        let cells = starts
            .zip(ends)
            .map(|(from, &to)| &store.text[from as usize..to as usize]);
        SourceRecord {
            external_id,
            fields: fields_from(&store.names, cells),
            updated_at,
            location: format!("{} line {}", store.file, self.line),
        }
    }
}

/// The cells of one batch of rows, end to end in one string (every kept row is valid UTF-8):
/// one allocation per batch where a copy of each row cost three.
#[derive(Debug)]
pub(super) struct RowStore {
    text: String,
    /// Each cell's end offset in `text`.
    ends: Vec<u32>,
    names: Arc<[String]>,
    file: Arc<str>,
}

impl RowStore {
    /// An empty store sized like `like` (the previous batch's), so it rarely regrows.
    pub(super) fn new(names: &Arc<[String]>, file: &Arc<str>, like: Option<&RowStore>) -> Self {
        Self {
            text: String::with_capacity(like.map_or(0, |s| s.text.len())),
            ends: Vec::with_capacity(like.map_or(0, |s| s.ends.len())),
            names: Arc::clone(names),
            file: Arc::clone(file),
        }
    }
}

/// What a fingerprinting read needs beside the header: the fingerprint, the column of each
/// fingerprinted field (the first of its name), and the store the current batch's rows go to.
pub(super) struct DigestPlan<'a> {
    fingerprint: &'a RawFingerprint,
    columns: Vec<Option<usize>>,
    /// The current batch's cells, being filled.
    store: RowStore,
    /// Where the current batch's rows will find `store` once it is sealed.
    sealed: Arc<OnceLock<RowStore>>,
}

impl<'a> DigestPlan<'a> {
    pub(super) fn new(layout: &Layout, header: &Header, fingerprint: &'a RawFingerprint) -> Self {
        let names: Arc<[String]> = header.names.clone().into();
        let file: Arc<str> = layout.name().into();
        Self {
            fingerprint,
            columns: fingerprint
                .fields()
                .iter()
                .map(|name| header.index.get(name).copied())
                .collect(),
            store: RowStore::new(&names, &file, None),
            sealed: Arc::new(OnceLock::new()),
        }
    }

    /// Hands the current batch's cells to its rows; the next rows go to a fresh store.
    pub(super) fn seal(&mut self) {
        let next = RowStore::new(&self.store.names, &self.store.file, Some(&self.store));
        let full = std::mem::replace(&mut self.store, next);
        let sealed = std::mem::replace(&mut self.sealed, Arc::new(OnceLock::new()));
        sealed
            .set(full)
            .expect("a store is sealed once, with its batch");
    }

    /// A row as a digested item (or a quarantined one).
    pub(super) fn item(
        &mut self,
        layout: &Layout,
        header: &Header,
        row: Row<'_>,
        seen: &mut SeenIds,
    ) -> DigestedItem {
        let (id, text) = match check(layout, header, row, seen) {
            Ok(usable) => usable,
            Err(bad) => return DigestedItem::Item(SourceItem::Bad(bad)),
        };
        // Trimmed as `fields_from` trims.
        let digest = self.fingerprint.digest(|i| {
            self.columns[i]
                .and_then(|c| text.cell(c))
                .map(str::trim)
                .unwrap_or_default()
        });
        DigestedItem::Row(DigestedRow {
            external_id: id,
            digest,
            updated_at: row_updated_at(layout, header, text, row.line),
            raw: self.keep(text, row.line),
        })
    }

    /// Copies a usable row's cells into the batch's store.
    pub(super) fn keep(&mut self, text: RowText<'_>, line: u64) -> RawRow {
        let store = &mut self.store;
        let offset = |n: usize| u32::try_from(n).expect("a batch's text stays under 4 GiB");
        let start = offset(store.text.len());
        let first = offset(store.ends.len());
        store.text.push_str(text.as_str());
        for i in 0..text.len() {
            store.ends.push(start + offset(text.end(i)));
        }
        RawRow {
            store: Arc::clone(&self.sealed),
            cells: first..offset(store.ends.len()),
            start,
            line,
        }
    }
}
