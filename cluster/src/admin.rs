//! The broker side of topic changes and producer-id blocks: a [`ClusterAdmin`] handle that any
//! thread (a shard) can use to forward a [`TopicAdminRequest`] (or a request for a block of
//! producer ids, a leader election, or a change answered with its committed log index: an
//! ISR, SCRAM credentials, ACLs) to the active controller, and the task on the
//! cluster thread that carries it there, follows NOT_CONTROLLER hints and unreachable voters
//! until `admin.forward.timeout` runs out, and answers only once this broker's own view has
//! applied the committed change (so the broker that took the client's request already
//! reports what it answered). Must never decide anything about topics (the controller does)
//! or retry a change the controller refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::broker::{BrokerView, Controllers};
use crate::wire::{
    AllocateProducerIdsRequest, AlterAclsRequest, AlterPartitionRequest, BrokerRpcError,
    ElectLeadersReply, ElectLeadersRequest, ProducerIdBlock, ReassignReply, ReassignRequest,
    Request, Response, TopicAdminError, TopicAdminReply, TopicAdminRequest,
};
use crate::{ClusterSettings, NodeId};

pub(crate) enum Job {
    Topic(
        TopicAdminRequest,
        oneshot::Sender<Result<TopicAdminReply, TopicAdminError>>,
    ),
    ProducerIds(oneshot::Sender<Result<ProducerIdBlock, BrokerRpcError>>),
    /// A change the controller answers with the log index it committed at
    /// ([`Response::committed_index`]): answered once this broker's view has applied it.
    Commit(Request, oneshot::Sender<Result<u64, BrokerRpcError>>),
    /// A client's leader election: answered, like a commit, once this broker's view has it.
    Elect(
        ElectLeadersRequest,
        oneshot::Sender<Result<ElectLeadersReply, BrokerRpcError>>,
    ),
    /// A client's partition reassignments: answered, like a commit, once this broker's view
    /// has them.
    Reassign(
        ReassignRequest,
        oneshot::Sender<Result<ReassignReply, BrokerRpcError>>,
    ),
}

fn stopped() -> BrokerRpcError {
    BrokerRpcError::Quorum("the cluster thread stopped".into())
}

/// A handle to forward topic changes to the active controller (cheap to clone, Send + Sync).
#[derive(Debug, Clone)]
pub struct ClusterAdmin {
    jobs: mpsc::UnboundedSender<Job>,
    /// Set once by [`ClusterAdmin::shut_down`]; the broker task's heartbeats read it.
    stopping: Arc<AtomicBool>,
    /// Wakes the broker task for its next heartbeat.
    nudge: Arc<Notify>,
}

impl ClusterAdmin {
    /// Forwards `request` and waits for the committed outcome.
    pub async fn call(
        &self,
        request: TopicAdminRequest,
    ) -> Result<TopicAdminReply, TopicAdminError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.jobs
            .send(Job::Topic(request, reply_tx))
            .map_err(|_| stopped())?;
        reply_rx.await.map_err(|_| stopped())?
    }

    /// Starts a controlled shutdown (KRaft's): from now on this broker's heartbeats ask the
    /// controller to fence it, which gives its partitions other leaders and takes it out of
    /// the ISRs, so clients move on with NOT_LEADER_OR_FOLLOWER instead of meeting a broker
    /// whose storage is closing. Returns at once: the caller watches the published view for
    /// this broker's fencing (and bounds the wait: without a quorum it never comes).
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
        self.nudge.notify_one();
    }

    /// Asks the active controller for a block of producer ids and waits until it committed.
    pub async fn allocate_producer_ids(&self) -> Result<ProducerIdBlock, BrokerRpcError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.jobs
            .send(Job::ProducerIds(reply_tx))
            .map_err(|_| stopped())?;
        reply_rx.await.map_err(|_| stopped())?
    }
}

impl ClusterAdmin {
    /// Asks the active controller to commit a partition's new ISR; answers once this broker's
    /// own view has applied it (with the committed log index).
    pub async fn alter_partition(
        &self,
        request: AlterPartitionRequest,
    ) -> Result<u64, BrokerRpcError> {
        self.commit(Request::AlterPartition(request)).await
    }

