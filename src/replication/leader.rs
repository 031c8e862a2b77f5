//! A partition leader's rules, beside the state they read: each follower's progress (its
//! durable log end, when it was last caught up), the high-watermark limit over the ISR, and
//! which ISR change to ask the controller for. Pure: the caller passes the clock and the log's
//! offsets; must never touch the log, the network or the quorum itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_cluster::state::BrokerId;

/// What the leader knows of one follower.
#[derive(Debug, Clone)]
struct Progress {
    /// The offset of its last fetch: its durable log end (a follower fetches from there only
    /// once everything below is durable on it). None until it fetched under this leadership.
    durable_end: Option<i64>,
    /// The last time it had everything the leader had (Kafka's lastCaughtUpTime).
    last_caught_up: Instant,
    /// When it last fetched, and the leader's log end then.
    last_fetch: Option<(Instant, i64)>,
    /// The high watermark in the last answer to it, so a higher one is sent at once.
    high_watermark_sent: i64,
    /// The broker epoch (registration) its last fetch came under, as this broker's metadata
    /// had it then (KIP-903); None until it fetched, or when the metadata does not know it.
    broker_epoch: Option<i64>,
}

impl Progress {
    /// A follower not heard from under this leadership, counted caught up at `now`.
    fn new(now: Instant) -> Self {
        Progress {
            durable_end: None,
            last_caught_up: now,
            last_fetch: None,
            high_watermark_sent: -1,
            broker_epoch: None,
        }
    }
}

/// How the controller answered an ISR change (`Leader::isr_change_answered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsrAnswer {
    /// Committed: the replicas it adds are in the ISR once this broker applies the metadata.
    Committed,
    /// Refused by the committed state (a stale leader epoch, a fenced replica): nothing
    /// changed.
    Refused,
    /// Unknown (a timeout, a lost connection, a quorum error): it may have been committed.
    /// The same change (the same broker epochs too) is asked again until the answer is known.
    Unknown(IsrChange),
}

/// An ISR change to ask the controller for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    /// The new ISR.
    pub isr: Vec<BrokerId>,
    /// The broker epoch each replica it adds fetched under (KIP-903): the controller refuses
    /// the change if one of them has registered again since.
    pub added_epochs: Vec<(BrokerId, i64)>,
}

/// A follower fetched that is not a replica of the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("broker {0} is not a replica of this partition")]
pub struct NotAReplica(pub BrokerId);

/// The leader's side of one partition, for one leader epoch.
#[derive(Debug, Clone)]
pub struct Leader {
    /// This broker.
    self_id: BrokerId,
    /// The epoch this broker leads at.
    pub leader_epoch: i32,
    /// Every replica, this one included.
    pub replicas: Vec<BrokerId>,
    /// The committed ISR.
    pub isr: Vec<BrokerId>,
    /// Replicas an ISR change adds, from the moment it is asked until this broker applies an
    /// ISR (or the controller refuses it): they count for the high watermark (Kafka's maximal
    /// ISR), so a replica the controller commits into the ISR never lacks a record the high
    /// watermark covers, even between the commit and its arrival here, or after an answer
    /// that was lost.
    pending_additions: Vec<BrokerId>,
    /// An ISR change whose answer was lost (it may be committed): asked again, the same,
    /// until the controller says committed or refused, or another ISR arrives.
    unresolved: Option<IsrChange>,
    /// The log end when this leadership began (its epoch's first offset): a replica joins the
    /// ISR only with everything before it, which is all a previous leader may have committed.
    epoch_start_offset: i64,
    /// The topic's `min.insync.replicas`.
    pub min_insync_replicas: usize,
    followers: HashMap<BrokerId, Progress>,
    /// An ISR change was sent to the controller and has not come back yet.
    pub isr_change_pending: bool,
}

impl Leader {
    /// Leadership at `leader_epoch` begins with this log ending at `epoch_start_offset`: every
    /// follower counts as caught up now (Kafka's rule), so none leaves the ISR before it had
    /// `replica.lag.time.max.ms` to fetch.
    pub fn new(
        self_id: BrokerId,
        leader_epoch: i32,
        replicas: Vec<BrokerId>,
        isr: Vec<BrokerId>,
        min_insync_replicas: usize,
        epoch_start_offset: i64,
        now: Instant,
    ) -> Leader {
        let followers = replicas
            .iter()
            .filter(|&&id| id != self_id)
            .map(|&id| (id, Progress::new(now)))
            .collect();
        Leader {
            self_id,
            leader_epoch,
            replicas,
            isr,
            pending_additions: Vec::new(),
            unresolved: None,
            epoch_start_offset,
            min_insync_replicas,
            followers,
            isr_change_pending: false,
        }
    }

