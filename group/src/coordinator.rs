//! The per-shard coordinator: owns the shard's groups, its loaded `__consumer_offsets` partitions,
//! the one deadline queue and the task that drives it, durable appends with in-flight tracking,
//! partition loading (snapshot + log tail replay) and snapshotting.
//!
//! This is the single serialization point for all group state on the shard: every handler takes
//! the `RefCell` borrow, mutates synchronously, releases it, and only then awaits (a durable
//! append or a join/sync waiter). Must never: hold the borrow across an `.await`, answer before a
//! durable append resolved, or block the shard thread on file I/O after startup (snapshot files
//! are written on the blocking pool).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::group::{CommittedOffset, Group, GroupState, Member};
use crate::log::OffsetLog;
use crate::records::{encode_batch, GroupMetadataValue, OffsetsRecord};
use crate::snapshot::{self, Snapshot};
use crate::timers::{TimerEvent, TimerQueue};
use crate::{codes, offsets_partition_for, GroupConfig, GroupError, TopicLookup};

/// One shard's group coordinator. Cheap to clone (`Rc`); not `Send`.
#[derive(Clone)]
pub struct GroupCoordinator {
    pub(crate) shared: Rc<Shared>,
}

pub(crate) struct Shared {
    pub state: RefCell<State>,
    pub topics: Rc<dyn TopicLookup>,
    /// Wakes the timer task when an earlier deadline may have been queued or on shutdown.
    pub notify: Rc<Notify>,
}

pub(crate) struct State {
    pub groups: HashMap<String, Group>,
    pub partitions: HashMap<i32, PartitionSlot>,
    /// In a cluster, the offsets partitions this broker coordinates (it leads them); groups
    /// of any other partition answer NOT_COORDINATOR. None on a single broker: every loaded
    /// partition.
    pub coordinated: Option<HashSet<i32>>,
    pub ctx: Ctx,
    pub shut_down: bool,
    /// Numbers the loads (`PartitionSlot::Loading`).
    pub next_load: u64,
}

pub(crate) enum PartitionSlot {
    /// A load is under way; the number says which (an unload and a new load meanwhile make
    /// the older load's result stale).
    Loading(u64),
    Loaded(LoadedPartition),
}

pub(crate) struct LoadedPartition {
    pub log: Rc<dyn OffsetLog>,
    /// Appends in flight: sequence -> log end offset when submitted (a lower bound of its offset).
    pub in_flight: BTreeMap<u64, i64>,
    pub next_append_seq: u64,
    /// Offset the newest snapshot file covers; -1 forces the next snapshot.
    pub snapshot_covered: i64,
    pub snapshotting: bool,
    /// TxnOffsetCommit offsets of this partition's groups waiting on their transactions.
    pub pending: crate::pending::PendingTxnOffsets,
}

/// Tombstones of one group, applied to its in-memory state only once they are durable.
pub(crate) struct Removal {
    pub partition: i32,
    pub group_id: String,
    /// The group they were decided for (a deleted and recreated group is left alone).
    pub incarnation: u64,
    /// Offset tombstones first, then the group's own tombstone if it goes.
    pub records: Vec<OffsetsRecord>,
    /// Whether this removal set the group's `removal_in_flight` (its last offsets expire) and so
    /// owns clearing it and removing the group; a partial expiry owns neither.
    pub removes_group: bool,
}

/// Everything a transition needs besides the group itself.
pub(crate) struct Ctx {
    pub config: GroupConfig,
    pub timers: TimerQueue,
    next_token: u64,
    next_join_seq: u64,
    next_incarnation: u64,
    /// Groups whose current metadata must be appended (fire and forget), e.g. on becoming Empty.
    pub persist_requests: Vec<String>,
    /// Tombstones an expiry pass decided on, to append before they are applied.
    pub tombstone_requests: Vec<Removal>,
    /// Test hook: added to the wall clock.
    pub wall_offset_ms: i64,
}

impl Ctx {
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    pub fn now_ms(&self) -> i64 {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX) + self.wall_offset_ms
    }

    pub fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    pub fn join_seq(&mut self) -> u64 {
        self.next_join_seq += 1;
        self.next_join_seq
    }

    pub fn incarnation(&mut self) -> u64 {
        self.next_incarnation += 1;
        self.next_incarnation
    }

    pub fn after_ms(&self, ms: i64) -> Instant {
        self.now() + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }
}

