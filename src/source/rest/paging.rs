//! Reading the list call page by page (page, offset, cursor, next URL, `Link` header) and
//! refusing anything that would make a read silently short or endless (other hosts, repeats).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{HeaderMap, LINK};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use tokio::sync::mpsc;

use super::RestSource;
use super::config::{PagingStyle, ParamValue, SinceFormat, UPDATED_SINCE_PLACEHOLDER};
use super::records::{json_type, scalar_text};
use super::versions::ReadVersion;
use crate::source::{ReadRequest, ReadSummary, SourceError, SourceItem};

impl RestSource {
    pub(super) fn list_url(
        &self,
        since: Option<DateTime<Utc>>,
        paging: Option<(&str, String)>,
    ) -> Result<Url, SourceError> {
        let mut url = self.url(&self.config.list_path)?;
        {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in &self.config.query {
                match value {
                    ParamValue::Text(text) if text.contains(UPDATED_SINCE_PLACEHOLDER) => {
                        // A full read filters from the epoch: the same query, every record.
                        let at = since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
                        let at = format_since(at, self.config.updated_since_format);
                        pairs.append_pair(key, &text.replace(UPDATED_SINCE_PLACEHOLDER, &at));
                    }
                    _ => {
                        pairs.append_pair(key, &value.to_string());
                    }
                }
            }
            if let (Some(param), Some(size)) = (&self.config.page_size_param, self.config.page_size)
            {
                pairs.append_pair(param, &size.to_string());
            }
            if let (Some(param), Some(since)) = (&self.config.updated_since_param, since) {
                pairs.append_pair(
                    param,
                    &format_since(since, self.config.updated_since_format),
                );
            }
            if let Some((param, value)) = paging {
                pairs.append_pair(param, &value);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(url)
    }

    /// The list read: streams every record (or those changed since `request.since` when
    /// incremental reads are configured) into `tx`. `complete` is false for incremental reads.
    ///
    /// An id listed twice in one read (offset paging while the CRM is edited) is emitted once:
    /// the first copy, since it is already on its way when the repeat arrives. The read is then
    /// not complete (a shifted list may also have skipped a record, so no deletion may be
    /// inferred), and the next read is a full one, which picks up the content of a repeat that
    /// differed; write-back's pre-write check compares against the emitted copy, so it treats
    /// such a record as changed rather than overwrite the newer content.
    pub(super) async fn read_list(
        &self,
        request: ReadRequest,
        tx: mpsc::Sender<SourceItem>,
    ) -> Result<ReadSummary, SourceError> {
        let since = request.since.filter(|_| self.supports_incremental());
        self.prepare().await?;
        let list_headers = self.since_headers(since)?;
        let paging = &self.config.paging;
        let (param, mut counter, mut url) = self.first_page(since)?;
        let mut seen: HashSet<String> = HashSet::new();
        // Ids already emitted by this read, with the version emitted (see `emit`).
        let mut emitted: HashMap<String, ReadVersion> = HashMap::new();
        let mut repeats = 0u64;
        if since.is_none() {
            self.full_read_due.store(false, Ordering::Relaxed);
        }
        let mut items = 0u64;
        let mut page = 1u32;
        loop {
            let shown = self.shown(&url);
            let Some((body, headers)) = self.fetch_page(&url, &list_headers, since, page).await?
            else {
                break;
            };
            let records = self.page_records(&body, &shown, page)?;
            items += self
                .emit_page(records, page, (&mut emitted, &mut repeats), &tx)
                .await?;
            let count = records.len();
            if count == 0 {
                break;
            }
            if paging.stop_on_short_page
                && self
                    .config
                    .page_size
                    .is_some_and(|size| count < size as usize)
            {
                break;
            }
            let next = self.next_page(
                (since, &param, &mut counter, &mut seen),
                (&url, &body, &headers),
                (&shown, page, count),
            )?;
            let Some(next) = next else { break };
            if page >= paging.max_pages {
                return Err(SourceError::Crm(format!(
                    "GET {}: still more pages after {page} pages (paging.max_pages); stopping in case the CRM is looping",
                    self.shown(&self.url(&self.config.list_path)?)
                )));
            }
            page += 1;
            url = next;
        }
        if repeats > 0 {
            // A repeat means the list moved under offset/page paging: another record may have
            // been skipped, and the kept copy may be stale. Not complete (no deletions inferred
            // from it), and the next read re-reads everything.
            self.full_read_due.store(true, Ordering::Relaxed);
            tracing::warn!(
                repeats,
                "the CRM list changed during the read; treating it as incomplete"
            );
        }
        Ok(ReadSummary {
            complete: since.is_none() && repeats == 0,
            items,
        })
    }

    /// Where a list read starts, by the paging style: the paging parameter, its first value
    /// (page number or offset) and the first page's URL.
    fn first_page(&self, since: Option<DateTime<Utc>>) -> Result<(String, u64, Url), SourceError> {
        let paging = &self.config.paging;
        let param = paging.param.clone().unwrap_or_else(|| {
            match paging.style {
                PagingStyle::Offset => "offset",
                PagingStyle::Cursor => "after",
                _ => "page",
            }
            .to_string()
        });
        let counter = paging.start.unwrap_or(match paging.style {
            PagingStyle::Offset => 0,
            _ => 1,
        });
        let url = match paging.style {
            PagingStyle::Page | PagingStyle::Offset => {
                self.list_url(since, Some((&param, counter.to_string())))?
            }
            _ => self.list_url(since, None)?,
        };
        Ok((param, counter, url))
    }

    /// Page `page` of the list at `url`: its JSON body and headers, or `None` when the CRM
    /// answers that there is nothing (304 to an incremental read: nothing changed since, as
    /// Zoho's If-Modified-Since; an empty 204: no records).
    async fn fetch_page(
        &self,
        url: &Url,
        list_headers: &HeaderMap,
        since: Option<DateTime<Utc>>,
        page: u32,
    ) -> Result<Option<(Value, HeaderMap)>, SourceError> {
        let shown = self.shown(url);
        let reply = self.send(Method::GET, url, None, list_headers).await?;
        if (reply.status == StatusCode::NOT_MODIFIED && since.is_some())
            || (reply.status == StatusCode::NO_CONTENT && reply.body.is_empty())
        {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(SourceError::Crm(format!(
                "GET {shown} (page {page}) failed: {}",
                reply.message()
            )));
        }
        let body: Value = serde_json::from_slice(&reply.body).map_err(|e| {
            SourceError::Crm(format!(
                "GET {shown} (page {page}): the response is not valid JSON ({e})"
            ))
        })?;
        Ok(Some((body, reply.headers)))
    }

    /// The list call's headers: `updated_since_header` with `since`, for an incremental read.
    fn since_headers(&self, since: Option<DateTime<Utc>>) -> Result<HeaderMap, SourceError> {
        let mut list_headers = HeaderMap::new();
        if let (Some(name), Some(since)) = (&self.config.updated_since_header, since) {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                SourceError::Config(
                    "source.rest.updated_since_header: not a valid header name".into(),
                )
            })?;
            let value = format_since(since, self.config.updated_since_format);
            let value = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|e| SourceError::Crm(format!("updated_since_header value: {e}")))?;
            list_headers.insert(name, value);
        }
        Ok(list_headers)
    }

    /// The records of one page's body (at `records_pointer`; none when absent or null).
    fn page_records<'b>(
        &self,
        body: &'b Value,
        shown: &str,
        page: u32,
    ) -> Result<&'b [Value], SourceError> {
        match body.pointer(&self.config.records_pointer) {
            Some(Value::Array(records)) => Ok(records),
            None | Some(Value::Null) => Ok(&[]),
            Some(other) => Err(SourceError::Crm(format!(
                "GET {shown} (page {page}): expected an array of records at {:?} (records_pointer), found {}",
                self.config.records_pointer,
                json_type(other)
            ))),
        }
    }

    /// Sends one page's records into `tx`, each id once per read (`emitted`, with the version
    /// sent; a repeat is counted in `repeats`); the number sent.
    async fn emit_page(
        &self,
        records: &[Value],
        page: u32,
        (emitted, repeats): (&mut HashMap<String, ReadVersion>, &mut u64),
        tx: &mpsc::Sender<SourceItem>,
    ) -> Result<u64, SourceError> {
        let mut items = 0u64;
        for (index, raw) in records.iter().enumerate() {
            let location = format!(
                "GET {} page {page} item {}",
                self.config.list_path,
                index + 1
            );
            let item = self.parse_record(raw, location);
            if let SourceItem::Record(record) = &item {
                let version = ReadVersion::of(record);
                let id = record.external_id.as_str();
                if let Some(first) = emitted.get(id) {
                    *repeats += 1;
                    if *first == version {
                        tracing::debug!(
                            id,
                            page,
                            "CRM listed a record twice in one read; skipping the repeat"
                        );
                    } else {
                        tracing::warn!(
                            id,
                            page,
                            "CRM listed a record twice in one read with different content (edited during the read); keeping the first copy, the next read is a full read"
                        );
                    }
                    continue;
                }
                emitted.insert(id.to_string(), version);
                self.versions.record(record);
            }
            tx.send(item).await.map_err(|_| SourceError::Cancelled)?;
            items += 1;
        }
        Ok(items)
    }

    /// The URL of the page after page `page` (`count` records, read from `url`), by the paging
    /// style: the next page number or offset, the cursor or next URL in `body`, or the `Link`
    /// header; `None` on the last page. A cursor or URL seen before (`seen`) is a loop: an error.
    #[allow(clippy::type_complexity)]
    fn next_page(
        &self,
        (since, param, counter, seen): (
            Option<DateTime<Utc>>,
            &str,
            &mut u64,
            &mut HashSet<String>,
        ),
        (url, body, headers): (&Url, &Value, &HeaderMap),
        (shown, page, count): (&str, u32, usize),
    ) -> Result<Option<Url>, SourceError> {
        let paging = &self.config.paging;
        Ok(match paging.style {
            PagingStyle::None => None,
            PagingStyle::Page => {
                *counter += 1;
                Some(self.list_url(since, Some((param, counter.to_string())))?)
            }
            PagingStyle::Offset => {
                *counter += count as u64;
                Some(self.list_url(since, Some((param, counter.to_string())))?)
            }
            PagingStyle::Cursor => {
                let pointer = paging.cursor_pointer.as_deref().unwrap_or_default();
                match body
                    .pointer(pointer)
                    .and_then(scalar_text)
                    .filter(|c| !c.is_empty())
                {
                    None => None,
                    Some(cursor) => {
                        if !seen.insert(cursor.clone()) {
                            return Err(SourceError::Crm(format!(
                                "GET {shown} (page {page}): the CRM returned cursor {cursor:?} a second time; stopping instead of looping"
                            )));
                        }
                        Some(self.list_url(since, Some((param, cursor)))?)
                    }
                }
            }
            PagingStyle::NextUrl => {
                let pointer = paging.next_url_pointer.as_deref().unwrap_or_default();
                match body
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .filter(|c| !c.trim().is_empty())
                {
                    None => None,
                    Some(next) => Some(self.follow(url, next, seen, page)?),
                }
            }
            PagingStyle::LinkHeader => match next_link(headers) {
                None => None,
                Some(next) => Some(self.follow(url, &next, seen, page)?),
            },
        })
    }

    /// Resolves a next-page URL (absolute or relative), refusing other hosts and repeats.
    pub(super) fn follow(
        &self,
        current: &Url,
        next: &str,
        seen: &mut HashSet<String>,
        page: u32,
    ) -> Result<Url, SourceError> {
        let url = current.join(next.trim()).map_err(|e| {
            SourceError::Crm(format!(
                "GET {} (page {page}): the next-page link is not a URL ({e})",
                self.shown(current)
            ))
        })?;
        if url.origin() != self.api_base().origin() {
            return Err(SourceError::Crm(format!(
                "GET {} (page {page}): the next-page link points to another server ({}); refusing to send credentials there",
                self.shown(current),
                url.origin().ascii_serialization()
            )));
        }
        if !seen.insert(url.as_str().to_string()) || url == *current {
            return Err(SourceError::Crm(format!(
                "GET {} (page {page}): the CRM returned the next-page link {} a second time; stopping instead of looping",
                self.shown(current),
                self.shown(&url)
            )));
        }
        Ok(url)
    }
}