    /// Asks the active controller to commit a checked SCRAM credential change; answers once
    /// this broker's own view has applied it (with the committed log index).
    pub async fn alter_scram_credentials(
        &self,
        change: crate::scram::AlterScramCredentials,
    ) -> Result<u64, BrokerRpcError> {
        self.commit(Request::AlterScramCredentials(change)).await
    }

    /// Asks the active controller to commit an ACL change; answers once this broker's own
    /// view has applied it (with the committed log index).
    pub async fn alter_acls(&self, request: AlterAclsRequest) -> Result<u64, BrokerRpcError> {
        self.commit(Request::AlterAcls(request)).await
    }

    /// Asks the active controller to run a leader election; answers each partition's outcome
    /// once this broker's own view has applied it.
    pub async fn elect_leaders(
        &self,
        request: ElectLeadersRequest,
    ) -> Result<ElectLeadersReply, BrokerRpcError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.jobs
            .send(Job::Elect(request, reply_tx))
            .map_err(|_| stopped())?;
        reply_rx.await.map_err(|_| stopped())?
    }

    /// Asks the active controller to start, replace or cancel partition moves; answers each
    /// partition's outcome once this broker's own view has applied it.
    pub async fn alter_partition_reassignments(
        &self,
        request: ReassignRequest,
    ) -> Result<ReassignReply, BrokerRpcError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.jobs
            .send(Job::Reassign(request, reply_tx))
            .map_err(|_| stopped())?;
        reply_rx.await.map_err(|_| stopped())?
    }

    async fn commit(&self, request: Request) -> Result<u64, BrokerRpcError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.jobs
            .send(Job::Commit(request, reply_tx))
            .map_err(|_| stopped())?;
        reply_rx.await.map_err(|_| stopped())?
    }
}

/// The handle and the receiving end for [`run`].
pub(crate) fn channel(
    stopping: Arc<AtomicBool>,
    nudge: Arc<Notify>,
) -> (ClusterAdmin, mpsc::UnboundedReceiver<Job>) {
    let (jobs, rx) = mpsc::unbounded_channel();
    (
        ClusterAdmin {
            jobs,
            stopping,
            nudge,
        },
        rx,
    )
}

/// How long one forwarded change may look for an active controller: long enough to ride out
/// an election (up to twice the election timeout) plus one exchange.
fn forward_timeout(settings: &ClusterSettings) -> Duration {
    settings.election_timeout * 4 + settings.request_timeout
}

/// Carries forwarded changes one at a time until every handle is dropped.
pub(crate) async fn run(
    settings: ClusterSettings,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut view: watch::Receiver<Arc<BrokerView>>,
    nudge: Arc<Notify>,
) {
    let mut controllers = Controllers::new(
        &settings.voters,
        settings.request_timeout,
        settings.frame_bytes_max,
    );
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Topic(request, reply) => {
                let outcome = forward(
                    &settings,
                    &mut controllers,
                    Request::TopicAdmin(request),
                    |response| match response {
                        Response::TopicAdmin(Err(TopicAdminError::Rpc(
                            BrokerRpcError::NotController { leader },
                        ))) => Answer::NotController(leader),
                        Response::TopicAdmin(outcome) => Answer::Final(outcome),
                        _ => Answer::Unexpected,
                    },
                )
                .await
                .unwrap_or_else(|timed_out| Err(TopicAdminError::Rpc(timed_out)));
                if let Ok(committed) = &outcome {
                    wait_applied(&mut view, &nudge, committed.committed_index, &settings).await;
                }
                let _ = reply.send(outcome);
            }
            Job::ProducerIds(reply) => {
                let request = AllocateProducerIdsRequest {
                    broker_id: i32::try_from(settings.node_id).unwrap_or(i32::MAX),
                };
                let outcome = forward(
                    &settings,
                    &mut controllers,
                    Request::AllocateProducerIds(request),
                    |response| match response {
                        Response::AllocateProducerIds(Err(BrokerRpcError::NotController {
                            leader,
                        })) => Answer::NotController(leader),
                        Response::AllocateProducerIds(outcome) => Answer::Final(outcome),
                        _ => Answer::Unexpected,
                    },
                )
                .await
                .unwrap_or_else(Err);
                let _ = reply.send(outcome);
            }
            Job::Commit(request, reply) => {
                let outcome = forward(&settings, &mut controllers, request, read_committed)
                    .await
                    .unwrap_or_else(Err);
                if let Ok(index) = &outcome {
                    wait_applied(&mut view, &nudge, *index, &settings).await;
                }
                let _ = reply.send(outcome);
            }
            Job::Elect(request, reply) => {
                let outcome = forward(
                    &settings,
                    &mut controllers,
                    Request::ElectLeaders(request),
                    |response| match response {
                        Response::ElectLeaders(Err(BrokerRpcError::NotController { leader })) => {
                            Answer::NotController(leader)
                        }
                        Response::ElectLeaders(outcome) => Answer::Final(outcome),
                        _ => Answer::Unexpected,
                    },
                )
                .await
                .unwrap_or_else(Err);
                if let Ok(reply) = &outcome {
                    wait_applied(&mut view, &nudge, reply.committed_index, &settings).await;
                }
                let _ = reply.send(outcome);
            }
            Job::Reassign(request, reply) => {
                let outcome = forward(
                    &settings,
                    &mut controllers,
                    Request::AlterPartitionReassignments(request),
                    |response| match response {
                        Response::AlterPartitionReassignments(Err(
                            BrokerRpcError::NotController { leader },
                        )) => Answer::NotController(leader),
                        Response::AlterPartitionReassignments(outcome) => Answer::Final(outcome),
                        _ => Answer::Unexpected,
                    },
                )
                .await
                .unwrap_or_else(Err);
                if let Ok(committed) = &outcome {
                    wait_applied(&mut view, &nudge, committed.committed_index, &settings).await;
                }
                let _ = reply.send(outcome);
            }
        }
    }
}

