//! One TCP connection to one broker: request framing, correlation ids, pipelining and the
//! ApiVersions handshake that fixes which version of each API this connection speaks.
//!
//! Many requests may be in flight at once: a caller [`Connection::submit`]s a request (the frame
//! is written under a short writer lock, its correlation id registered *before* the write so a
//! fast reply cannot race the registration) and later awaits the [`Pending`] answer. One reader
//! task matches response frames to callers by correlation id. This module must never block the
//! runtime, never trust a length prefix beyond `response_bytes_max`, and never leave a caller
//! waiting after the socket dies: the reader fails every pending request when it stops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::error::{ClientError, Result};
use crate::security::{self, Security};
use crate::versions::{api_name, VersionTable};

/// How a connection behaves. Every limit is explicit.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The client id sent in every request header.
    pub client_id: String,
    /// Deadline for the TCP connect.
    pub connect_timeout: Duration,
    /// Deadline for each request's answer.
    pub request_timeout: Duration,
    /// Largest response frame accepted; anything larger closes the connection.
    pub response_bytes_max: usize,
    /// TLS and a SASL login (None: PLAINTEXT).
    pub security: Option<Arc<Security>>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            client_id: "sluice".to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            response_bytes_max: 512 << 20,
            security: None,
        }
    }
}

type Waiter = oneshot::Sender<std::result::Result<Bytes, String>>;

/// State shared between callers and the reader task.
struct Shared {
    pending: Mutex<HashMap<i32, Waiter>>,
    /// Set once, by the reader, when the socket stops; later submits fail fast with it.
    closed_reason: Mutex<Option<String>>,
}

impl Shared {
    fn fail_all(&self, reason: &str) {
        if let Ok(mut closed) = self.closed_reason.lock() {
            if closed.is_none() {
                *closed = Some(reason.to_owned());
            }
        }
        let waiters: Vec<Waiter> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().map(|(_, w)| w).collect(),
            Err(_) => Vec::new(),
        };
        for waiter in waiters {
            let _ = waiter.send(Err(reason.to_owned()));
        }
    }
}

/// A connection to one broker with its negotiated API versions.
pub struct Connection {
    addr: String,
    options: ConnectOptions,
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<Writer>,
    next_correlation_id: AtomicI32,
    versions: VersionTable,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// An answer still on its way; await it with [`Pending::wait`].
pub struct Pending<R> {
    api: &'static str,
    version: i16,
    api_key: ApiKey,
    addr: String,
    timeout: Duration,
    rx: oneshot::Receiver<std::result::Result<Bytes, String>>,
    correlation_id: i32,
    shared: Arc<Shared>,
    _marker: std::marker::PhantomData<R>,
}

impl<R: Decodable> Pending<R> {
    /// The API version the request was sent with.
    pub fn version(&self) -> i16 {
        self.version
    }

    /// Waits for the response and decodes it.
    pub async fn wait(self) -> Result<R> {
        let frame = match tokio::time::timeout(self.timeout, self.rx).await {
            Ok(Ok(Ok(frame))) => frame,
            Ok(Ok(Err(reason))) => {
                return Err(ClientError::Disconnected {
                    addr: self.addr,
                    reason,
                })
            }
            Ok(Err(_)) => {
                return Err(ClientError::Disconnected {
                    addr: self.addr,
                    reason: "reader task stopped".to_owned(),
                })
            }
            Err(_) => {
                if let Ok(mut pending) = self.shared.pending.lock() {
                    pending.remove(&self.correlation_id);
                }
                return Err(ClientError::Timeout {
                    api: self.api,
                    addr: self.addr,
                    timeout_ms: self.timeout.as_millis() as u64,
                });
            }
        };
        decode_response::<R>(frame, self.api_key, self.version, self.api)
    }
}

fn decode_response<R: Decodable>(
    mut frame: Bytes,
    api_key: ApiKey,
    version: i16,
    api: &'static str,
) -> Result<R> {
    let protocol = |message: String| ClientError::Protocol {
        api,
        version,
        message,
    };
    ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
        .map_err(|e| protocol(format!("bad response header: {e:#}")))?;
    R::decode(&mut frame, version).map_err(|e| protocol(format!("bad response body: {e:#}")))
}

impl Connection {
    /// Opens a connection, negotiates API versions and, if asked, logs in with SASL.
    pub async fn connect(addr: &str, options: &ConnectOptions) -> Result<Connection> {
        let conn = Self::negotiated(addr, options).await?;
        if let Some(login) = options.security.as_ref().and_then(|s| s.sasl.as_ref()) {
            security::login(&conn, login).await?;
        }
        Ok(conn)
    }