    /// The committed replicas, ISR (or config) changed within the same leader epoch: the
    /// progress of every remaining follower is kept; a replica a reassignment adds starts as
    /// a returning follower does (counted caught up now, outside the ISR until it reaches the
    /// high watermark); a removed one is forgotten. A follower that left the ISR (the
    /// controller fenced it: it died or restarted) starts over too: what its old incarnation
    /// fetched says nothing of the log its next one has.
    pub fn update(
        &mut self,
        replicas: Vec<BrokerId>,
        isr: Vec<BrokerId>,
        min_insync_replicas: usize,
        now: Instant,
    ) {
        if isr != self.isr {
            // A committed ISR arrived: it settles what was asked (the replicas a committed
            // change added are members now) or supersedes it.
            self.isr_change_pending = false;
            self.pending_additions.clear();
            self.unresolved = None;
            for id in &self.isr {
                if !isr.contains(id) {
                    if let Some(progress) = self.followers.get_mut(id) {
                        *progress = Progress::new(now);
                    }
                }
            }
        }
        self.followers.retain(|id, _| replicas.contains(id));
        for &id in &replicas {
            if id != self.self_id {
                self.followers
                    .entry(id)
                    .or_insert_with(|| Progress::new(now));
            }
        }
        self.replicas = replicas;
        self.isr = isr;
        self.min_insync_replicas = min_insync_replicas;
    }

    /// More than one replica: acks=all waits for the ISR, not only for this log.
    pub fn is_replicated(&self) -> bool {
        self.replicas.len() > 1
    }

    /// The cap on the high watermark: the smallest durable end among the other ISR members
    /// and the replicas an ISR change in flight adds (0 for one that has not fetched yet: the
    /// high watermark then stays where it is); None when this leader is alone in its ISR, so
    /// the high watermark is its own durable end.
    pub fn high_watermark_limit(&self) -> Option<i64> {
        self.isr
            .iter()
            .chain(&self.pending_additions)
            .filter(|&&id| id != self.self_id)
            .map(|id| {
                self.followers
                    .get(id)
                    .and_then(|p| p.durable_end)
                    .unwrap_or(0)
            })
            .min()
    }

    /// A follower fetched from `fetch_offset` while this log ended at `log_end`, registered
    /// under `broker_epoch` as far as this broker knows: records its durable end and when it
    /// was caught up (Kafka's two rules: it fetched from the log end, or from where the log
    /// ended at its previous fetch, which then counts as that fetch's time). A fetch under
    /// another broker epoch than the last is a new incarnation: what the old one fetched says
    /// nothing of its log, so its progress starts over.
    pub fn on_fetch(
        &mut self,
        follower: BrokerId,
        fetch_offset: i64,
        log_end: i64,
        now: Instant,
        broker_epoch: Option<i64>,
    ) -> Result<(), NotAReplica> {
        let progress = self
            .followers
            .get_mut(&follower)
            .ok_or(NotAReplica(follower))?;
        if progress.broker_epoch.is_some() && progress.broker_epoch != broker_epoch {
            *progress = Progress::new(now);
        }
        progress.broker_epoch = broker_epoch;
        if fetch_offset >= log_end {
            progress.last_caught_up = now;
        } else if let Some((at, end_then)) = progress.last_fetch {
            if fetch_offset >= end_then {
                progress.last_caught_up = progress.last_caught_up.max(at);
            }
        }
        progress.last_fetch = Some((now, log_end));
        progress.durable_end = Some(fetch_offset);
        Ok(())
    }

    /// An ISR change to `wanted` was sent to the controller: the replicas it adds count for
    /// the high watermark from now on (with any an earlier change may still add).
    pub fn asked_isr(&mut self, wanted: &[BrokerId]) {
        self.isr_change_pending = true;
        for &id in wanted {
            if !self.isr.contains(&id) && !self.pending_additions.contains(&id) {
                self.pending_additions.push(id);
            }
        }
    }

    /// The ISR change in flight was answered. Committed: its additions keep counting until
    /// the committed ISR is applied here (`update`). Refused: they stop. Unknown: they keep
    /// counting and the same change is asked again ([`Leader::unresolved_isr`]).
    pub fn isr_change_answered(&mut self, answer: IsrAnswer) {
        self.isr_change_pending = false;
        match answer {
            IsrAnswer::Committed => self.unresolved = None,
            IsrAnswer::Refused => {
                self.unresolved = None;
                self.pending_additions.clear();
            }
            IsrAnswer::Unknown(asked) => self.unresolved = Some(asked),
        }
    }