impl State {
    /// Whether requests for `group_id` can be served here: its partition must be loaded.
    pub fn gate(&self, group_id: &str) -> Result<i32, i16> {
        let partition = offsets_partition_for(group_id);
        if self
            .coordinated
            .as_ref()
            .is_some_and(|led| !led.contains(&partition))
        {
            return Err(codes::NOT_COORDINATOR);
        }
        match self.partitions.get(&partition) {
            Some(PartitionSlot::Loaded(_)) => Ok(partition),
            Some(PartitionSlot::Loading(_)) => Err(codes::COORDINATOR_LOAD_IN_PROGRESS),
            None => Err(codes::COORDINATOR_NOT_AVAILABLE),
        }
    }

    /// Creates an Empty group.
    pub fn create_group(&mut self, group_id: &str, partition: i32) -> &mut Group {
        let incarnation = self.ctx.incarnation();
        let now_ms = self.ctx.now_ms();
        self.groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id.to_string(), partition, incarnation, now_ms))
    }
}

/// Maps a failed durable append to the code a coordinator answers with. Kafka's group
/// coordinator answers a storage error of its offsets log (full or failed disk) with
/// NOT_COORDINATOR, so that the client looks the coordinator up again, and other append
/// failures with the retriable COORDINATOR_NOT_AVAILABLE. A replicated offsets partition's
/// errors map as Kafka's do: NOT_LEADER_OR_FOLLOWER (this broker stopped leading it) is
/// NOT_COORDINATOR; NOT_ENOUGH_REPLICAS(_AFTER_APPEND) and REQUEST_TIMED_OUT (the high
/// watermark did not pass the append in time) are COORDINATOR_NOT_AVAILABLE.
pub(crate) fn append_error_code(error: &GroupError) -> i16 {
    match error {
        GroupError::Storage { code, .. } if *code == codes::NOT_LEADER_OR_FOLLOWER => {
            codes::NOT_COORDINATOR
        }
        GroupError::Storage { code, .. } if *code == sluice_storage::codes::KAFKA_STORAGE_ERROR => {
            codes::NOT_COORDINATOR
        }
        GroupError::Storage { code, .. } if *code == sluice_storage::codes::MESSAGE_TOO_LARGE => {
            codes::INVALID_COMMIT_OFFSET_SIZE
        }
        GroupError::Storage { code, .. }
            if *code == sluice_storage::codes::RECORD_LIST_TOO_LARGE =>
        {
            codes::INVALID_COMMIT_OFFSET_SIZE
        }
        _ => codes::COORDINATOR_NOT_AVAILABLE,
    }
}

/// Replayed content of one partition.
#[derive(Default)]
struct Replay {
    groups: HashMap<String, ReplayGroup>,
    pending: crate::pending::PendingTxnOffsets,
}

#[derive(Default)]
struct ReplayGroup {
    metadata: Option<(i64, GroupMetadataValue)>,
    metadata_tombstone_offset: i64,
    offsets: HashMap<(String, i32), CommittedOffset>,
}

impl Replay {
    fn apply(&mut self, log_offset: i64, record: OffsetsRecord) {
        match record {
            OffsetsRecord::PendingOffset { .. } | OffsetsRecord::TxnEnd { .. } => {
                self.pending.apply(log_offset, &record)
            }
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                let g = self.groups.entry(group).or_default();
                let key = (topic, partition);
                let newer = g
                    .offsets
                    .get(&key)
                    .is_none_or(|c| log_offset >= c.log_offset);
                match value {
                    Some(value) if newer => {
                        g.offsets.insert(key, CommittedOffset { value, log_offset });
                    }
                    None if newer => {
                        g.offsets.remove(&key);
                    }
                    _ => {}
                }
            }
            OffsetsRecord::Group { group, value } => {
                let g = self.groups.entry(group).or_default();
                let newer = g.metadata.as_ref().is_none_or(|(o, _)| log_offset >= *o)
                    && log_offset >= g.metadata_tombstone_offset;
                match value {
                    Some(value) if newer => g.metadata = Some((log_offset, value)),
                    None if newer => {
                        g.metadata = None;
                        g.metadata_tombstone_offset = log_offset;
                    }
                    _ => {}
                }
            }
        }
    }
}