    async fn negotiated(addr: &str, options: &ConnectOptions) -> Result<Connection> {
        let mut conn = Self::open(addr, options, VersionTable::bootstrap()).await?;
        match conn.negotiate(3).await {
            Ok(versions) => {
                conn.versions = versions;
                Ok(conn)
            }
            Err(ClientError::Disconnected { .. }) => {
                // Brokers older than flexible ApiVersions close the socket on v3: retry with v0.
                drop(conn);
                let mut conn = Self::open(addr, options, VersionTable::bootstrap()).await?;
                conn.versions = conn.negotiate(0).await?;
                Ok(conn)
            }
            Err(e) => Err(e),
        }
    }

    async fn open(addr: &str, options: &ConnectOptions, versions: VersionTable) -> Result<Self> {
        let io_err = |source| ClientError::Io {
            addr: addr.to_owned(),
            source,
        };
        let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                io_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connect timed out after {} ms",
                        options.connect_timeout.as_millis()
                    ),
                ))
            })?
            .map_err(io_err)?;
        stream.set_nodelay(true).map_err(io_err)?;
        // Plain TCP splits without a lock; a TLS stream needs tokio's locked split.
        let (read_half, write_half): (Reader, Writer) =
            match options.security.as_ref().filter(|s| s.tls.is_some()) {
                None => {
                    let (read_half, write_half) = stream.into_split();
                    (Box::new(read_half), Box::new(write_half))
                }
                Some(security) => {
                    let tls = security::wrap(stream, addr, Some(security)).await?;
                    let (read_half, write_half) = tokio::io::split(tls);
                    (Box::new(read_half), Box::new(write_half))
                }
            };
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed_reason: Mutex::new(None),
        });
        let reader = tokio::spawn(read_loop(
            read_half,
            Arc::clone(&shared),
            options.response_bytes_max,
        ));
        Ok(Connection {
            addr: addr.to_owned(),
            options: options.clone(),
            shared,
            writer: tokio::sync::Mutex::new(write_half),
            next_correlation_id: AtomicI32::new(1),
            versions,
            reader,
        })
    }

    async fn negotiate(&self, version: i16) -> Result<VersionTable> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sluice-client"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let frame = self
            .submit_raw(&request, ApiKey::ApiVersions, version, true)
            .await?;
        let mut frame = frame.ok_or_else(missing_handle)?.wait_frame().await?;
        let protocol = |message: String| ClientError::Protocol {
            api: "ApiVersions",
            version,
            message,
        };
        ResponseHeader::decode(&mut frame, 0)
            .map_err(|e| protocol(format!("bad response header: {e:#}")))?;
        // Every ApiVersions response starts with its error code; on UNSUPPORTED_VERSION the
        // broker answers in v0 layout regardless of what we asked for.
        if frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == 35 && version > 0 {
            let response = ApiVersionsResponse::decode(&mut frame, 0)
                .map_err(|e| protocol(format!("bad v0 fallback body: {e:#}")))?;
            let broker_max = response
                .api_keys
                .iter()
                .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                .map(|k| k.max_version)
                .unwrap_or(0);
            let retry = broker_max.clamp(0, version - 1);
            return Box::pin(self.negotiate(retry)).await;
        }
        let response = ApiVersionsResponse::decode(&mut frame, version)
            .map_err(|e| protocol(format!("bad response body: {e:#}")))?;
        ClientError::check(response.error_code, || {
            format!("ApiVersions from {}", self.addr)
        })?;
        Ok(VersionTable::from_response(&response))
    }

    /// The broker address this connection talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The negotiated version table.
    pub fn versions(&self) -> &VersionTable {
        &self.versions
    }

    /// Whether the reader has seen the socket close.
    pub fn is_closed(&self) -> bool {
        self.shared
            .closed_reason
            .lock()
            .map(|r| r.is_some())
            .unwrap_or(true)
    }

    /// The version this connection uses for request type `R`.
    pub fn version_for<R: Request>(&self) -> Result<i16> {
        self.versions.pick::<R>(&self.addr)
    }

    /// Sends a request and waits for its answer.
    pub async fn send<R: Request>(&self, request: &R) -> Result<R::Response> {
        self.submit(request).await?.wait().await
    }

    /// Like [`Connection::send`] with an explicit version.
    pub async fn send_versioned<R: Request>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<R::Response> {
        self.submit_versioned(request, version).await?.wait().await
    }

    /// Writes a request and returns a handle to await its answer, so several can be in flight.
    pub async fn submit<R: Request>(&self, request: &R) -> Result<Pending<R::Response>> {
        let version = self.version_for::<R>()?;
        self.submit_versioned(request, version).await
    }

    /// Like [`Connection::submit`] with an explicit version.
    pub async fn submit_versioned<R: Request>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<Pending<R::Response>> {
        let api_key = api_key_of::<R>()?;
        let raw = self
            .submit_raw(request, api_key, version, true)
            .await?
            .ok_or_else(missing_handle)?;
        Ok(raw.typed(api_key, version))
    }

    /// Writes a request the broker will not answer (Produce with acks=0).
    pub async fn send_no_response<R: Request>(&self, request: &R) -> Result<()> {
        let api_key = api_key_of::<R>()?;
        let version = self.version_for::<R>()?;
        self.submit_raw(request, api_key, version, false)
            .await
            .map(|_| ())
    }

    async fn submit_raw<M: Encodable + HeaderVersion>(
        &self,
        request: &M,
        api_key: ApiKey,
        version: i16,
        expect_response: bool,
    ) -> Result<Option<RawPending>> {
        let api = api_name(api_key as i16);
        self.ensure_open()?;
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(
            request,
            api_key,
            version,
            correlation_id,
            &self.options.client_id,
        )
        .map_err(|message| ClientError::Protocol {
            api,
            version,
            message,
        })?;
        self.write_frame(api, correlation_id, vec![frame], expect_response)
            .await
    }

    /// Writes a Produce request framed around its batches (no copy of them, a vectored
    /// write; [`crate::produce_frame`]) and returns a handle to await its answer, or `None`
    /// with acks=0. Versions the framer does not write fall back to the generic encoder.
    pub async fn submit_produce(
        &self,
        fields: &crate::produce_frame::ProduceFields<'_>,
    ) -> Result<Option<Pending<ProduceResponse>>> {
        let version = self.version_for::<ProduceRequest>()?;
        let expect_response = fields.acks != crate::producer::Acks::None;
        if !crate::produce_frame::VERSIONS.contains(&version) {
            let mut request = crate::producer::build_produce_request(
                fields.topic,
                fields.batches.to_vec(),
                fields.acks,
                fields.timeout_ms,
            );
            request.transactional_id = fields
                .transactional_id
                .map(|id| TransactionalId(StrBytes::from_string(id.to_owned())));
            if !expect_response {
                self.send_no_response(&request).await?;
                return Ok(None);
            }
            return self.submit(&request).await.map(Some);
        }
        self.ensure_open()?;
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let parts = crate::produce_frame::frame_parts(
            version,
            correlation_id,
            &self.options.client_id,
            fields,
        )
        .map_err(|message| ClientError::Protocol {
            api: "Produce",
            version,
            message,
        })?;
        let raw = self
            .write_frame("Produce", correlation_id, parts, expect_response)
            .await?;
        Ok(raw.map(|raw| raw.typed(ApiKey::Produce, version)))
    }

    /// Fails fast with the reason the connection closed, once it has.
    fn ensure_open(&self) -> Result<()> {
        if let Ok(closed) = self.shared.closed_reason.lock() {
            if let Some(reason) = closed.as_ref() {
                return Err(ClientError::Disconnected {
                    addr: self.addr.clone(),
                    reason: reason.clone(),
                });
            }
        }
        Ok(())
    }

    /// Registers the response waiter (when one is expected) and writes the frame's parts in
    /// order, vectored where the stream supports it.
    async fn write_frame(
        &self,
        api: &'static str,
        correlation_id: i32,
        parts: Vec<Bytes>,
        expect_response: bool,
    ) -> Result<Option<RawPending>> {
        let rx = if expect_response {
            let (tx, rx) = oneshot::channel();
            if let Ok(mut pending) = self.shared.pending.lock() {
                pending.insert(correlation_id, tx);
            }
            Some(rx)
        } else {
            None
        };
        let frame_bytes: usize = parts.iter().map(Bytes::len).sum();
        let mut frame = FrameParts::new(parts);
        // Writing (and waiting for the writer) counts against the request timeout, as in
        // Kafka's clients: a broker that stops reading the socket must not hold a caller
        // forever. A frame cut off part-way leaves the stream unusable, so a timed-out write
        // closes the connection for every caller.
        let write_result = tokio::time::timeout(self.options.request_timeout, async {
            let mut writer = self.writer.lock().await;
            writer.write_all_buf(&mut frame).await
        })
        .await
        .unwrap_or_else(|_| {
            let reason = format!(
                "a {frame_bytes}-byte {api} request could not be written within the {} ms \
                 request timeout (the broker is not reading); closing the connection",
                self.options.request_timeout.as_millis()
            );
            self.shared.fail_all(&reason);
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, reason))
        });
        if let Err(source) = write_result {
            if let Ok(mut pending) = self.shared.pending.lock() {
                pending.remove(&correlation_id);
            }
            return Err(ClientError::Io {
                addr: self.addr.clone(),
                source,
            });
        }
        Ok(rx.map(|rx| RawPending {
            api,
            addr: self.addr.clone(),
            timeout: self.options.request_timeout,
            rx,
            correlation_id,
            shared: Arc::clone(&self.shared),
        }))
    }
}