/// What one controller's answer means to [`forward`].
enum Answer<T> {
    /// The outcome to hand back.
    Final(T),
    /// Ask the named leader (or the next voter).
    NotController(Option<NodeId>),
    /// A response of another kind: ask the next voter.
    Unexpected,
}

/// Reads an answer to a [`Job::Commit`].
fn read_committed(response: Response) -> Answer<Result<u64, BrokerRpcError>> {
    match response.committed_index() {
        Some(Err(BrokerRpcError::NotController { leader })) => Answer::NotController(leader),
        Some(outcome) => Answer::Final(outcome),
        None => Answer::Unexpected,
    }
}

/// Sends `request` to the active controller, following NOT_CONTROLLER hints and unreachable
/// voters, until `read` finds a final answer or [`forward_timeout`] runs out.
async fn forward<T>(
    settings: &ClusterSettings,
    controllers: &mut Controllers,
    request: Request,
    read: impl Fn(Response) -> Answer<T>,
) -> Result<T, BrokerRpcError> {
    let deadline = Instant::now() + forward_timeout(settings);
    loop {
        let mut retry_now = false;
        let last = match controllers.call(&request).await.map(&read) {
            Ok(Answer::Final(outcome)) => return Ok(outcome),
            Ok(Answer::NotController(leader)) => {
                retry_now = leader.is_some_and(|l| l != controllers.current);
                controllers.redirect(leader);
                format!("not the active controller (leader {leader:?})")
            }
            Ok(Answer::Unexpected) => {
                controllers.redirect(None);
                "unexpected response kind".to_string()
            }
            Err(error) => {
                controllers.redirect(None);
                error.to_string()
            }
        };
        if Instant::now() >= deadline {
            return Err(BrokerRpcError::Quorum(format!(
                "no active controller committed the change within {:?}: {last}",
                forward_timeout(settings)
            )));
        }
        if !retry_now {
            tokio::time::sleep(settings.heartbeat_interval.min(Duration::from_millis(100))).await;
        }
    }
}

/// Heartbeats at once and waits (bounded) until this broker's view has applied `index`.
async fn wait_applied(
    view: &mut watch::Receiver<Arc<BrokerView>>,
    nudge: &Notify,
    index: u64,
    settings: &ClusterSettings,
) {
    nudge.notify_one();
    let deadline = tokio::time::Instant::now() + forward_timeout(settings);
    while view.borrow_and_update().state.applied_index < index {
        match tokio::time::timeout_at(deadline, view.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                tracing::warn!(
                    index,
                    "this broker has not learnt a committed topic change in time"
                );
                return;
            }
        }
    }
}
