//! `[source.rest.paging]`: how the list call pages (page numbers, offsets, a body cursor, a
//! next URL, the `Link` header) and what each style needs to find the next page.

use serde::Deserialize;

use super::{RestConfigError, RestSourceConfig};

/// How the list call pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PagingStyle {
    /// Page numbers in `param`, from `start` (default 1).
    Page,
    /// Item offsets in `param`, from `start` (default 0), advanced by the items received.
    Offset,
    /// A cursor read from the body at `cursor_pointer`, sent back in `param`.
    Cursor,
    /// A next-page URL read from the body at `next_url_pointer`.
    NextUrl,
    /// The RFC 8288 `Link: <…>; rel="next"` response header.
    LinkHeader,
    /// One request returns everything.
    #[default]
    None,
}

/// `[source.rest.paging]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagingConfig {
    /// The paging style.
    #[serde(default)]
    pub style: PagingStyle,
    /// Query parameter for page/offset/cursor (defaults `page`, `offset`, `after`).
    #[serde(default)]
    pub param: Option<String>,
    /// First page number or offset (defaults 1 and 0).
    #[serde(default)]
    pub start: Option<u64>,
    /// JSON pointer to the next cursor in the body (cursor).
    #[serde(default)]
    pub cursor_pointer: Option<String>,
    /// JSON pointer to the next URL in the body (next_url).
    #[serde(default)]
    pub next_url_pointer: Option<String>,
    /// Stop when a page holds fewer than `page_size` records, default true.
    #[serde(default = "super::yes")]
    pub stop_on_short_page: bool,
    /// Give up (with an error) after this many pages, default 10000.
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
}

fn default_max_pages() -> u32 {
    10_000
}

impl Default for PagingConfig {
    fn default() -> Self {
        Self {
            style: PagingStyle::None,
            param: None,
            start: None,
            cursor_pointer: None,
            next_url_pointer: None,
            stop_on_short_page: true,
            max_pages: default_max_pages(),
        }
    }
}

impl RestSourceConfig {
    /// Page size and paging style: what each style needs to find the next page.
    pub(super) fn validate_paging(
        &self,
        pointer: &dyn Fn(&str, &str, bool) -> Result<(), RestConfigError>,
    ) -> Result<(), RestConfigError> {
        match (&self.page_size_param, self.page_size) {
            (_, Some(0)) => {
                return Err(RestConfigError::new(
                    "page_size",
                    "expected a whole number above 0",
                ));
            }
            (Some(_), None) => {
                return Err(RestConfigError::new(
                    "page_size",
                    "required when page_size_param is set",
                ));
            }
            _ => {}
        }
        let paging = &self.paging;
        match paging.style {
            PagingStyle::Cursor if paging.cursor_pointer.is_none() => {
                return Err(RestConfigError::new(
                    "paging.cursor_pointer",
                    "required when paging.style = \"cursor\": where the next cursor sits in the body",
                ));
            }
            PagingStyle::NextUrl if paging.next_url_pointer.is_none() => {
                return Err(RestConfigError::new(
                    "paging.next_url_pointer",
                    "required when paging.style = \"next_url\": where the next URL sits in the body",
                ));
            }
            _ => {}
        }
        if let Some(p) = &paging.cursor_pointer {
            pointer("paging.cursor_pointer", p, false)?;
        }
        if let Some(p) = &paging.next_url_pointer {
            pointer("paging.next_url_pointer", p, false)?;
        }
        if paging.max_pages == 0 {
            return Err(RestConfigError::new(
                "paging.max_pages",
                "expected a whole number above 0",
            ));
        }
        Ok(())
    }
}