/// A frame as the pieces to write in order (a `Buf` over them, so the write is vectored).
struct FrameParts {
    parts: std::collections::VecDeque<Bytes>,
    /// Bytes not yet written (kept, not summed per call: a request to 1,000 partitions has
    /// 2,000 parts, and the write loop asks once per writev).
    remaining: usize,
}

impl FrameParts {
    fn new(parts: Vec<Bytes>) -> FrameParts {
        let parts: std::collections::VecDeque<Bytes> =
            parts.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = parts.iter().map(Bytes::len).sum();
        FrameParts { parts, remaining }
    }
}

impl Buf for FrameParts {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| &p[..])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = std::io::IoSlice::new(part);
            filled += 1;
        }
        filled
    }

    fn advance(&mut self, mut count: usize) {
        self.remaining = self.remaining.saturating_sub(count);
        while count > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if count < front.len() {
                front.advance(count);
                return;
            }
            count -= front.len();
            self.parts.pop_front();
        }
    }
}

fn missing_handle() -> ClientError {
    // submit_raw returns Some whenever expect_response is true; this path is never taken.
    ClientError::Invalid("internal: no response handle for a request that expects one".into())
}

struct RawPending {
    api: &'static str,
    addr: String,
    timeout: Duration,
    rx: oneshot::Receiver<std::result::Result<Bytes, String>>,
    correlation_id: i32,
    shared: Arc<Shared>,
}

