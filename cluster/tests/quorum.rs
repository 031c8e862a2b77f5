//! Three controller+broker nodes in one process, talking over real TCP on 127.0.0.1-3: they
//! elect a leader, register, survive the leader's loss (a new leader, the lost broker fenced
//! after its session), take the lost node back with a new broker epoch, and rebuild identical
//! state after all three restart from their raft logs (snapshots and purges included).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_cluster::state::ClusterState;
use sluice_cluster::{ClusterNode, ClusterSettings, NodeId};

/// A free port below the kernel's ephemeral range (32768 and up by default), never the same
/// twice in this process. Why: a port the kernel handed out for `bind(0)` and that was closed
/// again can be taken as the source port of the nodes' own outgoing raft connections before
/// the node binds it (CI saw AddrInUse on a voter's listener).
fn free_addr(ip: &str) -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Processes started together begin at different places in 20,000..32,000.
    let offset = (std::process::id() % 1_000) as u16 * 12;
    loop {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((u32::from(offset) + u32::from(step)) % 12_000) as u16;
        if let Ok(listener) = TcpListener::bind((ip, port)) {
            return listener.local_addr().unwrap();
        }
    }
}

fn settings(id: NodeId, voters: &BTreeMap<NodeId, SocketAddr>, dir: &Path) -> ClusterSettings {
    ClusterSettings {
        node_id: id,
        is_controller: true,
        is_broker: true,
        voters: voters.clone(),
        controller_listen: None,
        advertised_host: format!("127.0.0.{id}"),
        advertised_port: 9092,
        advertised_listeners: Vec::new(),
        proposed_cluster_id: format!("cluster-of-{id}"),
        dir: dir.join(format!("node-{id}")),
        session_timeout: Duration::from_millis(1500),
        heartbeat_interval: Duration::from_millis(100),
        election_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(500),
        frame_bytes_max: 8 << 20,
        // Small, so the test crosses several snapshots and purges.
        snapshot_entries_between: 4,
        unclean_leader_election: false,
        auto_leader_rebalance: true,
    }
}

async fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn leader(nodes: &BTreeMap<NodeId, ClusterNode>) -> Option<NodeId> {
    let mut leaders = nodes
        .values()
        .filter_map(|n| n.raft().and_then(|r| r.metrics().borrow().current_leader));
    let first = leaders.next()?;
    leaders.all(|l| l == first).then_some(first)
}

/// Every broker's view lists exactly `unfenced` as unfenced brokers.
fn views_agree(nodes: &BTreeMap<NodeId, ClusterNode>, unfenced: &[i32]) -> bool {
    nodes.values().all(|n| {
        let view = n.view().borrow().clone();
        let ids: Vec<i32> = view.state.unfenced_brokers().map(|b| b.id).collect();
        view.broker_epoch.is_some() && ids == unfenced
    })
}