impl GroupCoordinator {
    /// In a cluster, limits the groups served here to those of the offsets partitions this
    /// broker leads (the others answer NOT_COORDINATOR); None serves every loaded partition.
    pub fn set_coordinated(&self, partitions: Option<HashSet<i32>>) {
        self.shared.state.borrow_mut().coordinated = partitions;
    }

    /// Creates the shard's coordinator and spawns its one timer task. Must be called inside the
    /// shard's runtime (`tokio_uring::start` or a tokio `LocalSet`).
    pub fn new(config: GroupConfig, topics: Rc<dyn TopicLookup>) -> Self {
        assert!(
            config.session_timeout_ms_min <= config.session_timeout_ms_max,
            "session timeout bounds inverted"
        );
        assert!(
            config.offsets_snapshot_interval_ms > 0
                && config.offsets_retention_check_interval_ms > 0
        );
        let snapshot_ms = config.offsets_snapshot_interval_ms;
        let expiry_ms = config.offsets_retention_check_interval_ms;
        let ctx = Ctx {
            config,
            timers: TimerQueue::default(),
            next_token: 0,
            next_join_seq: 0,
            next_incarnation: 0,
            persist_requests: Vec::new(),
            tombstone_requests: Vec::new(),
            wall_offset_ms: 0,
        };
        let shared = Rc::new(Shared {
            state: RefCell::new(State {
                groups: HashMap::new(),
                partitions: HashMap::new(),
                coordinated: None,
                ctx,
                shut_down: false,
                next_load: 0,
            }),
            topics,
            notify: Rc::new(Notify::new()),
        });
        {
            let mut st = shared.state.borrow_mut();
            let now = st.ctx.now();
            st.ctx.timers.schedule(
                now + Duration::from_millis(snapshot_ms),
                TimerEvent::Snapshot,
            );
            st.ctx.timers.schedule(
                now + Duration::from_millis(expiry_ms),
                TimerEvent::OffsetExpiry,
            );
        }
        spawn_timer_task(Rc::downgrade(&shared), shared.notify.clone());
        GroupCoordinator { shared }
    }

    /// Loads a `__consumer_offsets` partition owned by this shard: reads its snapshot, replays the
    /// log after it, and starts serving its groups. Until it returns, those groups answer
    /// COORDINATOR_LOAD_IN_PROGRESS; if it fails, COORDINATOR_NOT_AVAILABLE.
    pub async fn load_partition(
        &self,
        partition: i32,
        log: sluice_storage::Partition,
    ) -> Result<(), GroupError> {
        self.load_partition_from(partition, Rc::new(log)).await
    }

    /// [`GroupCoordinator::load_partition`] over any [`OffsetLog`] (tests use [`crate::MemoryLog`]).
    pub async fn load_partition_from(
        &self,
        partition: i32,
        log: Rc<dyn OffsetLog>,
    ) -> Result<(), GroupError> {
        self.load(partition, log, SnapshotAhead::Keep).await
    }

    /// Loads a replicated `__consumer_offsets` partition this broker just became the leader
    /// of (the restart path), through `log`, whose appends must wait for the high watermark.
    /// A snapshot covering past the log end (the log was cut as a follower) is dropped and the
    /// log replayed from its start: the log is the replicas' truth.
    pub async fn load_led_partition(
        &self,
        partition: i32,
        log: Rc<dyn OffsetLog>,
    ) -> Result<(), GroupError> {
        self.load(partition, log, SnapshotAhead::Drop).await
    }