impl RawPending {
    /// The handle a caller awaits for a decoded `R`.
    fn typed<R>(self, api_key: ApiKey, version: i16) -> Pending<R> {
        Pending {
            api: self.api,
            version,
            api_key,
            addr: self.addr,
            timeout: self.timeout,
            rx: self.rx,
            correlation_id: self.correlation_id,
            shared: self.shared,
            _marker: std::marker::PhantomData,
        }
    }
}

impl RawPending {
    async fn wait_frame(self) -> Result<Bytes> {
        match tokio::time::timeout(self.timeout, self.rx).await {
            Ok(Ok(Ok(frame))) => Ok(frame),
            Ok(Ok(Err(reason))) => Err(ClientError::Disconnected {
                addr: self.addr,
                reason,
            }),
            Ok(Err(_)) => Err(ClientError::Disconnected {
                addr: self.addr,
                reason: "reader task stopped".to_owned(),
            }),
            Err(_) => {
                if let Ok(mut pending) = self.shared.pending.lock() {
                    pending.remove(&self.correlation_id);
                }
                Err(ClientError::Timeout {
                    api: self.api,
                    addr: self.addr,
                    timeout_ms: self.timeout.as_millis() as u64,
                })
            }
        }
    }
}

fn api_key_of<R: Request>() -> Result<ApiKey> {
    ApiKey::try_from(R::KEY)
        .map_err(|_| ClientError::Invalid(format!("unknown API key {}", R::KEY)))
}

/// Encodes `[size][header][body]` into one buffer.
pub(crate) fn encode_frame<M: Encodable>(
    request: &M,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> std::result::Result<Bytes, String> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let header_version = api_key.request_header_version(version);
    let header_size = header
        .compute_size(header_version)
        .map_err(|e| format!("header size: {e:#}"))?;
    let body_size = request
        .compute_size(version)
        .map_err(|e| format!("body size: {e:#}"))?;
    let frame_size = header_size + body_size;
    let frame_size_i32 = i32::try_from(frame_size)
        .map_err(|_| format!("request of {frame_size} bytes too large"))?;
    let mut buf = BytesMut::with_capacity(4 + frame_size);
    buf.put_i32(frame_size_i32);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| format!("encode header: {e:#}"))?;
    request
        .encode(&mut buf, version)
        .map_err(|e| format!("encode body: {e:#}"))?;
    debug_assert_eq!(buf.len(), 4 + frame_size);
    Ok(buf.freeze())
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