async fn start_all(
    voters: &BTreeMap<NodeId, SocketAddr>,
    dir: &Path,
) -> BTreeMap<NodeId, ClusterNode> {
    let mut nodes = BTreeMap::new();
    for id in voters.keys() {
        let node = ClusterNode::start(settings(*id, voters, dir))
            .await
            .unwrap();
        nodes.insert(*id, node);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_register_fence_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let voters: BTreeMap<NodeId, SocketAddr> = (1..=3)
        .map(|id| (id, free_addr(&format!("127.0.0.{id}"))))
        .collect();
    let mut nodes = start_all(&voters, dir.path()).await;

    wait_for("a leader", Duration::from_secs(10), || leader(&nodes)).await;
    wait_for(
        "all three registered and seen by every broker",
        Duration::from_secs(10),
        || views_agree(&nodes, &[1, 2, 3]).then_some(()),
    )
    .await;
    let first_leader = leader(&nodes).unwrap();
    let view = nodes[&1].view().borrow().clone();
    assert_eq!(view.controller_id, Some(first_leader));
    let lost_epoch = view.state.brokers[&(first_leader as i32)].epoch;
    for b in view.state.brokers.values() {
        assert_eq!(b.host, format!("127.0.0.{}", b.id));
    }

    // The leader dies: the others elect a new one and fence the lost broker after its session.
    let killed_at = Instant::now();
    nodes.remove(&first_leader).unwrap().shutdown().await;
    let new_leader = wait_for("a new leader", Duration::from_secs(10), || {
        leader(&nodes).filter(|l| *l != first_leader)
    })
    .await;
    eprintln!(
        "new leader {new_leader} elected {:?} after the leader stopped",
        killed_at.elapsed()
    );
    let remaining: Vec<i32> = (1..=3).filter(|id| *id != first_leader as i32).collect();
    wait_for("the lost broker fenced", Duration::from_secs(10), || {
        views_agree(&nodes, &remaining).then_some(())
    })
    .await;
    let fenced_after = killed_at.elapsed();
    eprintln!("lost broker fenced in every view {fenced_after:?} after it stopped");
    assert!(
        fenced_after >= Duration::from_millis(1500),
        "fenced after {fenced_after:?}, before the 1500 ms session ran out"
    );
    for node in nodes.values() {
        assert_eq!(node.view().borrow().controller_id, Some(new_leader));
    }

    // It comes back from its raft log with a new broker epoch and is unfenced.
    nodes.insert(
        first_leader,
        ClusterNode::start(settings(first_leader, &voters, dir.path()))
            .await
            .unwrap(),
    );
    wait_for(
        "the restarted broker unfenced",
        Duration::from_secs(10),
        || views_agree(&nodes, &[1, 2, 3]).then_some(()),
    )
    .await;
    let view = nodes[&first_leader].view().borrow().clone();
    let new_epoch = view.broker_epoch.unwrap();
    assert!(
        new_epoch > lost_epoch,
        "epoch {new_epoch} not above {lost_epoch}"
    );
    assert_eq!(view.state.brokers[&(first_leader as i32)].epoch, new_epoch);

    // Restart all three from their logs: the rebuilt state is the state before.
    let applied_before = wait_for(
        "voters applied the same state",
        Duration::from_secs(10),
        || {
            let states: Vec<Arc<ClusterState>> =
                nodes.values().filter_map(|n| n.applied()).collect();
            let first = states[0].clone();
            states.iter().all(|s| *s == first).then_some(first)
        },
    )
    .await;
    for (_, node) in std::mem::take(&mut nodes) {
        node.shutdown().await;
    }
    let dirs: Vec<PathBuf> = (1..=3)
        .map(|id| dir.path().join(format!("node-{id}")))
        .collect();
    for d in &dirs {
        assert!(
            d.join("raft.snapshot").metadata().unwrap().len() > 0,
            "a snapshot was taken"
        );
    }
    // Controllers only this time, so no broker re-registers and the state is pure replay.
    let mut nodes = BTreeMap::new();
    for id in voters.keys() {
        let mut s = settings(*id, &voters, dir.path());
        s.is_broker = false;
        nodes.insert(*id, ClusterNode::start(s).await.unwrap());
    }
    let rebuilt = wait_for(
        "the state rebuilt on every voter",
        Duration::from_secs(10),
        || {
            let states: Vec<Arc<ClusterState>> =
                nodes.values().filter_map(|n| n.applied()).collect();
            states
                .iter()
                .all(|s| s.applied_index >= applied_before.applied_index)
                .then_some(states)
        },
    )
    .await;
    for state in rebuilt {
        assert_eq!(state.brokers, applied_before.brokers);
        assert_eq!(state.topics, applied_before.topics);
    }
    for (_, node) in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_asks_to_shut_down_is_fenced_while_it_still_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let voters: BTreeMap<NodeId, SocketAddr> = (1..=3)
        .map(|id| (id, free_addr(&format!("127.0.0.{id}"))))
        .collect();
    let nodes = start_all(&voters, dir.path()).await;
    wait_for(
        "all three registered and seen by every broker",
        Duration::from_secs(10),
        || views_agree(&nodes, &[1, 2, 3]).then_some(()),
    )
    .await;
    // Node 3 keeps running (and heartbeating): only its request to stop can fence it.
    nodes[&3].admin().unwrap().shut_down();
    wait_for(
        "broker 3 fenced in every view",
        Duration::from_secs(10),
        || views_agree(&nodes, &[1, 2]).then_some(()),
    )
    .await;
    // Its later heartbeats (every 100 ms here) still ask to stop: they never unfence it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        views_agree(&nodes, &[1, 2]),
        "a stopping broker was unfenced"
    );
    for (_, node) in nodes {
        node.shutdown().await;
    }
}