    /// Stops serving one partition's groups (this broker no longer leads it): forgets them
    /// and the partition, so their requests, blocked joins and syncs included, answer
    /// NOT_COORDINATOR (as Kafka's resigning coordinator); appends in flight fail through
    /// their log.
    /// With `forget_snapshot` (this broker follows the partition now), also removes its
    /// snapshot (on the blocking pool): it describes a log a follower may cut. Returns how
    /// many groups were unloaded.
    pub fn unload_partition(&self, partition: i32, forget_snapshot: bool) -> usize {
        let (dir, groups) = {
            let mut st = self.shared.state.borrow_mut();
            let was = st.partitions.remove(&partition);
            let before = st.groups.len();
            // Dropping the members drops their join/sync waiters, which answer at once.
            st.groups.retain(|_, g| g.partition != partition);
            let groups = before - st.groups.len();
            if was.is_some() || groups > 0 {
                tracing::info!(partition, groups, "unloaded __consumer_offsets partition");
            }
            (st.ctx.config.snapshot_dir(), groups)
        };
        if !forget_snapshot {
            return groups;
        }
        tokio::task::spawn_local(async move {
            let removed =
                tokio::task::spawn_blocking(move || snapshot::remove(&dir, partition)).await;
            match removed {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(partition, %error, "removing an unloaded partition's group snapshot failed")
                }
                Err(error) => tracing::warn!(partition, %error, "snapshot removal task failed"),
            }
        });
        groups
    }

    async fn load(
        &self,
        partition: i32,
        log: Rc<dyn OffsetLog>,
        ahead: SnapshotAhead,
    ) -> Result<(), GroupError> {
        let load = {
            let mut st = self.shared.state.borrow_mut();
            if st.partitions.contains_key(&partition) {
                return Ok(());
            }
            st.next_load += 1;
            let load = st.next_load;
            st.partitions
                .insert(partition, PartitionSlot::Loading(load));
            load
        };
        let dir = self.shared.state.borrow().ctx.config.snapshot_dir();
        let started = std::time::Instant::now();
        let result = replay_partition(partition, &dir, log.as_ref(), ahead).await;
        let mut st = self.shared.state.borrow_mut();
        if !matches!(st.partitions.get(&partition), Some(PartitionSlot::Loading(l)) if *l == load) {
            // Unloaded (and maybe loaded again) meanwhile: this replay is stale.
            return Ok(());
        }
        match result {
            Err(e) => {
                st.partitions.remove(&partition);
                tracing::error!(partition, error = %e, "loading __consumer_offsets partition failed");
                Err(e)
            }
            Ok((replay, snapshot_covered, records_replayed)) => {
                let group_count = replay.groups.len();
                for (group_id, rg) in replay.groups {
                    install_group(&mut st, partition, group_id, rg);
                }
                let pending = replay.pending;
                st.partitions.insert(
                    partition,
                    PartitionSlot::Loaded(LoadedPartition {
                        log,
                        in_flight: BTreeMap::new(),
                        next_append_seq: 0,
                        snapshot_covered,
                        snapshotting: false,
                        pending,
                    }),
                );
                drop(st);
                self.shared.notify.notify_one();
                tracing::debug!(
                    partition,
                    groups = group_count,
                    records_replayed,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "loaded __consumer_offsets partition"
                );
                Ok(())
            }
        }
    }

    /// Appends `records` to the partition's log as one batch and resolves once durable, with the
    /// base offset. Tracks the append as in flight so snapshots never claim to cover it.
    pub(crate) async fn append(
        &self,
        partition: i32,
        records: &[OffsetsRecord],
    ) -> Result<i64, GroupError> {
        debug_assert!(!records.is_empty());
        let (log, seq, batch) = {
            let mut st = self.shared.state.borrow_mut();
            let now_ms = st.ctx.now_ms();
            let Some(PartitionSlot::Loaded(p)) = st.partitions.get_mut(&partition) else {
                return Err(GroupError::NotLoaded(partition));
            };
            let seq = p.next_append_seq;
            p.next_append_seq += 1;
            p.in_flight.insert(seq, p.log.log_end_offset());
            let kv: Vec<_> = records
                .iter()
                .map(|r| (r.encode_key(), r.encode_value()))
                .collect();
            (p.log.clone(), seq, encode_batch(&kv, now_ms))
        };
        let result = log.append_durable(batch).await;
        if let Some(PartitionSlot::Loaded(p)) = self
            .shared
            .state
            .borrow_mut()
            .partitions
            .get_mut(&partition)
        {
            p.in_flight.remove(&seq);
        }
        if let Err(e) = &result {
            tracing::warn!(partition, error = %e, "durable append to __consumer_offsets failed");
        }
        result
    }

    /// Runs deferred effects of a state change and wakes the timer task (a deadline may have
    /// been queued ahead of the one it sleeps for).
    pub(crate) fn after_mutation(&self) {
        self.run_effects();
        self.shared.notify.notify_one();
    }

    /// Spawns the fire-and-forget appends a state change queued (metadata of groups that became
    /// Empty, tombstones of expired offsets).
    fn run_effects(&self) {
        let (persists, tombstones) = {
            let mut st = self.shared.state.borrow_mut();
            let persists = std::mem::take(&mut st.ctx.persist_requests);
            let tombstones = std::mem::take(&mut st.ctx.tombstone_requests);
            let now_ms = st.ctx.now_ms();
            let persists: Vec<_> = persists
                .into_iter()
                .filter_map(|id| {
                    let g = st.groups.get(&id)?;
                    let value = g.metadata_value(now_ms, &HashMap::new());
                    Some((g.partition, id, g.incarnation, value))
                })
                .collect();
            (persists, tombstones)
        };
        for (partition, group_id, incarnation, value) in persists {
            let this = self.clone();
            tokio::task::spawn_local(async move {
                let record = OffsetsRecord::Group {
                    group: group_id.clone(),
                    value: Some(value.clone()),
                };
                if let Ok(offset) = this.append(partition, &[record]).await {
                    this.note_persisted(&group_id, incarnation, offset, value);
                }
            });
        }
        for removal in tombstones {
            if removal.records.is_empty() {
                continue;
            }
            let this = self.clone();
            tokio::task::spawn_local(async move {
                let result = this.append(removal.partition, &removal.records).await;
                if let Err(error) = &result {
                    // The offsets stay (in memory as in the log); the next expiry pass tries again.
                    tracing::warn!(group = %removal.group_id, %error, "expiring committed offsets failed; retried on the next expiry pass");
                }
                let expired = this.settle_removal(
                    &removal.group_id,
                    removal.incarnation,
                    &removal.records,
                    removal.removes_group,
                    result.ok(),
                );
                if expired > 0 {
                    tracing::info!(group = %removal.group_id, expired, "expired committed offsets");
                }
            });
        }
    }

    /// Applies tombstones of `group_id` once their append resolved: with `durable_at` (the
    /// batch's base offset), each offset goes unless a newer commit replaced it meanwhile, and
    /// a group tombstone removes the group; without it (the append failed), nothing is
    /// removed and the group takes requests again. Returns the number of offsets removed.
    ///
    /// `removes_group` says whether the caller is the removal that set `removal_in_flight`
    /// (DeleteGroups, expiry of the last offsets): only it clears the flag and removes the group.
    /// Other removals (OffsetDelete, partial expiry) may settle while such a removal is in
    /// flight and must leave its flag alone, or the group would take commits meanwhile and stay
    /// after its tombstone is durable.
    pub(crate) fn settle_removal(
        &self,
        group_id: &str,
        incarnation: u64,
        records: &[OffsetsRecord],
        removes_group: bool,
        durable_at: Option<i64>,
    ) -> usize {
        let mut st = self.shared.state.borrow_mut();
        let Some(g) = st.groups.get_mut(group_id) else {
            return 0;
        };
        let same_group = g.incarnation == incarnation;
        let owns_flag = same_group && removes_group;
        let Some(base_offset) = durable_at else {
            if owns_flag {
                g.removal_in_flight = false;
            }
            return 0;
        };
        let mut removed = 0;
        let mut group_tombstone_offset = None;
        for (index, record) in records.iter().enumerate() {
            let tombstone_offset = base_offset.saturating_add(index as i64);
            match record {
                OffsetsRecord::Offset {
                    topic, partition, ..
                } => {
                    // Replay keeps whichever record of a key comes last in the log.
                    let key = (topic.clone(), *partition);
                    if g.offsets
                        .get(&key)
                        .is_some_and(|c| c.log_offset <= tombstone_offset)
                    {
                        g.offsets.remove(&key);
                        removed += 1;
                    }
                }
                OffsetsRecord::Group { value: None, .. } => {
                    group_tombstone_offset = Some(tombstone_offset)
                }
                OffsetsRecord::Group { .. }
                | OffsetsRecord::PendingOffset { .. }
                | OffsetsRecord::TxnEnd { .. } => {}
            }
        }
        let group_goes = group_tombstone_offset.is_some();
        if let Some(tombstone_offset) = group_tombstone_offset.filter(|_| same_group) {
            // The log no longer holds the metadata (replay drops it at the tombstone), so a
            // group that stays (a commit landed meanwhile) must not write it back in a snapshot.
            if g.persisted
                .as_ref()
                .is_some_and(|(o, _)| *o <= tombstone_offset)
            {
                g.persisted = None;
            }
        }
        if owns_flag {
            g.removal_in_flight = false;
            let nothing_left = g.offsets.is_empty() && g.members.is_empty();
            if nothing_left && (group_goes || g.persisted.is_none()) {
                g.state = GroupState::Dead;
                st.groups.remove(group_id);
            }
        }
        removed
    }

    /// Records that `value` is durable at `offset` for the group (if it still is that group).
    pub(crate) fn note_persisted(
        &self,
        group_id: &str,
        incarnation: u64,
        offset: i64,
        value: GroupMetadataValue,
    ) {
        let mut st = self.shared.state.borrow_mut();
        if let Some(g) = st.groups.get_mut(group_id) {
            if g.incarnation == incarnation && g.persisted.as_ref().is_none_or(|(o, _)| offset > *o)
            {
                g.persisted = Some((offset, value));
            }
        }
    }

    /// Handles every due deadline.
    fn fire_due_timers(&self) {
        let mut chores = Vec::new();
        {
            let mut st = self.shared.state.borrow_mut();
            if st.shut_down {
                return;
            }
            let now = st.ctx.now();
            while let Some(event) = st.ctx.timers.pop_due(now) {
                match event {
                    TimerEvent::Snapshot | TimerEvent::OffsetExpiry => chores.push(event),
                    other => crate::membership::on_group_timer(&mut st, other),
                }
            }
        }
        for chore in chores {
            let mut st = self.shared.state.borrow_mut();
            match chore {
                TimerEvent::Snapshot => {
                    let at = st
                        .ctx
                        .after_ms(st.ctx.config.offsets_snapshot_interval_ms as i64);
                    st.ctx.timers.schedule(at, TimerEvent::Snapshot);
                    drop(st);
                    let this = self.clone();
                    tokio::task::spawn_local(async move {
                        this.snapshot_all().await;
                    });
                }
                TimerEvent::OffsetExpiry => {
                    let at = st
                        .ctx
                        .after_ms(st.ctx.config.offsets_retention_check_interval_ms as i64);
                    st.ctx.timers.schedule(at, TimerEvent::OffsetExpiry);
                    let now_ms = st.ctx.now_ms();
                    crate::offsets::expire_offsets(&mut st, now_ms);
                }
                _ => {}
            }
        }
        // No notify: the timer task recomputes its next deadline right after this returns.
        self.run_effects();
    }

    /// Snapshots every loaded partition whose log moved since its last snapshot.
    pub(crate) async fn snapshot_all(&self) {
        let partitions: Vec<i32> = self
            .shared
            .state
            .borrow()
            .partitions
            .iter()
            .filter(|(_, slot)| matches!(slot, PartitionSlot::Loaded(_)))
            .map(|(p, _)| *p)
            .collect();
        for p in partitions {
            if let Err(e) = self.snapshot_partition(p).await {
                tracing::error!(partition = p, error = %e, "writing group snapshot failed");
            }
        }
    }

    /// Writes the partition's snapshot if its log moved; returns whether one was written.
    pub(crate) async fn snapshot_partition(&self, partition: i32) -> Result<bool, GroupError> {
        let (bytes, covered, dir) = {
            let mut st = self.shared.state.borrow_mut();
            let dir = st.ctx.config.snapshot_dir();
            let records = collect_snapshot_records(&st, partition);
            let Some(PartitionSlot::Loaded(p)) = st.partitions.get_mut(&partition) else {
                return Ok(false);
            };
            // Every append below the oldest in-flight append's submission offset has completed
            // and been applied, so the state covers the log below it.
            let covered = p
                .in_flight
                .values()
                .min()
                .copied()
                .unwrap_or_else(|| p.log.log_end_offset());
            if p.snapshotting || covered == p.snapshot_covered {
                return Ok(false);
            }
            p.snapshotting = true;
            (
                snapshot::encode(&Snapshot {
                    partition,
                    covered_offset: covered,
                    records,
                }),
                covered,
                dir,
            )
        };
        let result =
            tokio::task::spawn_blocking(move || snapshot::write_atomic(&dir, partition, &bytes))
                .await
                .unwrap_or_else(|e| {
                    Err(GroupError::Io {
                        context: "snapshot writer task".into(),
                        source: std::io::Error::other(e.to_string()),
                    })
                });
        let unloaded_dir = {
            let mut st = self.shared.state.borrow_mut();
            match st.partitions.get_mut(&partition) {
                Some(PartitionSlot::Loaded(p)) => {
                    p.snapshotting = false;
                    if result.is_ok() {
                        p.snapshot_covered = covered;
                    }
                    None
                }
                // Unloaded while this was written: the removal may have run first.
                _ => Some(st.ctx.config.snapshot_dir()),
            }
        };
        if let Some(dir) = unloaded_dir {
            tokio::task::spawn_blocking(move || snapshot::remove(&dir, partition))
                .await
                .unwrap_or_else(|e| {
                    Err(GroupError::Io {
                        context: "snapshot removal task".into(),
                        source: std::io::Error::other(e.to_string()),
                    })
                })?;
        }
        result.map(|()| true)
    }

    /// Final snapshots; afterwards the timer task stops and new requests should not be sent.
    pub async fn shutdown(&self) {
        self.snapshot_all().await;
        self.shared.state.borrow_mut().shut_down = true;
        self.shared.notify.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn advance_wall_clock_ms(&self, ms: i64) {
        self.shared.state.borrow_mut().ctx.wall_offset_ms += ms;
    }
}