async fn read_loop(read_half: Reader, shared: Arc<Shared>, response_bytes_max: usize) {
    let mut reader = BufReader::with_capacity(256 << 10, read_half);
    // Frames are cut from one receive buffer. Once a caller drops its frame, `reserve` takes
    // the same allocation back, so a consumer that keeps up reads every response into memory
    // that is already mapped and warm in cache (a fresh zeroed buffer per response cost more
    // than the kernel's copy into it).
    let mut receive = BytesMut::new();
    let reason = loop {
        let size = match reader.read_i32().await {
            Ok(size) => size,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break "broker closed the connection".to_owned()
            }
            Err(e) => break format!("read failed: {e}"),
        };
        let size = match usize::try_from(size) {
            Ok(size) if (4..=response_bytes_max).contains(&size) => size,
            _ => {
                break format!(
                    "response frame size {size} outside 4..={response_bytes_max}; closing"
                )
            }
        };
        receive.clear();
        receive.reserve(size);
        if let Err(e) = read_to_len(&mut reader, &mut receive, size).await {
            break format!("read of a {size}-byte frame failed: {e}");
        }
        let frame = receive.split_to(size).freeze();
        let correlation_id = (&frame[..4]).get_i32();
        let waiter = match shared.pending.lock() {
            Ok(mut pending) => pending.remove(&correlation_id),
            Err(_) => break "pending table poisoned".to_owned(),
        };
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(Ok(frame));
            }
            None => tracing::debug!(
                correlation_id,
                "response for a request nobody waits for (timed out?)"
            ),
        }
    };
    shared.fail_all(&reason);
}

