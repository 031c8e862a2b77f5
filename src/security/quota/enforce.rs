//! The quota flow of one request: which entity's quotas govern it (the Session's principal
//! and the header's client id), the measurements it adds (Produce request bytes, handler time
//! on the shard thread, Fetch response bytes, partition mutations), the `throttle_time_ms` its
//! response carries, and how long its connection then stays muted.
//!
//! Owns the decisions per request; must never do anything, nor allocate, when the cluster
//! metadata holds no quota (one check of the published snapshot), and never delay a response:
//! a throttled client is answered at once and its connection is not read until the throttle
//! time has passed (KIP-219).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sluice_net::connection::Response;
use sluice_net::header::RequestHeader;

use super::configs::MeasuredEntity;
use super::{throttle, ClientQuotas, QuotaKind, QuotaManager};
use crate::security::Session;
use crate::shard::Shard;

/// APIs Kafka never throttles on request time: the handshake a client needs before it can
/// even learn it is throttled.
fn request_time_exempt(api_key: i16) -> bool {
    matches!(api_key, 17 | 18 | 36)
}

/// The quota of `kind` that governs this session and client id, if any.
fn governing(
    quotas: &ClientQuotas,
    kind: QuotaKind,
    session: &Session,
    header: &RequestHeader,
) -> Option<(f64, MeasuredEntity)> {
    if !quotas.has(kind) {
        return None;
    }
    let principal = session.principal();
    let client_id = header
        .client_id
        .as_ref()
        .map(|id| String::from_utf8_lossy(id))
        .unwrap_or_default();
    quotas.resolve(kind, &principal.name, &client_id)
}

/// What one request is measured against; None (the common case) when no quota exists.
///
/// Produce bytes are recorded when the request is handed on ([`RequestCharge::begin`]), in
/// arrival order, not when it is answered: a client pipelines its Produce requests, and a
/// throttle found only after the append would leave every request already read to go
/// through unthrottled (Kafka reads one request per connection at a time, so there the two
/// are the same).
pub struct RequestCharge {
    manager: Rc<QuotaManager>,
    /// The produce throttle found at arrival.
    produce_throttle_ms: u64,
    request: Option<(f64, MeasuredEntity)>,
    /// Handler time on this shard's thread, when a request quota applies.
    handler_ns: Rc<Cell<u64>>,
}

impl RequestCharge {
    /// The charge for a request of `request_bytes` (a Produce's bytes are recorded now), or
    /// None when the cluster metadata has no quota at all.
    pub fn begin(
        shard: &Shard,
        session: &Session,
        header: &RequestHeader,
        request_bytes: u64,
    ) -> Option<RequestCharge> {
        // Every request passes here: without quotas, a peek at the published snapshot that
        // does not touch its shared reference count.
        if !shard.metadata.has_client_quotas() {
            return None;
        }
        let snapshot = shard.metadata.load();
        let quotas = &snapshot.client_quotas;
        let produce_throttle_ms = if header.api_key == 0 {
            governing(quotas, QuotaKind::Produce, session, header).map_or(0, |(bound, entity)| {
                shard
                    .quotas
                    .record(QuotaKind::Produce, &entity, bound, request_bytes as f64)
            })
        } else {
            0
        };
        let request = if request_time_exempt(header.api_key) {
            None
        } else {
            governing(quotas, QuotaKind::Request, session, header)
        };
        Some(RequestCharge {
            manager: shard.quotas.clone(),
            produce_throttle_ms,
            request,
            handler_ns: Rc::new(Cell::new(0)),
        })
    }

    /// The throttle the request's Produce bytes called for at arrival (the connection is
    /// muted from then on, so requests read behind it wait).
    pub fn arrival_throttle_ms(&self) -> u64 {
        self.produce_throttle_ms
    }

    /// Wraps the handler's future so the time spent polling it (the work it does on this
    /// shard's thread, not its waits) is measured, when a request quota applies.
    pub fn timed<F: Future + 'static>(
        &self,
        handler: F,
    ) -> Pin<Box<dyn Future<Output = F::Output>>> {
        if self.request.is_none() {
            return Box::pin(handler);
        }
        Box::pin(Timed {
            inner: Box::pin(handler),
            spent_ns: self.handler_ns.clone(),
        })
    }

    /// Records what the request used, sets the response's `throttle_time_ms` to the largest
    /// throttle any quota calls for, and returns that throttle time (0: not throttled).
    pub fn finish<R>(self, header: &RequestHeader, response: &mut Response<R>) -> u64 {
        let carried = throttle::carried_ms(header, response).max(0) as u64;
        let mut throttle_ms = carried.max(self.produce_throttle_ms);
        if let Some((bound, entity)) = &self.request {
            // Kafka's unit: percent of one thread, so a second of thread time is 100.
            let percent_seconds = self.handler_ns.get() as f64 * 100.0 / 1e9;
            let ms = self
                .manager
                .record(QuotaKind::Request, entity, *bound, percent_seconds);
            throttle_ms = throttle_ms.max(ms);
        }
        if throttle_ms > carried {
            throttle::set_ms(
                header,
                response,
                i32::try_from(throttle_ms).unwrap_or(i32::MAX),
            );
        }
        throttle_ms
    }
}

