//! One cluster node: its controller (raft over the durable log store and the state machine,
//! the listener, the fencing clock) when it is a voter, and its broker lifecycle when it runs a
//! broker. Owns starting and stopping those tasks on the runtime it is started on, or on a
//! thread of its own ([`ClusterNode::spawn_thread`]); must never run on a shard thread.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::admin::{self, ClusterAdmin};
use crate::broker::{self, BrokerView};
use crate::controller::Controller;
use crate::file::{DiskFile, StoreFile};
use crate::log_store::LogStore;
use crate::network::Network;
use crate::state::ClusterState;
use crate::state_machine::StateMachine;
use crate::{service, ClusterError, ClusterSettings, NodeId, Raft};

/// Largest snapshot chunk, so a chunk always fits a frame.
const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 1 << 20;

/// A running node.
pub struct ClusterNode {
    raft: Option<Raft>,
    applied: Option<watch::Receiver<Arc<ClusterState>>>,
    view: watch::Receiver<Arc<BrokerView>>,
    admin: Option<ClusterAdmin>,
    tasks: Vec<JoinHandle<()>>,
}

/// The raft configuration the settings imply.
pub fn raft_config(settings: &ClusterSettings) -> Result<openraft::Config, ClusterError> {
    let election_ms = u64::try_from(settings.election_timeout.as_millis()).unwrap_or(u64::MAX);
    let frame_bytes = u64::from(settings.frame_bytes_max);
    let config = openraft::Config {
        cluster_name: "sluice-metadata".into(),
        election_timeout_min: election_ms,
        election_timeout_max: election_ms.saturating_mul(2),
        heartbeat_interval: (election_ms / 4).max(1),
        install_snapshot_timeout: u64::try_from(settings.request_timeout.as_millis())
            .unwrap_or(u64::MAX),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_entries_between),
        // The log is bounded by the snapshot: a follower further behind gets the snapshot.
        max_in_snapshot_log_to_keep: 0,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX.min(frame_bytes / 2).max(1),
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| ClusterError::Raft(format!("config: {e}")))
}