    /// An ISR change whose answer was lost, to ask again as it was.
    pub fn unresolved_isr(&self) -> Option<IsrChange> {
        self.unresolved.clone()
    }

    /// The change to `wanted`: the ISR with the broker epoch each replica it adds last
    /// fetched under (a replica whose epoch is unknown goes without one).
    pub fn change_to(&self, wanted: Vec<BrokerId>) -> IsrChange {
        let added_epochs = wanted
            .iter()
            .filter(|id| !self.isr.contains(id))
            .filter_map(|id| {
                let epoch = self.followers.get(id).and_then(|p| p.broker_epoch)?;
                Some((*id, epoch))
            })
            .collect();
        IsrChange {
            isr: wanted,
            added_epochs,
        }
    }

    /// Whether `follower` should hear `high_watermark` at once (higher than it was last told),
    /// and remembers that it will.
    pub fn take_high_watermark_news(&mut self, follower: BrokerId, high_watermark: i64) -> bool {
        match self.followers.get_mut(&follower) {
            Some(progress) if high_watermark > progress.high_watermark_sent => {
                progress.high_watermark_sent = high_watermark;
                true
            }
            _ => false,
        }
    }

    /// The ISR to ask the controller for, if it should change: members not caught up for more
    /// than `lag_max` leave; replicas outside whose durable end is at the high watermark
    /// (`high_watermark`, now) and at this epoch's first offset, and that are not lagging,
    /// join (Kafka's isFollowerInSync: judged on what the follower has now, never on a flag
    /// from an earlier fetch, which a restarted follower would not deserve). Never drops this
    /// leader.
    pub fn wanted_isr(
        &self,
        lag_max: Duration,
        now: Instant,
        high_watermark: i64,
    ) -> Option<Vec<BrokerId>> {
        let join_at = high_watermark.max(self.epoch_start_offset);
        let lagging = |id: &BrokerId| {
            self.followers
                .get(id)
                .is_some_and(|p| now.saturating_duration_since(p.last_caught_up) > lag_max)
        };
        let mut wanted: Vec<BrokerId> = self
            .isr
            .iter()
            .copied()
            .filter(|id| *id == self.self_id || !lagging(id))
            .collect();
        for id in &self.replicas {
            let rejoins = self
                .followers
                .get(id)
                .and_then(|p| p.durable_end)
                .is_some_and(|end| end >= join_at);
            if !wanted.contains(id) && rejoins && !lagging(id) {
                wanted.push(*id);
            }
        }
        (wanted != self.isr).then_some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(now: Instant) -> Leader {
        Leader::new(1, 4, vec![1, 2, 3], vec![1, 2, 3], 2, 0, now)
    }

    #[test]
    fn the_high_watermark_limit_is_the_slowest_in_sync_follower() {
        let now = Instant::now();
        let mut leader = leader(now);
        assert_eq!(leader.high_watermark_limit(), Some(0));
        leader.on_fetch(2, 10, 12, now, None).unwrap();
        assert_eq!(leader.high_watermark_limit(), Some(0), "3 has not fetched");
        leader.on_fetch(3, 7, 12, now, None).unwrap();
        assert_eq!(leader.high_watermark_limit(), Some(7));
        leader.update(vec![1, 2, 3], vec![1, 2], 2, now);
        assert_eq!(leader.high_watermark_limit(), Some(10));
        leader.update(vec![1, 2, 3], vec![1], 2, now);
        assert_eq!(
            leader.high_watermark_limit(),
            None,
            "alone: its own durable end"
        );
        assert_eq!(leader.on_fetch(9, 0, 12, now, None), Err(NotAReplica(9)));
    }

    #[test]
    fn a_follower_behind_for_longer_than_the_lag_leaves_and_rejoins_at_the_high_watermark() {
        let start = Instant::now();
        let lag = Duration::from_millis(100);
        let at = |ms| start + Duration::from_millis(ms);
        let mut leader = leader(start);
        assert_eq!(leader.wanted_isr(lag, at(50), 0), None);
        // 2 keeps fetching from the log end; 3 stops.
        leader.on_fetch(2, 5, 5, at(90), None).unwrap();
        leader.on_fetch(3, 5, 5, at(90), None).unwrap();
        leader.on_fetch(2, 9, 9, at(180), None).unwrap();
        assert_eq!(leader.wanted_isr(lag, at(185), 5), None);
        assert_eq!(leader.wanted_isr(lag, at(191), 5), Some(vec![1, 2]));
        leader.update(vec![1, 2, 3], vec![1, 2], 2, at(191));
        // Behind the log end but at where it ended at the previous fetch: caught up then.
        leader.on_fetch(2, 12, 14, at(250), None).unwrap();
        leader.on_fetch(2, 14, 20, at(340), None).unwrap();
        assert_eq!(leader.wanted_isr(lag, at(345), 14), None);
        // 3 comes back below the high watermark: not yet; at it: it rejoins.
        leader.on_fetch(2, 20, 20, at(349), None).unwrap();
        leader.on_fetch(3, 8, 20, at(350), None).unwrap();
        assert_eq!(leader.wanted_isr(lag, at(355), 14), None);
        leader.on_fetch(2, 20, 20, at(358), None).unwrap();
        leader.on_fetch(3, 20, 20, at(360), None).unwrap();
        assert_eq!(leader.wanted_isr(lag, at(365), 14), Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_reassignment_adds_a_follower_outside_the_isr_and_forgets_a_removed_one() {
        let start = Instant::now();
        let lag = Duration::from_millis(100);
        let at = |ms| start + Duration::from_millis(ms);
        let mut leader = Leader::new(1, 0, vec![1, 2], vec![1, 2], 1, 0, start);
        leader.on_fetch(2, 10, 10, at(1), None).unwrap();
        assert_eq!(leader.on_fetch(3, 0, 10, at(1), None), Err(NotAReplica(3)));
        // 3 is added: it counts toward nothing until it reaches the high watermark.
        leader.update(vec![2, 3, 1], vec![1, 2], 1, at(2));
        leader.on_fetch(3, 4, 10, at(3), None).unwrap();
        assert_eq!(leader.high_watermark_limit(), Some(10));
        assert_eq!(leader.wanted_isr(lag, at(4), 10), None);
        leader.on_fetch(2, 10, 10, at(5), None).unwrap();
        leader.on_fetch(3, 10, 10, at(5), None).unwrap();
        assert_eq!(leader.wanted_isr(lag, at(6), 10), Some(vec![1, 2, 3]));
        // The move completes without 2: it is no replica any more.
        leader.update(vec![3, 1], vec![1, 3], 1, at(7));
        assert_eq!(leader.on_fetch(2, 10, 10, at(8), None), Err(NotAReplica(2)));
        assert_eq!(leader.high_watermark_limit(), Some(10));
    }

    #[test]
    fn a_follower_joins_on_what_it_has_now_not_on_an_earlier_fetch() {
        // The chaos run that lost acknowledged records: a restarted follower fetched at the
        // high watermark of a leader elected a moment before (its high watermark not yet
        // moved), the high watermark then moved on, and the follower was still added.
        let start = Instant::now();
        let lag = Duration::from_millis(1000);
        let at = |ms| start + Duration::from_millis(ms);
        let mut leader = Leader::new(1, 1, vec![3, 1, 2], vec![1, 2], 2, 100, start);
        leader.on_fetch(3, 100, 100, at(1), None).unwrap();
        leader.on_fetch(2, 400, 400, at(2), None).unwrap();
        assert_eq!(
            leader.wanted_isr(lag, at(3), 400),
            None,
            "3 is 300 records behind the high watermark"
        );
        assert_eq!(leader.wanted_isr(lag, at(3), 100), Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_follower_below_the_epoch_start_does_not_join() {
        let start = Instant::now();
        let lag = Duration::from_millis(1000);
        let mut leader = Leader::new(1, 2, vec![1, 2, 3], vec![1, 2], 2, 50, start);
        // The high watermark lags behind the epoch start right after the election.
        leader.on_fetch(3, 40, 60, start, None).unwrap();
        assert_eq!(leader.wanted_isr(lag, start, 30), None);
        leader.on_fetch(3, 50, 60, start, None).unwrap();
        assert_eq!(leader.wanted_isr(lag, start, 30), Some(vec![1, 2, 3]));
    }

    #[test]
    fn an_addition_in_flight_caps_the_high_watermark_and_a_fenced_member_starts_over() {
        let start = Instant::now();
        let lag = Duration::from_millis(1000);
        let mut leader = Leader::new(1, 1, vec![1, 2, 3], vec![1, 2], 2, 0, start);
        leader.on_fetch(2, 90, 90, start, None).unwrap();
        leader.on_fetch(3, 50, 90, start, None).unwrap();
        assert_eq!(leader.high_watermark_limit(), Some(90));
        let wanted = leader.wanted_isr(lag, start, 50).unwrap();
        assert_eq!(wanted, vec![1, 2, 3]);
        leader.asked_isr(&wanted);
        assert_eq!(
            leader.high_watermark_limit(),
            Some(50),
            "3 counts from the moment it is asked for (maximal ISR)"
        );
        leader.isr_change_answered(IsrAnswer::Committed);
        assert_eq!(
            leader.high_watermark_limit(),
            Some(50),
            "committed, but not applied here yet: 3 still counts"
        );
        // Applied: 3 is a member. Then it is fenced (it restarted): its progress is
        // forgotten, and it joins again only by fetching at the high watermark.
        leader.update(vec![1, 2, 3], vec![1, 2, 3], 2, start);
        assert_eq!(leader.high_watermark_limit(), Some(50));
        leader.update(vec![1, 2, 3], vec![1, 2], 2, start);
        assert_eq!(leader.wanted_isr(lag, start, 50), None);
        leader.on_fetch(3, 50, 90, start, None).unwrap();
        assert_eq!(leader.wanted_isr(lag, start, 50), Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_refused_addition_stops_counting_and_a_lost_answer_is_asked_again() {
        let start = Instant::now();
        let lag = Duration::from_millis(1000);
        let mut leader = Leader::new(1, 1, vec![1, 2, 3], vec![1, 2], 2, 0, start);
        leader.on_fetch(2, 90, 90, start, None).unwrap();
        leader.on_fetch(3, 50, 90, start, None).unwrap();
        let wanted = leader.wanted_isr(lag, start, 50).unwrap();
        leader.asked_isr(&wanted);
        leader.isr_change_answered(IsrAnswer::Refused);
        assert_eq!(
            leader.high_watermark_limit(),
            Some(90),
            "refused: 3 is not a member"
        );
        assert_eq!(leader.unresolved_isr(), None);

        // The answer is lost: 3 keeps counting, and the same change is asked again.
        leader.asked_isr(&wanted);
        leader.isr_change_answered(IsrAnswer::Unknown(leader.change_to(wanted.clone())));
        assert_eq!(leader.high_watermark_limit(), Some(50));
        assert_eq!(leader.unresolved_isr().map(|c| c.isr), Some(wanted.clone()));
        assert!(!leader.isr_change_pending);
        // An unrelated metadata change with the same ISR settles nothing.
        leader.update(vec![1, 2, 3], vec![1, 2], 2, start);
        assert_eq!(leader.high_watermark_limit(), Some(50));
        leader.asked_isr(&wanted);
        leader.isr_change_answered(IsrAnswer::Committed);
        assert_eq!(leader.unresolved_isr(), None);
        assert_eq!(leader.high_watermark_limit(), Some(50));
        leader.update(vec![1, 2, 3], vec![1, 2, 3], 2, start);
        assert_eq!(leader.high_watermark_limit(), Some(50), "3 is a member now");
        leader.on_fetch(3, 90, 90, start, None).unwrap();
        assert_eq!(leader.high_watermark_limit(), Some(90));
    }

    #[test]
    fn a_change_names_the_epoch_an_added_replica_fetched_under_and_a_new_one_starts_over() {
        let start = Instant::now();
        let lag = Duration::from_millis(1000);
        let mut leader = Leader::new(1, 1, vec![1, 2, 3], vec![1, 2], 2, 0, start);
        leader.on_fetch(2, 90, 90, start, Some(2)).unwrap();
        leader.on_fetch(3, 90, 90, start, Some(3)).unwrap();
        let change = leader.change_to(leader.wanted_isr(lag, start, 90).unwrap());
        assert_eq!(change.isr, vec![1, 2, 3]);
        assert_eq!(
            change.added_epochs,
            vec![(3, 3)],
            "only the added replica, with its epoch"
        );
        // 3 registered again (epoch 40) and fetches from lower: its old progress is gone.
        leader.on_fetch(3, 60, 90, start, Some(40)).unwrap();
        assert_eq!(
            leader.wanted_isr(lag, start, 90),
            None,
            "60 is below the high watermark"
        );
        leader.on_fetch(3, 90, 90, start, Some(40)).unwrap();
        assert_eq!(
            leader
                .change_to(leader.wanted_isr(lag, start, 90).unwrap())
                .added_epochs,
            vec![(3, 40)]
        );
    }

    #[test]
    fn high_watermark_news_is_told_once() {
        let now = Instant::now();
        let mut leader = leader(now);
        assert!(leader.take_high_watermark_news(2, 0));
        assert!(!leader.take_high_watermark_news(2, 0));
        assert!(leader.take_high_watermark_news(2, 3));
        assert!(!leader.take_high_watermark_news(9, 3));
    }
}
