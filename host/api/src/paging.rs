//! Twilio's paging: `PageSize` (default 50, at most 1000), `Page` (0-based, informational) and an
//! opaque `PageToken` cursor, answered with the envelope Twilio's helper libraries follow.

use callflow_store::{Page, PageRequest};
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The query string of a list request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Every query parameter, in order.
    pub pairs: Vec<(String, String)>,
    pub page_size: u32,
    pub page: u32,
    pub request: PageRequest,
    /// The `PageToken` as sent, so `uri` names this very page.
    token: Option<String>,
}

fn bad_token() -> ApiError {
    ApiError::param("PageToken", "is not a token this server issued")
}

impl ListQuery {
    pub fn parse(query: Option<&str>) -> ApiResult<Self> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let page_size = match get("PageSize") {
            None | Some("") => DEFAULT_PAGE_SIZE,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| ApiError::param("PageSize", "must be a positive integer"))?
                .min(MAX_PAGE_SIZE),
        };
        let page = match get("Page") {
            None | Some("") => 0,
            Some(v) => v
                .parse::<u32>()
                .map_err(|_| ApiError::param("Page", "must be a non-negative integer"))?,
        };
        // `PA<seq>`: rows older than seq (next pages); `PB<seq>`: rows newer than seq (previous pages)
        let token = get("PageToken")
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let cursor = |prefix: &str| -> ApiResult<Option<i64>> {
            match token.as_deref().and_then(|t| t.strip_prefix(prefix)) {
                None => Ok(None),
                Some(n) => n.parse().map(Some).map_err(|_| bad_token()),
            }
        };
        let (before, after) = (cursor("PA")?, cursor("PB")?);
        if token.is_some() && before.is_none() && after.is_none() {
            return Err(bad_token());
        }
        let request = PageRequest {
            size: page_size,
            before,
            after,
        };
        Ok(ListQuery {
            page_size,
            page,
            request,
            token,
            pairs,
        })
    }

    /// A query parameter other than the paging ones.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// `path` with the caller's filters and the given paging parameters.
    fn uri(&self, path: &str, page: u32, token: Option<&str>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.pairs {
            if !matches!(k.as_str(), "PageSize" | "Page" | "PageToken") {
                q.append_pair(k, v);
            }
        }
        q.append_pair("PageSize", &self.page_size.to_string());
        q.append_pair("Page", &page.to_string());
        if let Some(t) = token {
            q.append_pair("PageToken", t);
        }
        format!("{path}?{}", q.finish())
    }

    /// The list envelope around `items` under `key`.
    pub fn envelope<T>(
        &self,
        path: &str,
        key: &str,
        page: Page<T>,
        render: impl Fn(&T) -> Value,
    ) -> Value {
        let items: Vec<Value> = page.items.iter().map(render).collect();
        let start = u64::from(self.page) * u64::from(self.page_size);
        let end = (start + items.len() as u64).saturating_sub(1);
        let mut m = Map::new();
        m.insert(key.into(), Value::Array(items));
        m.insert("first_page_uri".into(), self.uri(path, 0, None).into());
        m.insert(
            "next_page_uri".into(),
            page.next.map_or(Value::Null, |n| {
                self.uri(path, self.page + 1, Some(&format!("PA{n}")))
                    .into()
            }),
        );
        m.insert(
            "previous_page_uri".into(),
            page.prev.map_or(Value::Null, |p| {
                self.uri(path, self.page.saturating_sub(1), Some(&format!("PB{p}")))
                    .into()
            }),
        );
        m.insert("page".into(), self.page.into());
        m.insert("page_size".into(), self.page_size.into());
        m.insert("start".into(), start.into());
        m.insert("end".into(), end.into());
        m.insert(
            "uri".into(),
            self.uri(path, self.page, self.token.as_deref()).into(),
        );
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_caps_and_tokens() {
        let q = ListQuery::parse(None).unwrap();
        assert_eq!((q.page_size, q.page, q.request.before), (50, 0, None));
        let q = ListQuery::parse(Some("PageSize=5000&Page=2&PageToken=PA17&To=%2B1")).unwrap();
        assert_eq!((q.page_size, q.page, q.request.before), (1000, 2, Some(17)));
        assert_eq!(q.get("To"), Some("+1"));
        let q = ListQuery::parse(Some("PageToken=PB5")).unwrap();
        assert_eq!((q.request.before, q.request.after), (None, Some(5)));
        for bad in [
            "PageSize=0",
            "PageSize=x",
            "Page=-1",
            "PageToken=zz",
            "PageToken=PAx",
        ] {
            assert_eq!(
                ListQuery::parse(Some(bad)).unwrap_err().code,
                20001,
                "{bad}"
            );
        }
    }

    #[test]
    fn envelope_links_neighbours_and_keeps_filters() {
        let q = ListQuery::parse(Some("To=%2B15&PageSize=2&Page=1&PageToken=PA11")).unwrap();
        let page = Page {
            items: vec![1, 2],
            next: Some(9),
            prev: Some(10),
        };
        let v = q.envelope("/x/Calls.json", "calls", page, |n| (*n).into());
        expect_test::expect![[r#"{"calls":[1,2],"end":3,"first_page_uri":"/x/Calls.json?To=%2B15&PageSize=2&Page=0","next_page_uri":"/x/Calls.json?To=%2B15&PageSize=2&Page=2&PageToken=PA9","page":1,"page_size":2,"previous_page_uri":"/x/Calls.json?To=%2B15&PageSize=2&Page=0&PageToken=PB10","start":2,"uri":"/x/Calls.json?To=%2B15&PageSize=2&Page=1&PageToken=PA11"}"#]]
            .assert_eq(&v.to_string());
    }
}
