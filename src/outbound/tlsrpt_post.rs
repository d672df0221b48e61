//! TLS reports over HTTPS (RFC 8460 §5.4, an `https:` rua): the gzipped
//! report POSTed as `application/tlsrpt+gzip` with the HTTPS client of
//! MTA-STS (`sts_fetch::https_client`: MX roots and `--tls-ca-file`,
//! blackpony's resolver, no redirect followed, a time limit). A 2xx answer
//! is success (§5.4); anything else, or no answer, is a failure the
//! operator sees (logged, temporary exit status) and may retry.

use std::time::Duration;

use super::dns::MailResolver;
use super::sts_fetch::{error_chain, https_client};
use crate::transport::ClientTls;

/// The media type of a gzipped report (RFC 8460 §6.4).
pub const MEDIA_TYPE: &str = "application/tlsrpt+gzip";

/// The time limit of one submission.
pub const POST_TIMEOUT: Duration = Duration::from_secs(60);

/// Submits reports to `https:` destinations.
pub struct ReportPoster {
    client: reqwest::Client,
}

impl ReportPoster {
    pub fn new(resolver: MailResolver, tls: &ClientTls) -> Result<Self, String> {
        Ok(ReportPoster {
            client: https_client(resolver, tls, POST_TIMEOUT, "TLS reports")?,
        })
    }

    /// POSTs `gzipped` (the report, RFC 1952) to `url`: the HTTP status on
    /// success (2xx), else why not, for the log.
    pub async fn post(&self, url: &str, gzipped: Vec<u8>) -> Result<u16, String> {
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, MEDIA_TYPE)
            .body(gzipped)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|to| format!(", a redirect to {to} (not followed)"))
            .unwrap_or_default();
        Err(format!("POST {url}: HTTP {status}{to}"))
    }
}