/// Reads from `reader` until `buf` holds `len` bytes (into its spare capacity, no zeroing).
async fn read_to_len(
    reader: &mut BufReader<Reader>,
    buf: &mut BytesMut,
    len: usize,
) -> std::io::Result<()> {
    while buf.len() < len {
        let want = (len - buf.len()) as u64;
        if (&mut *reader).take(want).read_buf(buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "broker closed the connection mid-frame",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;

    #[test]
    fn frame_has_size_prefix_and_header() {
        let frame = encode_frame(&MetadataRequest::default(), ApiKey::Metadata, 1, 42, "cli")
            .map_err(|e| e.to_string());
        let frame = match frame {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        let mut cursor = &frame[..];
        assert_eq!(cursor.get_i32() as usize, frame.len() - 4);
        assert_eq!(cursor.get_i16(), 3); // api key
        assert_eq!(cursor.get_i16(), 1); // version
        assert_eq!(cursor.get_i32(), 42); // correlation id
        assert_eq!(cursor.get_i16(), 3); // client id length
        assert_eq!(&cursor[..3], b"cli");
    }

    /// A fake broker on loopback that answers requests out of order proves that responses are
    /// matched by correlation id, not by arrival order.
    #[tokio::test]
    async fn pipelined_responses_match_by_correlation_id() {
        use kafka_protocol::messages::api_versions_response::ApiVersion;
        use kafka_protocol::messages::{MetadataResponse, ResponseHeader};
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tokio::spawn(async move {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let read_request = async |sock: &mut TcpStream| -> Option<(i16, i16, i32)> {
                let size = sock.read_i32().await.ok()?;
                let mut buf = vec![0u8; size as usize];
                sock.read_exact(&mut buf).await.ok()?;
                let mut c = &buf[..];
                Some((c.get_i16(), c.get_i16(), c.get_i32()))
            };
            let write_response = async |sock: &mut TcpStream, body: BytesMut, id: i32, hv: i16| {
                let mut out = BytesMut::new();
                let header = ResponseHeader::default().with_correlation_id(id);
                let mut hb = BytesMut::new();
                let _ = header.encode(&mut hb, hv);
                out.put_i32((hb.len() + body.len()) as i32);
                out.extend_from_slice(&hb);
                out.extend_from_slice(&body);
                let _ = sock.write_all(&out).await;
            };
            // ApiVersions: advertise Metadata v0..=1 only.
            let Some((_, version, id)) = read_request(&mut sock).await else {
                return;
            };
            let response = ApiVersionsResponse::default().with_api_keys(vec![
                ApiVersion::default()
                    .with_api_key(18)
                    .with_min_version(0)
                    .with_max_version(3),
                ApiVersion::default()
                    .with_api_key(3)
                    .with_min_version(0)
                    .with_max_version(1),
            ]);
            let mut body = BytesMut::new();
            let _ = response.encode(&mut body, version);
            write_response(&mut sock, body, id, 0).await;
            // Two metadata requests; answer the second first, tagging controller_id with the id.
            let Some((_, v1, id1)) = read_request(&mut sock).await else {
                return;
            };
            let Some((_, v2, id2)) = read_request(&mut sock).await else {
                return;
            };
            for (v, id) in [(v2, id2), (v1, id1)] {
                let mut body = BytesMut::new();
                let _ = MetadataResponse::default()
                    .with_controller_id(kafka_protocol::messages::BrokerId(id))
                    .encode(&mut body, v);
                write_response(&mut sock, body, id, 0).await;
            }
        });
        let conn = match Connection::connect(&addr, &ConnectOptions::default()).await {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}"),
        };
        assert_eq!(conn.version_for::<MetadataRequest>().ok(), Some(1));
        let first = conn.submit(&MetadataRequest::default()).await;
        let second = conn.submit(&MetadataRequest::default()).await;
        let (Ok(first), Ok(second)) = (first, second) else {
            panic!("submit failed")
        };
        let (Ok(first), Ok(second)) = (first.wait().await, second.wait().await) else {
            panic!("wait failed")
        };
        assert_eq!(first.controller_id.0, 2);
        assert_eq!(second.controller_id.0, 3);
    }
}

#[cfg(test)]
mod frame_size_tests {
    use super::*;
    use crate::producer::{build_produce_request, Acks};
    use crate::records::{encode_batch, ProduceRecord};
    use kafka_protocol::messages::ProduceRequest;

    /// A large produce request's size prefix must equal the bytes that follow it, and the body
    /// must decode back to the same batch (guards the size arithmetic for big frames).
    #[test]
    fn large_produce_frame_is_self_consistent() {
        let records: Vec<ProduceRecord> = (0..5000)
            .map(|_| ProduceRecord {
                value: Some(Bytes::from(vec![b'x'; 100])),
                ..ProduceRecord::default()
            })
            .collect();
        let batch =
            encode_batch(&records, kafka_protocol::records::Compression::None).unwrap_or_default();
        for version in [3i16, 7, 8, 9] {
            let request = build_produce_request("t", vec![(0, batch.clone())], Acks::All, 1000);
            let frame =
                encode_frame(&request, ApiKey::Produce, version, 7, "c").unwrap_or_default();
            let declared = (&frame[..4]).get_i32() as usize;
            assert_eq!(declared, frame.len() - 4, "v{version}");
            let mut body = frame.slice(4..);
            let header = kafka_protocol::protocol::decode_request_header_from_buffer(&mut body);
            assert!(header.is_ok(), "v{version}");
            let decoded = ProduceRequest::decode(&mut body, version);
            let records = decoded
                .ok()
                .and_then(|r| r.topic_data[0].partition_data[0].records.clone());
            assert_eq!(
                records.as_ref().map(|b| b.len()),
                Some(batch.len()),
                "v{version}"
            );
            assert!(
                body.is_empty(),
                "v{version}: {} bytes left over",
                body.len()
            );
        }
    }
}

#[cfg(test)]
mod frame_parts_tests {
    use super::*;

    #[test]
    fn parts_are_offered_vectored_and_advance_across_part_boundaries() {
        let mut frame = FrameParts::new(vec![
            Bytes::from_static(b"head"),
            Bytes::new(),
            Bytes::from_static(b"batch-one"),
            Bytes::from_static(b"tail"),
        ]);
        assert_eq!(frame.remaining(), 17);
        let mut slices = [std::io::IoSlice::new(&[]); 8];
        assert_eq!(
            frame.chunks_vectored(&mut slices),
            3,
            "the empty part is dropped"
        );
        assert_eq!(&*slices[1], b"batch-one");
        // A short write ending inside the second part.
        frame.advance(6);
        assert_eq!(frame.remaining(), 11);
        assert_eq!(frame.chunk(), b"tch-one");
        let mut rest = Vec::new();
        while frame.has_remaining() {
            let chunk = frame.chunk().to_vec();
            rest.extend_from_slice(&chunk);
            frame.advance(chunk.len());
        }
        assert_eq!(rest, b"tch-onetail");
        assert_eq!(frame.remaining(), 0);
        assert_eq!(frame.chunk(), b"");
    }
}
