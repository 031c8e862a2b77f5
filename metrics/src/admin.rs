//! The admin HTTP endpoint: `GET /metrics`, `GET /stats`, `GET /healthz` on its own OS thread,
//! away from the shards.
//!
//! Owns: the listener, a minimal HTTP/1.1 request reader with hard limits, and routing.
//! Must never: run on or block a shard thread, panic on any bytes a peer sends, read more than
//! [`REQUEST_HEAD_BYTES_MAX`] from a connection, hold a connection longer than
//! [`CONNECTION_DEADLINE`], or serve more than [`CONNECTIONS_MAX`] peers at once.
//!
//! Every response closes the connection (`Connection: close`): scrapes are once a second at
//! most, so keep-alive would only add state to get wrong.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::snapshot::MetricsSnapshot;

/// Largest request head (request line plus headers) read before answering 431.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Longest a peer may take to send its request and read the response.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served concurrently; more are answered 503 at once and closed.
pub const CONNECTIONS_MAX: usize = 16;

/// Gathers a merged snapshot from every shard. It runs on an admin thread, so it may block,
/// but it must be bounded in time (the broker's implementation should give up on a shard that
/// does not answer and return an error naming it).
pub type Collect = Arc<dyn Fn() -> Result<MetricsSnapshot, String> + Send + Sync>;

/// A running admin endpoint. Dropping it stops the accept loop and waits for it.
pub struct AdminServer {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port) and serves on a new thread named
    /// `sluice-admin`. Errors carry the address that could not be bound.
    pub fn start(addr: SocketAddr, collect: Collect) -> io::Result<AdminServer> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("binding admin endpoint {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let accept_thread = std::thread::Builder::new()
            .name("sluice-admin".to_string())
            .spawn({
                let stopping = Arc::clone(&stopping);
                move || accept_loop(listener, collect, stopping)
            })
            .map_err(|e| io::Error::new(e.kind(), format!("spawning admin thread: {e}")))?;
        tracing::info!(%local_addr, "admin endpoint serving /metrics, /stats, /healthz");
        Ok(AdminServer {
            local_addr,
            stopping,
            accept_thread: Some(accept_thread),
        })
    }

    /// The bound address (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for the accept thread. Connections being served finish on
    /// their own threads within [`CONNECTION_DEADLINE`].
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a connection of our own.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if self.accept_thread.is_some() {
            self.stop();
        }
    }
}

fn accept_loop(listener: TcpListener, collect: Collect, stopping: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on a failing accept.
                tracing::warn!(error = %e, "admin endpoint accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = write_response(
                &mut stream,
                &Response::text(503, "too many admin connections\n"),
            );
            continue;
        }
        let collect = Arc::clone(&collect);
        let guard = ActiveGuard(Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("sluice-admin-conn".to_string())
            .spawn(move || {
                let _guard = guard;
                if let Err(e) = serve(&mut stream, &collect) {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "admin endpoint could not spawn a connection thread");
        }
    }
}

/// Decrements the live-connection count however a connection thread ends.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(stream: &mut TcpStream, collect: &Collect) -> io::Result<()> {
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    stream.set_write_timeout(Some(CONNECTION_DEADLINE))?;
    let response = match read_head(stream, deadline)? {
        Head::Complete(head) => respond(&head, collect),
        Head::TooLarge => Response::text(431, "request head too large\n"),
        Head::Closed => return Ok(()),
    };
    write_response(stream, &response)?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends the request head, the size limit, or the deadline.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin request deadline passed",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(if head.is_empty() {
                Head::Closed
            } else {
                Head::Complete(head)
            });
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&head) {
            head.truncate(end);
            return Ok(Head::Complete(head));
        }
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            return Ok(Head::TooLarge);
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

/// A response about to be written.
#[derive(Debug, PartialEq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
    pub(crate) head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            head_only: false,
        }
    }
}

/// Routes one request head. Pure apart from calling `collect`, so it is unit-testable.
pub(crate) fn respond(head: &[u8], collect: &Collect) -> Response {
    let Ok(text) = std::str::from_utf8(head) else {
        return Response::text(400, "request head is not UTF-8\n");
    };
    let request_line = text.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(505, "only HTTP/1.x is served\n");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Response::text(405, "only GET and HEAD are served\n"),
    };
    let path = target.split('?').next().unwrap_or_default();
    let mut response = match path {
        "/healthz" => Response::text(200, "ok\n"),
        "/metrics" => match collect() {
            Ok(snapshot) => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: snapshot.to_prometheus().into_bytes(),
                head_only: false,
            },
            Err(e) => Response::text(
                503,
                &format!("collecting metrics from shards failed: {e}\n"),
            ),
        },
        "/stats" => match collect() {
            Ok(snapshot) => Response {
                status: 200,
                content_type: "application/json",
                body: format!("{}\n", snapshot.to_json()).into_bytes(),
                head_only: false,
            },
            Err(e) => Response::text(
                503,
                &format!("collecting metrics from shards failed: {e}\n"),
            ),
        },
        _ => Response::text(404, "not found; try /metrics, /stats or /healthz\n"),
    };
    response.head_only = head_only;
    response
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn write_response(stream: &mut TcpStream, response: &Response) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    if response.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes())?;
    if !response.head_only {
        stream.write_all(&response.body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_collect() -> Collect {
        Arc::new(|| Ok(MetricsSnapshot::empty()))
    }

    #[test]
    fn routes() {
        let c = ok_collect();
        assert_eq!(respond(b"GET /healthz HTTP/1.1\r\nHost: x", &c).status, 200);
        assert_eq!(respond(b"GET /metrics?x=1 HTTP/1.0", &c).status, 200);
        assert_eq!(
            respond(b"GET /stats HTTP/1.1", &c).content_type,
            "application/json"
        );
        assert_eq!(respond(b"GET /nope HTTP/1.1", &c).status, 404);
        assert_eq!(respond(b"POST /metrics HTTP/1.1", &c).status, 405);
        assert_eq!(respond(b"GET /metrics HTTP/2", &c).status, 505);
        assert_eq!(respond(b"GET /metrics", &c).status, 400);
        assert_eq!(respond(b"\xff\xfe", &c).status, 400);
        assert_eq!(respond(b"", &c).status, 400);
        let head = respond(b"HEAD /metrics HTTP/1.1", &c);
        assert!(head.head_only && head.status == 200);
    }

    #[test]
    fn collector_failure_is_503_with_its_reason() {
        let failing: Collect = Arc::new(|| Err("shard 3 did not answer in 2s".to_string()));
        let r = respond(b"GET /stats HTTP/1.1", &failing);
        assert_eq!(r.status, 503);
        assert!(String::from_utf8_lossy(&r.body).contains("shard 3 did not answer"));
    }
}