impl ClusterNode {
    /// Starts the node on the current tokio runtime, its raft files in `settings.dir`.
    pub async fn start(settings: ClusterSettings) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(&settings.dir)
            .map_err(|e| ClusterError::io(format!("create {}", settings.dir.display()), e))?;
        let open = |name: &str| {
            let path = settings.dir.join(name);
            DiskFile::open(&path)
                .map_err(|e| ClusterError::io(format!("open {}", path.display()), e))
        };
        let (log, snapshot) = match settings.is_controller {
            true => (Some(open("raft.log")?), Some(open("raft.snapshot")?)),
            false => (None, None),
        };
        Self::start_with(settings, log.zip(snapshot)).await
    }

    /// Starts the node with its raft log and snapshot in `files` (None when not a voter).
    pub async fn start_with<F: StoreFile>(
        settings: ClusterSettings,
        files: Option<(F, F)>,
    ) -> Result<Self, ClusterError> {
        settings.validate()?;
        let mut tasks = Vec::new();
        let (mut raft, mut applied) = (None, None);
        if let (true, Some((log_file, snapshot_file))) = (settings.is_controller, files) {
            let log = LogStore::open(log_file)?;
            let state_machine = StateMachine::open(snapshot_file)?;
            let state = state_machine.subscribe();
            let network = Network {
                request_timeout: settings.request_timeout,
                frame_bytes_max: settings.frame_bytes_max,
            };
            let config = Arc::new(raft_config(&settings)?);
            let addr = settings.listen_addr().ok_or(ClusterError::Setting {
                setting: "controller.listener",
                message: "a controller needs a listener address".into(),
            })?;
            let listener = service::bind(addr).await?;
            let node = Raft::new(settings.node_id, config, network, log, state_machine)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            let voters: BTreeMap<NodeId, BasicNode> = settings
                .voters
                .iter()
                .map(|(id, addr)| {
                    (
                        *id,
                        BasicNode {
                            addr: addr.to_string(),
                        },
                    )
                })
                .collect();
            // Every voter initializes with the same static membership: the entries they write
            // are identical, so whichever is elected first, the logs agree.
            match node.initialize(voters).await {
                Ok(()) => tracing::info!(node = settings.node_id, "controller quorum initialized"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(error) => return Err(ClusterError::Raft(error.to_string())),
            }
            let controller = Controller::new(
                settings.node_id,
                node.clone(),
                state.clone(),
                settings.session_timeout,
            )
            .with_leadership_policy(
                settings.unclean_leader_election,
                settings.auto_leader_rebalance,
            );
            let tick = (settings.session_timeout / 4).min(settings.heartbeat_interval);
            tasks.push(tokio::spawn(
                controller
                    .clone()
                    .run_fencing(tick.max(Duration::from_millis(10))),
            ));
            tasks.push(tokio::spawn(service::serve(
                listener,
                node.clone(),
                controller,
                settings.frame_bytes_max,
            )));
            raft = Some(node);
            applied = Some(state);
        }
        let (view_tx, view) = watch::channel(Arc::new(BrokerView::default()));
        let mut admin = None;
        if settings.is_broker {
            let nudge = Arc::new(Notify::new());
            let stopping = Arc::new(AtomicBool::new(false));
            let (handle, jobs) = admin::channel(stopping.clone(), nudge.clone());
            tasks.push(tokio::spawn(admin::run(
                settings.clone(),
                jobs,
                view.clone(),
                nudge.clone(),
            )));
            tasks.push(tokio::spawn(broker::run(
                settings.clone(),
                view_tx,
                nudge,
                applied.clone(),
                stopping,
            )));
            admin = Some(handle);
        }
        Ok(Self {
            raft,
            applied,
            view,
            admin,
            tasks,
        })
    }

    /// Runs the node on a thread of its own (a current-thread tokio runtime), so the quorum
    /// never shares a shard's thread, and hands every new broker view to `publish` (on that
    /// thread). Returns once started, with the handle for forwarding topic changes (None when
    /// the node runs no broker); the node lives as long as the process.
    pub fn spawn_thread(
        settings: ClusterSettings,
        publish: impl Fn(Arc<BrokerView>) + Send + 'static,
    ) -> Result<Option<ClusterAdmin>, ClusterError> {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(ClusterError::io("cluster runtime", e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let node = match ClusterNode::start(settings).await {
                        Ok(node) => node,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(node.admin()));
                    let mut view = node.view();
                    loop {
                        publish(view.borrow_and_update().clone());
                        if view.changed().await.is_err() {
                            break;
                        }
                    }
                    // The broker task ended (a controller-only node): keep the quorum running.
                    std::future::pending::<()>().await;
                    drop(node);
                });
            })
            .map_err(|e| ClusterError::io("spawn the cluster thread", e))?;
        started_rx
            .recv()
            .map_err(|_| ClusterError::Raft("the cluster thread ended before starting".into()))?
    }

    /// The broker's view (epoch, controller, committed state).
    pub fn view(&self) -> watch::Receiver<Arc<BrokerView>> {
        self.view.clone()
    }

    /// The handle for forwarding topic changes, on a broker.
    pub fn admin(&self) -> Option<ClusterAdmin> {
        self.admin.clone()
    }

    /// The raft handle, on a voter.
    pub fn raft(&self) -> Option<&Raft> {
        self.raft.as_ref()
    }

    /// The state this voter applied.
    pub fn applied(&self) -> Option<Arc<ClusterState>> {
        self.applied.as_ref().map(|a| a.borrow().clone())
    }

    /// Stops every task and the raft node (the in-process equivalent of a process exit).
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(raft) = self.raft {
            let _ = raft.shutdown().await;
        }
    }
}