/// The incremental-read time as the CRM wants it (`updated_since_format`).
pub fn format_since(at: DateTime<Utc>, format: SinceFormat) -> String {
    match format {
        SinceFormat::Rfc3339 => at.to_rfc3339_opts(SecondsFormat::Secs, true),
        SinceFormat::Rfc3339Offset => at.to_rfc3339_opts(SecondsFormat::Secs, false),
        SinceFormat::HttpDate => at.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        SinceFormat::Unix => at.timestamp().to_string(),
        SinceFormat::UnixMs => at.timestamp_millis().to_string(),
    }
}

/// The `rel="next"` target of RFC 8288 `Link` headers.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(LINK) {
        let Ok(mut rest) = value.to_str() else {
            continue;
        };
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('>') else { break };
            let target = &after[..close];
            let tail = &after[close + 1..];
            let params_end = tail.find('<').unwrap_or(tail.len());
            let is_next = tail[..params_end].split([';', ',']).any(|param| {
                let mut parts = param.splitn(2, '=');
                let key = parts.next().unwrap_or_default().trim();
                let value = parts.next().unwrap_or_default().trim().trim_matches('"');
                key.eq_ignore_ascii_case("rel")
                    && value
                        .split_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            });
            if is_next {
                return Some(target.trim().to_string());
            }
            rest = &tail[params_end..];
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::rest::RestSource;
    use crate::source::rest::test_support::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn since_formats() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            format_since(at, SinceFormat::Rfc3339),
            "2026-01-02T03:04:05Z"
        );
        assert_eq!(
            format_since(at, SinceFormat::Rfc3339Offset),
            "2026-01-02T03:04:05+00:00"
        );
        assert_eq!(
            format_since(at, SinceFormat::HttpDate),
            "Fri, 02 Jan 2026 03:04:05 GMT"
        );
        assert_eq!(format_since(at, SinceFormat::Unix), "1767323045");
    }

    #[test]
    fn updated_since_placeholder_fills_the_query_value() {
        let source = RestSource::from_table(&table(&format!(
            "{MINIMAL}\nquery = {{ q = \"SELECT Id FROM Contact WHERE SystemModstamp > {{updated_since}}\" }}"
        )))
        .unwrap();
        assert!(source.supports_incremental());
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let url = source.list_url(Some(at), None).unwrap();
        let q: Vec<_> = url.query_pairs().collect();
        assert_eq!(
            q[0].1,
            "SELECT Id FROM Contact WHERE SystemModstamp > 2026-01-02T03:04:05Z"
        );
        let url = source.list_url(None, None).unwrap();
        let q: Vec<_> = url.query_pairs().collect();
        assert_eq!(
            q[0].1,
            "SELECT Id FROM Contact WHERE SystemModstamp > 1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn link_header_next_is_found() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            HeaderValue::from_static(r#"<http://h/c?_page=1>; rel="first", <http://h/c?_page=3>; rel="next", <http://h/c?_page=9>; rel="last""#),
        );
        assert_eq!(next_link(&headers).as_deref(), Some("http://h/c?_page=3"));
        headers.insert(
            LINK,
            HeaderValue::from_static(r#"<http://h/c?_page=1>; rel="prev first""#),
        );
        assert_eq!(next_link(&headers), None);
        headers.insert(LINK, HeaderValue::from_static(r#"</c?page=2>; rel=next"#));
        assert_eq!(next_link(&headers).as_deref(), Some("/c?page=2"));
    }

    #[test]
    fn next_links_to_other_servers_or_repeats_are_refused() {
        let source = RestSource::from_table(&table(MINIMAL)).unwrap();
        let current = Url::parse("https://crm.example.com/contacts?page=1").unwrap();
        let mut seen = HashSet::new();
        let next = source
            .follow(&current, "/contacts?page=2", &mut seen, 1)
            .unwrap();
        assert_eq!(next.as_str(), "https://crm.example.com/contacts?page=2");
        let err = source
            .follow(&current, "/contacts?page=2", &mut seen, 2)
            .unwrap_err();
        assert!(err.to_string().contains("second time"), "{err}");
        let err = source
            .follow(
                &current,
                "https://elsewhere.example.net/contacts?page=3",
                &mut seen,
                3,
            )
            .unwrap_err();
        assert!(err.to_string().contains("another server"), "{err}");
    }
}
