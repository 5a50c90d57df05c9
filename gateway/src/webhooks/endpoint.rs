//! Where an app's webhooks go: each endpoint with the event kinds it wants, the headers it is
//! sent beside Pusher's own, and the channels it is told about. Field names follow other Pusher
//! servers' configuration (`event_types`, `filter.channel_name_starts_with`), so that an app's
//! settings carry over.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::event::{WebhookEvent, WebhookKind};

/// Headers an endpoint may not set: the gateway sets them, and the signature must hold.
const RESERVED_HEADERS: [&str; 5] = [
    "x-pusher-key",
    "x-pusher-signature",
    "content-type",
    "content-length",
    "host",
];

/// One webhook endpoint of an app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Where requests are POSTed (`http://` or `https://`).
    pub url: String,
    /// Which kinds it gets; every kind but `subscription_count` when absent.
    #[serde(default)]
    pub event_types: Option<Vec<WebhookKind>>,
    /// Sent with every request, beside `X-Pusher-Key` and `X-Pusher-Signature`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Which channels' events it gets; every channel's when absent.
    #[serde(default)]
    pub filter: ChannelFilter,
}

/// Channels an endpoint hears about: those whose names start and end as given (both when both
/// are given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelFilter {
    #[serde(default)]
    pub channel_name_starts_with: Option<String>,
    #[serde(default)]
    pub channel_name_ends_with: Option<String>,
}

impl ChannelFilter {
    pub fn matches(&self, channel: &str) -> bool {
        let starts = self.channel_name_starts_with.as_deref();
        let ends = self.channel_name_ends_with.as_deref();
        starts.is_none_or(|prefix| channel.starts_with(prefix))
            && ends.is_none_or(|suffix| channel.ends_with(suffix))
    }
}

impl Endpoint {
    /// An endpoint for every kind but `subscription_count` (or `kinds`), and every channel.
    pub fn new(url: &str, kinds: Option<Vec<WebhookKind>>) -> Endpoint {
        Endpoint {
            url: url.into(),
            event_types: kinds,
            headers: BTreeMap::new(),
            filter: ChannelFilter::default(),
        }
    }

    /// Whether it gets events of this kind, on some channel.
    pub fn wants_kind(&self, kind: WebhookKind) -> bool {
        match &self.event_types {
            Some(kinds) => kinds.contains(&kind),
            None => kind != WebhookKind::SubscriptionCount,
        }
    }

    /// Whether it gets this event.
    pub fn wants(&self, event: &WebhookEvent) -> bool {
        self.wants_kind(event.kind()) && self.filter.matches(event.channel())
    }

    /// What is wrong with it, if anything: a URL that is not HTTP, or a header the HTTP client
    /// would refuse to send (so that every request would fail) or one the gateway sets itself.
    pub fn check(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "url {:?} must start with http:// or https://",
                self.url
            ));
        }
        for (name, value) in &self.headers {
            if ureq::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!(
                    "header name {name:?} is not a valid HTTP header name"
                ));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(format!("header {name:?} is set by the gateway"));
            }
            if ureq::http::HeaderValue::from_str(value).is_err() {
                return Err(format!("header {name:?} has a value that cannot be sent"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, channel: &str) -> WebhookEvent {
        match kind {
            "occupied" => WebhookEvent::ChannelOccupied {
                channel: channel.into(),
            },
            _ => WebhookEvent::SubscriptionCount {
                channel: channel.into(),
                count: 1,
            },
        }
    }

    #[test]
    fn an_endpoint_gets_its_kinds_on_the_channels_its_filter_names() {
        let all: Endpoint = serde_json::from_str(r#"{"url": "http://a/"}"#).unwrap();
        assert!(all.wants(&event("occupied", "x")));
        assert!(
            !all.wants(&event("count", "x")),
            "not subscription_count by default"
        );
        let some: Endpoint = serde_json::from_str(
            r#"{"url": "http://a/", "event_types": ["subscription_count"],
                "filter": {"channel_name_starts_with": "private-", "channel_name_ends_with": "-eu"}}"#,
        )
        .unwrap();
        assert!(some.wants(&event("count", "private-room-eu")));
        assert!(
            !some.wants(&event("count", "private-room-us")),
            "both must hold"
        );
        assert!(!some.wants(&event("count", "room-eu")));
        assert!(!some.wants(&event("occupied", "private-room-eu")));
    }

    #[test]
    fn bad_urls_and_headers_are_refused() {
        let with = |url: &str, name: &str, value: &str| Endpoint {
            headers: BTreeMap::from([(name.to_owned(), value.to_owned())]),
            ..Endpoint::new(url, None)
        };
        assert_eq!(with("https://a/", "X-Team", "realtime").check(), Ok(()));
        assert!(with("ftp://a/", "X-Team", "x").check().is_err());
        assert!(with("http://a/", "X Team", "x").check().is_err());
        assert!(with("http://a/", "X-Team", "a\r\nInjected: 1")
            .check()
            .is_err());
        let reserved = with("http://a/", "X-Pusher-Signature", "x").check();
        assert!(reserved.unwrap_err().contains("set by the gateway"));
        let unknown = serde_json::from_str::<Endpoint>(r#"{"url": "http://a/", "events": []}"#);
        assert!(
            unknown.is_err(),
            "a misspelt field is an error, not ignored"
        );
    }
}