/// The records a snapshot of `partition` holds: each group's durable metadata and offsets.
fn collect_snapshot_records(st: &State, partition: i32) -> Vec<snapshot::SnapshotRecord> {
    let mut out = Vec::new();
    for g in st.groups.values().filter(|g| g.partition == partition) {
        if let Some((offset, value)) = &g.persisted {
            let rec = OffsetsRecord::Group {
                group: g.id.clone(),
                value: Some(value.clone()),
            };
            out.push((*offset, rec.encode_key(), rec.encode_value()));
        }
        for ((topic, p), c) in &g.offsets {
            let rec = OffsetsRecord::Offset {
                group: g.id.clone(),
                topic: topic.clone(),
                partition: *p,
                value: Some(c.value.clone()),
            };
            out.push((c.log_offset, rec.encode_key(), rec.encode_value()));
        }
    }
    if let Some(PartitionSlot::Loaded(p)) = st.partitions.get(&partition) {
        p.pending.snapshot_records(&mut out);
    }
    out
}

/// What a load does with a snapshot that covers past the log end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SnapshotAhead {
    /// Keep its state (a single broker's log that lost its tail: the snapshot is all there is).
    Keep,
    /// Ignore it (a replica's log was cut to its leader's: what the snapshot holds past the
    /// cut was never committed).
    Drop,
}