/// A future whose poll time is added up.
struct Timed<F: ?Sized> {
    inner: Pin<Box<F>>,
    spent_ns: Rc<Cell<u64>>,
}

impl<F: Future + ?Sized> Future for Timed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = Instant::now();
        let polled = self.inner.as_mut().poll(cx);
        let spent = started.elapsed().as_nanos() as u64;
        self.spent_ns.set(self.spent_ns.get().saturating_add(spent));
        polled
    }
}

/// The mute of one connection: the broker reads no request from it before this instant.
#[derive(Debug, Default)]
pub struct Mute {
    until: Cell<Option<Instant>>,
}

impl Mute {
    /// Extends the mute to `throttle_ms` from now.
    pub fn throttle(&self, throttle_ms: u64) {
        if throttle_ms == 0 {
            return;
        }
        let until = Instant::now() + Duration::from_millis(throttle_ms);
        if self.until.get().is_none_or(|current| current < until) {
            self.until.set(Some(until));
        }
    }

    /// Until when the connection is muted, if it is now.
    pub fn until(&self) -> Option<Instant> {
        let until = self.until.get()?;
        if until <= Instant::now() {
            self.until.set(None);
            return None;
        }
        Some(until)
    }
}

/// A consumer's Fetch under `consumer_byte_rate`: the byte cap it gets, and the recording of
/// what it returns.
pub struct FetchCharge {
    manager: Rc<QuotaManager>,
    bound: f64,
    entity: MeasuredEntity,
}

impl FetchCharge {
    /// The charge of a consumer's fetch (followers are never charged), None without a quota
    /// in `quotas` (those of the snapshot the Fetch handler already holds).
    pub fn begin(
        shard: &Shard,
        quotas: &ClientQuotas,
        session: &Session,
        header: &RequestHeader,
    ) -> Option<FetchCharge> {
        let (bound, entity) = governing(quotas, QuotaKind::Fetch, session, header)?;
        Some(FetchCharge {
            manager: shard.quotas.clone(),
            bound,
            entity,
        })
    }

    /// The most record bytes this fetch may return.
    pub fn bytes_max(&self) -> u32 {
        self.manager.fetch_bytes_max(self.bound)
    }

    /// Records a response of `response_bytes`; a positive throttle time means the response
    /// must go out empty (and then its bytes are taken back), as Kafka does.
    pub fn record(&self, response_bytes: u64) -> u64 {
        let throttle_ms = self.manager.record(
            QuotaKind::Fetch,
            &self.entity,
            self.bound,
            response_bytes as f64,
        );
        if throttle_ms > 0 {
            self.manager.unrecord(
                QuotaKind::Fetch,
                &self.entity,
                self.bound,
                response_bytes as f64,
            );
        }
        throttle_ms
    }
}

/// CreateTopics, CreatePartitions and DeleteTopics under `controller_mutation_rate`.
pub struct MutationCharge {
    manager: Rc<QuotaManager>,
    bound: f64,
    entity: MeasuredEntity,
    /// Strict (KIP-599): the version lets the client see THROTTLING_QUOTA_EXCEEDED, so a
    /// mutation arriving over the quota is refused; older versions are accepted and only
    /// throttled.
    strict: bool,
    throttle_ms: Cell<u64>,
}

impl MutationCharge {
    /// The charge of a topic admin request, None without a quota.
    pub fn begin(
        shard: &Shard,
        session: &Session,
        header: &RequestHeader,
    ) -> Option<MutationCharge> {
        let snapshot = shard.metadata.load();
        let (bound, entity) = governing(
            &snapshot.client_quotas,
            QuotaKind::ControllerMutation,
            session,
            header,
        )?;
        let strict = match header.api_key {
            19 => header.api_version >= 6,
            20 => header.api_version >= 5,
            37 => header.api_version >= 3,
            _ => false,
        };
        Some(MutationCharge {
            manager: shard.quotas.clone(),
            bound,
            entity,
            strict,
            throttle_ms: Cell::new(0),
        })
    }

    /// Whether the next mutation must be refused (strict mode, quota already exceeded); the
    /// refusal's throttle time is kept for the response.
    pub fn refuses(&self) -> bool {
        if !self.strict {
            return false;
        }
        let throttle_ms = self.manager.mutation_throttle_ms(&self.entity, self.bound);
        self.throttle_ms
            .set(self.throttle_ms.get().max(throttle_ms));
        throttle_ms > 0
    }

    /// Records `partitions` created or deleted.
    pub fn record(&self, partitions: i32) {
        if partitions <= 0 {
            return;
        }
        let throttle_ms =
            self.manager
                .record_mutations(&self.entity, self.bound, f64::from(partitions));
        self.throttle_ms
            .set(self.throttle_ms.get().max(throttle_ms));
    }

    /// The throttle time for the response.
    pub fn throttle_ms(&self) -> i32 {
        i32::try_from(self.throttle_ms.get()).unwrap_or(i32::MAX)
    }
}
