//! A leader's permission to write, as its writers (the Quo client, the CRM adapters) see it.
//!
//! A leader that lost its lease must send nothing more: a late write from it lands after a new
//! leader read the other side, looks like an edit made there, and is merged back, reverting a
//! newer change with no conflict recorded. The lease (`ledger::lease`) says how long it is still
//! ours by the local clock; here each write asks it just before it is sent (after any wait for a
//! rate-limit permit), gets a timeout no longer than the lease's write window
//! ([`crate::config::lease_write_window`]), and is not started while less than that is left: a
//! write of ours is over (answered, or abandoned by us) before the lease can pass to anyone else.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long this process may still write; `None`: no longer (lost, expired, or never held).
pub type TimeLeft = Arc<dyn Fn() -> Option<Duration> + Send + Sync>;

/// A leader's write fence: its lease's time left and write window. Cheap to clone.
#[derive(Clone)]
pub struct WriteFence {
    time_left: TimeLeft,
    window: Duration,
}

impl std::fmt::Debug for WriteFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFence")
            .field("time_left", &(self.time_left)())
            .field("window", &self.window)
            .finish()
    }
}

impl WriteFence {
    /// A fence over `time_left`, whose writes get at most `window` each.
    pub fn new(time_left: TimeLeft, window: Duration) -> Self {
        Self { time_left, window }
    }

    /// How long this process may still write.
    pub fn time_left(&self) -> Option<Duration> {
        (self.time_left)()
    }

    /// Whether this process may write at all now.
    pub fn holds(&self) -> bool {
        self.time_left().is_some()
    }

    /// Admits one write whose timeout is configured as `timeout`: returns the timeout it must be
    /// sent with (capped at the write window and at the time left), once at least that much is
    /// left (a late renewal is waited for), or `None` when the lease runs out first: the write
    /// must not be sent.
    pub async fn admit(&self, timeout: Duration) -> Option<Duration> {
        let wanted = timeout.min(self.window);
        loop {
            let left = self.time_left()?;
            if left >= wanted {
                return Some(wanted.min(left));
            }
            // A renewal is late: wait for it, or for the lease to run out.
            tokio::time::sleep(left.clamp(Duration::from_millis(1), Duration::from_millis(20)))
                .await;
        }
    }
}

/// A write's body that asks the fence once more when the connection takes it to send.
///
/// The fence admits a write before `send()`, but its bytes leave later, from the HTTP
/// connection's own task. A process frozen in between (SIGSTOP, a VM paused, a debugger) and
/// thawed after its lease passed would still send a write admitted under the lease it lost: a
/// twin contact, or a PATCH that reverts a newer edit. The body is the last thing the connection
/// reads before it writes the request (the head and a small body leave in one flush), so the
/// fence is asked here again, with the write's own deadline: refused, the request fails with
/// [`FencedAtSend`] and nothing of it reaches the wire whole.
pub struct FencedBody {
    bytes: Option<Bytes>,
    len: u64,
    fence: WriteFence,
    deadline: Instant,
}

/// A write the fence refused as its connection was about to send it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the write was not sent: this process's writer lease or the write's deadline passed before it left"
)]
pub struct FencedAtSend;

impl FencedBody {
    /// `bytes` to be sent under `fence`, by `timeout` from now (the timeout it was admitted
    /// with).
    pub fn new(bytes: Bytes, fence: WriteFence, timeout: Duration) -> Self {
        Self {
            len: bytes.len() as u64,
            bytes: Some(bytes),
            fence,
            deadline: Instant::now() + timeout,
        }
    }

    /// Whether `error` (from sending a request with this body) is the fence's refusal.
    pub fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if e.is::<FencedAtSend>() {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// `request` with `body` as JSON: as a [`FencedBody`] under `fenced` (the fence and the timeout
/// the write was admitted with), or plainly when the write is not fenced.
pub fn with_json_body<B: serde::Serialize + ?Sized>(
    request: reqwest::RequestBuilder,
    body: &B,
    fenced: Option<(&WriteFence, Duration)>,
) -> Result<reqwest::RequestBuilder, serde_json::Error> {
    Ok(match fenced {
        None => request.json(body),
        Some((fence, timeout)) => request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(reqwest::Body::wrap(FencedBody::new(
                serde_json::to_vec(body)?.into(),
                fence.clone(),
                timeout,
            ))),
    })
}

impl http_body::Body for FencedBody {
    type Data = Bytes;
    type Error = FencedAtSend;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, FencedAtSend>>> {
        let this = self.get_mut();
        let Some(bytes) = this.bytes.take() else {
            return Poll::Ready(None);
        };
        if this.fence.holds() && Instant::now() < this.deadline {
            Poll::Ready(Some(Ok(http_body::Frame::data(bytes))))
        } else {
            Poll::Ready(Some(Err(FencedAtSend)))
        }
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence_until(deadline: Instant, window: Duration) -> WriteFence {
        WriteFence::new(
            Arc::new(move || deadline.checked_duration_since(Instant::now())),
            window,
        )
    }

    #[tokio::test]
    async fn a_write_gets_the_window_at_most_and_none_once_too_little_is_left() {
        let fence = fence_until(
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(5),
        );
        assert_eq!(
            fence.admit(Duration::from_secs(30)).await,
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            fence.admit(Duration::from_millis(200)).await,
            Some(Duration::from_millis(200))
        );
        // 150 ms left, a write needs 1 s: no renewal comes, so it is never sent.
        let fence = fence_until(
            Instant::now() + Duration::from_millis(150),
            Duration::from_secs(1),
        );
        let started = Instant::now();
        assert_eq!(fence.admit(Duration::from_secs(30)).await, None);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    /// What a server receives of one POST whose body is fenced: read until the peer closes, or
    /// the whole request (head and `Content-Length` body) is in.
    async fn post_through(
        fence: WriteFence,
    ) -> (Result<reqwest::Response, reqwest::Error>, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/contacts", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let text = String::from_utf8_lossy(&received).to_string();
                if text.contains("\r\n\r\n{\"id\":1}") {
                    socket
                        .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    return text;
                }
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return text,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        });
        let body = FencedBody::new(
            Bytes::from_static(br#"{"id":1}"#),
            fence,
            Duration::from_secs(5),
        );
        let answer = reqwest::Client::new()
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(reqwest::Body::wrap(body))
            .send()
            .await;
        (answer, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_write_whose_lease_passed_before_its_connection_sent_it_never_leaves() {
        // Admitted, then the process froze; it thaws with the lease gone (no time left).
        let lost = WriteFence::new(Arc::new(|| None), Duration::from_secs(5));
        let (answer, received) = post_through(lost).await;
        let error = answer.expect_err("a refused body fails the request");
        assert!(FencedBody::refused(&error), "{error:?}");
        assert!(
            !received.contains(r#"{"id":1}"#),
            "the body reached the server: {received:?}"
        );

        let held = fence_until(
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(5),
        );
        let (answer, received) = post_through(held).await;
        assert_eq!(answer.unwrap().status(), 201);
        assert!(
            received.to_ascii_lowercase().contains("content-length: 8"),
            "{received:?}"
        );
    }
}