/// Snapshot then log tail, folded into per-group state. Returns (state, snapshot offset to keep,
/// records replayed from the log).
async fn replay_partition(
    partition: i32,
    dir: &std::path::Path,
    log: &dyn OffsetLog,
    ahead: SnapshotAhead,
) -> Result<(Replay, i64, usize), GroupError> {
    let dir_owned = dir.to_path_buf();
    let snap = tokio::task::spawn_blocking(move || snapshot::read(&dir_owned, partition))
        .await
        .unwrap_or_else(|e| {
            Err(GroupError::Io {
                context: "snapshot reader task".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
    let mut replay = Replay::default();
    let mut from = log.log_start_offset();
    let mut covered = -1;
    let snap = snap.filter(|snap| {
        let past_end = snap.covered_offset > log.log_end_offset();
        if past_end && ahead == SnapshotAhead::Drop {
            tracing::warn!(
                partition,
                snapshot = snap.covered_offset,
                log_end = log.log_end_offset(),
                "group snapshot past the replica's log end dropped; replaying the log"
            );
        }
        !(past_end && ahead == SnapshotAhead::Drop)
    });
    if let Some(snap) = snap {
        for (log_offset, key, value) in snap.records {
            if let Some(rec) = OffsetsRecord::decode(&key, value.as_deref())? {
                replay.apply(log_offset, rec);
            }
        }
        let start = log.log_start_offset();
        let end = log.log_end_offset();
        if snap.covered_offset < start {
            tracing::error!(
                partition,
                snapshot = snap.covered_offset,
                log_start = start,
                "group snapshot older than the log start: records in between are lost"
            );
        }
        if snap.covered_offset > end {
            // The log lost its tail (e.g. a wiped partition dir): keep the snapshot's state and
            // rewrite the snapshot at the next tick so it matches the log's offsets again.
            tracing::warn!(
                partition,
                snapshot = snap.covered_offset,
                log_end = end,
                "group snapshot ahead of the log"
            );
        } else {
            covered = snap.covered_offset;
        }
        from = snap.covered_offset.clamp(start, end);
    }
    let records = crate::log::read_all_from(log, from).await?;
    let replayed = records.len();
    for r in records {
        match OffsetsRecord::decode(&r.key, r.value.as_deref()) {
            Ok(Some(rec)) => replay.apply(r.offset, rec),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(partition, offset = r.offset, error = %e, "skipping undecodable __consumer_offsets record")
            }
        }
    }
    Ok((replay, covered, replayed))
}

/// Recreates a loaded group: members of its last persisted generation come back Stable with fresh
/// session deadlines (they must heartbeat or expire), as Kafka does on coordinator failover.
fn install_group(st: &mut State, partition: i32, group_id: String, rg: ReplayGroup) {
    if rg.metadata.is_none() && rg.offsets.is_empty() {
        return;
    }
    let incarnation = st.ctx.incarnation();
    let now_ms = st.ctx.now_ms();
    let mut g = Group::new(group_id.clone(), partition, incarnation, now_ms);
    g.offsets = rg.offsets;
    if let Some((offset, value)) = rg.metadata {
        g.protocol_type = Some(value.protocol_type.clone()).filter(|t| !t.is_empty());
        g.generation = value.generation;
        g.protocol_name = value.protocol.clone();
        if value.members.is_empty() {
            g.state = GroupState::Empty;
            g.state_since_ms = if value.current_state_timestamp_ms >= 0 {
                value.current_state_timestamp_ms
            } else {
                now_ms
            };
        } else {
            g.state = GroupState::Stable;
            g.leader = value.leader.clone();
            for m in &value.members {
                let token = st.ctx.token();
                let join_seq = st.ctx.join_seq();
                let deadline = st.ctx.after_ms(i64::from(m.session_timeout_ms));
                st.ctx.timers.schedule(
                    deadline,
                    TimerEvent::Session {
                        group: group_id.clone(),
                        member: m.member_id.clone(),
                        token,
                    },
                );
                if let Some(instance) = &m.group_instance_id {
                    g.static_members
                        .insert(instance.clone(), m.member_id.clone());
                }
                let protocol = value.protocol.clone().unwrap_or_default();
                g.members.insert(
                    m.member_id.clone(),
                    Member {
                        id: m.member_id.clone(),
                        instance_id: m.group_instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        session_timeout_ms: m.session_timeout_ms,
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        protocols: vec![(protocol, m.subscription.clone())],
                        assignment: m.assignment.clone(),
                        join_waiter: None,
                        sync_waiter: None,
                        session_deadline: deadline,
                        timer_token: token,
                        join_seq,
                    },
                );
            }
            if g.leader.as_ref().is_none_or(|l| !g.members.contains_key(l)) {
                g.leader = g.first_member_where(|_| true);
            }
        }
        g.persisted = Some((offset, value));
    }
    st.groups.insert(group_id, g);
}

fn spawn_timer_task(shared: Weak<Shared>, notify: Rc<Notify>) {
    tokio::task::spawn_local(async move {
        loop {
            let next = {
                let Some(s) = shared.upgrade() else { return };
                let st = s.state.borrow();
                if st.shut_down {
                    return;
                }
                st.ctx.timers.next_deadline()
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notify.notified() => {}
                    }
                }
                None => notify.notified().await,
            }
            let Some(s) = shared.upgrade() else { return };
            GroupCoordinator { shared: s }.fire_due_timers();
        }
    });
}
