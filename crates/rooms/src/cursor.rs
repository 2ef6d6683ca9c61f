//! One subscriber's subscriptions and delivery cursors.
//!
//! A subscriber (a socket, an SSE stream) follows jobs directly and workspaces
//! as a whole. Whatever the number of subscriptions that cover a job, the
//! subscriber has one cursor for it: the `seq` of the last event it was given.
//! Every committed event is then classified against that cursor, so an event
//! reaching it twice (through both rooms, through the live path and a replay)
//! is given once, and an event arriving early shows the gap to fill first.
//!
//! Cursors only move forward, whatever the calls (CONTRACT §7, "exactly once
//! per socket"): a repeated subscribe with an older `since` keeps the cursor,
//! and a job the subscriber stopped following keeps its last `seq` (up to
//! [`RETIRED_LIMIT`] such jobs), so subscribing again never sends an event
//! twice or out of order.

/// Jobs no longer followed whose last delivered `seq` a subscriber remembers;
/// past this, the longest unfollowed is forgotten. About 40 bytes each.
pub const RETIRED_LIMIT: usize = 10_000;

use std::collections::{HashMap, VecDeque};

/// The maps read for every event and subscriber: foldhash (seeded per map,
/// as hashbrown's default) costs a fraction of SipHash on 16-byte job ids.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;
use uuid::Uuid;

use crate::horizon::Horizon;

/// The part of an event that delivery decisions look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKey<'a> {
    /// The job.
    pub job_id: Uuid,
    /// The job's workspace.
    pub workspace_id: &'a str,
    /// The event's position in the job.
    pub seq: i64,
    /// The commit order of its transaction, where known (see [`Horizon`]).
    pub order: Option<i64>,
}

/// A `since` that cannot be honoured in order: events after it up to
/// `skipped_to` were never given to this subscriber, and later ones (up to
/// `delivered`) already were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable {
    /// What was asked.
    pub since: i64,
    /// The events skipped end here (a snapshot started after them).
    pub skipped_to: i64,
    /// The newest event given.
    pub delivered: i64,
}

/// What to do with an event for this subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No subscription covers the job.
    Ignore,
    /// A subscription that covers it is being set up: keep it until activation.
    Pending,
    /// Already given (`seq` ≤ cursor).
    Duplicate,
    /// The next one (`seq` = cursor + 1): give it, then [`Subscriptions::advance`].
    Deliver,
    /// Events `after + 1 .. seq` are missing: fetch them from the store first.
    Gap {
        /// The cursor: the last `seq` given.
        after: i64,
    },
    /// A job of a followed workspace with no cursor yet, and an event its
    /// snapshot did not see: read from the store the job's last `seq` the
    /// snapshot saw ([`Subscriptions::horizon`]), start the cursor there with
    /// [`Subscriptions::start`], then classify again.
    Resolve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Active,
}

#[derive(Debug, Clone)]
struct Cursor {
    workspace_id: Arc<str>,
    /// The position: events after it are wanted.
    seq: i64,
    /// The highest `seq` actually given (0 if none): never sent again. The
    /// position may be above it when a snapshot skipped older events.
    delivered: i64,
    /// The position events have been given from, without a gap, up to `delivered`.
    start: i64,
    /// Whether the client chose `start` (a job subscription's `since`, or
    /// its snapshot), rather than a workspace snapshot choosing it.
    chosen: bool,
}

/// The subscriptions and cursors of one subscriber.
///
/// In declaration order (`repr(C)`): the maps every event is classified
/// against come first, to share the cache lines a delivery reads.
#[derive(Debug, Default)]
#[repr(C)]
pub struct Subscriptions {
    jobs: Map<Uuid, State>,
    /// Per job: the last `seq` given. A job of a followed workspace without a
    /// cursor was created after the workspace subscription, so it starts at 0.
    cursors: Map<Uuid, Cursor>,
    workspaces: Map<Arc<str>, State>,
    /// The last `seq` given for jobs no longer followed, so that following
    /// them again never goes back; oldest first in `retired_order`.
    retired: Map<Uuid, (i64, u64)>,
    /// Per followed workspace: what its snapshot saw. Jobs that were finished
    /// at the snapshot get no cursor; their later events are placed with it.
    horizons: Map<Arc<str>, Arc<Horizon>>,
    retired_order: VecDeque<(Uuid, u64)>,
    retired_stamp: u64,
}

impl Subscriptions {
    /// Marks a job subscription as being set up (events for it are held, not dropped).
    pub fn begin_job(&mut self, job_id: Uuid) {
        self.jobs.entry(job_id).or_insert(State::Pending);
    }

    /// Marks a workspace subscription as being set up.
    pub fn begin_workspace(&mut self, workspace_id: &str) {
        if !self.workspaces.contains_key(workspace_id) {
            self.workspaces.insert(workspace_id.into(), State::Pending);
        }
    }

    /// Drops a subscription whose set-up failed (it stays if it was active before).
    pub fn abort_job(&mut self, job_id: Uuid) {
        if self.jobs.get(&job_id) == Some(&State::Pending) {
            self.jobs.remove(&job_id);
        }
    }

    /// Drops a workspace subscription whose set-up failed.
    pub fn abort_workspace(&mut self, workspace_id: &str) {
        if self.workspaces.get(workspace_id) == Some(&State::Pending) {
            self.workspaces.remove(workspace_id);
        }
    }

    /// Activates a job subscription and returns the cursor: the subscriber
    /// needs every event after it. A new cursor starts at `since` (the
    /// client's replay point) or else at `last_seq`; an existing one is kept
    /// without `since`, and moved to `since` with it. Never below what was
    /// already given: nothing is sent twice, nothing goes back in order.
    pub fn activate_job(
        &mut self,
        job_id: Uuid,
        workspace_id: &str,
        last_seq: i64,
        since: Option<i64>,
    ) -> Result<i64, Unreachable> {
        if let Some(cursor) = self.cursors.get_mut(&job_id) {
            if let Some(since) = since {
                // Events after `since` up to `start` were never given, and events
                // after `start` were: the first cannot be sent in order any more.
                if since < cursor.start && cursor.delivered > cursor.start && !cursor.chosen {
                    return Err(Unreachable { since, skipped_to: cursor.start, delivered: cursor.delivered });
                }
                let target = since.max(cursor.delivered);
                if target < cursor.seq {
                    cursor.start = target;
                }
                cursor.seq = target;
                cursor.chosen = true;
            }
            self.jobs.insert(job_id, State::Active);
            return Ok(cursor.seq);
        }
        self.jobs.insert(job_id, State::Active);
        let given = self.unretire(job_id);
        let seq = since.unwrap_or(last_seq).max(given);
        let workspace_id = self.workspace_key(workspace_id);
        self.cursors.insert(job_id, Cursor { workspace_id, seq, delivered: given, start: seq, chosen: true });
        Ok(seq)
    }

    /// Activates a workspace subscription with `baseline`, the `lastSeq` of
    /// the jobs its snapshot needs cursors for (the unfinished ones and those
    /// listed in the ack), and `horizon`, what the snapshot saw, which places
    /// the events of every other job. Jobs with a cursor already keep it.
    /// Without a horizon, a job without a cursor starts at 0.
    pub fn activate_workspace(
        &mut self,
        workspace_id: &str,
        baseline: impl IntoIterator<Item = (Uuid, i64)>,
        horizon: Option<Horizon>,
    ) {
        let key = self.workspace_key(workspace_id);
        self.workspaces.insert(key.clone(), State::Active);
        match horizon {
            Some(horizon) => self.horizons.insert(key.clone(), Arc::new(horizon)),
            None => self.horizons.remove(&key),
        };
        for (job_id, last_seq) in baseline {
            if !self.cursors.contains_key(&job_id) {
                let seq = last_seq;
                let delivered = self.unretire(job_id);
                let seq = seq.max(delivered);
                self.cursors
                    .insert(job_id, Cursor { workspace_id: key.clone(), seq, delivered, start: seq, chosen: false });
            }
        }
    }

    /// Remembers the highest `seq` given for a job no longer followed.
    /// Each entry carries a stamp; a queue entry whose stamp no longer matches
    /// (the job was followed and left again since) is skipped.
    fn retire(&mut self, job_id: Uuid, seq: i64) {
        self.retired_stamp += 1;
        self.retired.insert(job_id, (seq, self.retired_stamp));
        self.retired_order.push_back((job_id, self.retired_stamp));
        while self.retired.len() > RETIRED_LIMIT {
            let Some((oldest, stamp)) = self.retired_order.pop_front() else { break };
            if self.retired.get(&oldest).is_some_and(|(_, s)| *s == stamp) {
                self.retired.remove(&oldest);
            }
        }
        // Stale entries (jobs followed again) are dropped once they outnumber the live ones.
        if self.retired_order.len() > 2 * self.retired.len().max(64) {
            let retired = &self.retired;
            self.retired_order.retain(|(job, stamp)| retired.get(job).is_some_and(|(_, s)| s == stamp));
        }
    }

    /// Takes a retired job's last given `seq` back (0 if none).
    fn unretire(&mut self, job_id: Uuid) -> i64 {
        self.retired.remove(&job_id).map_or(0, |(seq, _)| seq)
    }

    /// Ends a job subscription; returns whether there was one. The cursor stays
    /// while the job's workspace is followed.
    pub fn unsubscribe_job(&mut self, job_id: Uuid) -> bool {
        let existed = self.jobs.remove(&job_id).is_some();
        let keep = self.cursors.get(&job_id).is_some_and(|c| self.workspace_active(&c.workspace_id));
        if !keep {
            if let Some(cursor) = self.cursors.remove(&job_id) {
                self.retire(job_id, cursor.delivered);
            }
        }
        existed
    }

    /// Ends a workspace subscription; returns whether there was one.
    pub fn unsubscribe_workspace(&mut self, workspace_id: &str) -> bool {
        let existed = self.workspaces.remove(workspace_id).is_some();
        self.horizons.remove(workspace_id);
        let jobs = &self.jobs;
        let mut left = Vec::new();
        self.cursors.retain(|job, c| {
            let keep = &*c.workspace_id != workspace_id || jobs.get(job) == Some(&State::Active);
            if !keep {
                left.push((*job, c.delivered));
            }
            keep
        });
        for (job, seq) in left {
            self.retire(job, seq);
        }
        existed
    }

    /// Classifies a committed event.
    pub fn classify(&self, event: EventKey<'_>) -> Verdict {
        let job = self.jobs.get(&event.job_id);
        // A followed job decides alone; the workspace is looked up only when it does not.
        if job != Some(&State::Active) {
            let workspace = self.workspaces.get(event.workspace_id);
            if workspace != Some(&State::Active) {
                return if job.is_some() || workspace.is_some() { Verdict::Pending } else { Verdict::Ignore };
            }
        }
        let cursor = match self.cursors.get(&event.job_id) {
            Some(c) => c.seq,
            None => match self.horizons.get(event.workspace_id) {
                // Committed before the snapshot: not for this subscriber.
                Some(horizon) if event.order.is_some_and(|o| horizon.saw(o)) => return Verdict::Duplicate,
                // The job's first event, after the snapshot: a new job.
                Some(_) if event.seq == 1 && event.order.is_some() && !self.retired.contains_key(&event.job_id) => 0,
                Some(_) => return Verdict::Resolve,
                None => self.retired.get(&event.job_id).map_or(0, |(delivered, _)| *delivered),
            },
        };
        match event.seq - cursor {
            d if d <= 0 => Verdict::Duplicate,
            1 => Verdict::Deliver,
            _ => Verdict::Gap { after: cursor },
        }
    }

    /// Starts the cursor of a job followed through its workspace at `seq`, the
    /// last one its workspace's snapshot saw (after [`Verdict::Resolve`]).
    /// An existing cursor is kept.
    pub fn start(&mut self, job_id: Uuid, workspace_id: &str, seq: i64) {
        if !self.cursors.contains_key(&job_id) {
            let delivered = self.unretire(job_id);
            let seq = seq.max(delivered);
            let workspace_id = self.workspace_key(workspace_id);
            self.cursors.insert(job_id, Cursor { workspace_id, seq, delivered, start: seq, chosen: false });
        }
    }

    /// What the snapshot of a followed workspace saw.
    pub fn horizon(&self, workspace_id: &str) -> Option<Arc<Horizon>> {
        self.horizons.get(workspace_id).cloned()
    }

    /// Records that `event` was given: its `seq` becomes the job's cursor.
    pub fn advance(&mut self, event: EventKey<'_>) {
        if !self.advance_existing(event.job_id, event.seq) {
            self.unretire(event.job_id);
            let workspace_id = self.workspace_key(event.workspace_id);
            let start = event.seq - 1;
            self.cursors.insert(
                event.job_id,
                Cursor { workspace_id, seq: event.seq, delivered: event.seq, start, chosen: false },
            );
        }
    }

    /// Records that the events of a job with a cursor were given up to `seq`,
    /// as [`Subscriptions::advance`] for each of them in turn would (for a
    /// caller that keeps a job's position aside while it delivers in order,
    /// then writes it back). False, and nothing changes, if the job has no
    /// cursor.
    pub fn advance_existing(&mut self, job_id: Uuid, seq: i64) -> bool {
        match self.cursors.get_mut(&job_id) {
            Some(cursor) => {
                cursor.seq = cursor.seq.max(seq);
                cursor.delivered = cursor.delivered.max(seq);
                true
            }
            None => false,
        }
    }

    /// The last `seq` given for a job, if the subscriber follows it.
    pub fn cursor(&self, job_id: Uuid) -> Option<i64> {
        self.cursors.get(&job_id).map(|c| c.seq)
    }

    /// Every job with a cursor, for a full resynchronisation.
    pub fn job_cursors(&self) -> Vec<(Uuid, i64)> {
        self.cursors.iter().map(|(job, c)| (*job, c.seq)).collect()
    }

    /// The active job subscriptions.
    pub fn active_jobs(&self) -> Vec<Uuid> {
        self.jobs.iter().filter(|(_, s)| **s == State::Active).map(|(j, _)| *j).collect()
    }

    /// Whether a subscription is still being set up.
    pub fn has_pending(&self) -> bool {
        self.jobs.values().chain(self.workspaces.values()).any(|s| *s == State::Pending)
    }

    /// The active workspace subscriptions.
    pub fn active_workspaces(&self) -> Vec<Arc<str>> {
        self.workspaces.iter().filter(|(_, s)| **s == State::Active).map(|(w, _)| w.clone()).collect()
    }

    /// Whether any subscription is active or being set up.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.workspaces.is_empty()
    }

    /// How many per-job positions are held (cursors, and jobs no longer
    /// followed): the subscriber's memory that grows with jobs.
    pub fn held(&self) -> usize {
        self.cursors.len() + self.retired.len()
    }

    /// How many job and workspace subscriptions there are.
    pub fn counts(&self) -> (usize, usize) {
        (self.jobs.len(), self.workspaces.len())
    }

    fn workspace_active(&self, workspace_id: &str) -> bool {
        self.workspaces.get(workspace_id) == Some(&State::Active)
    }

    /// Shares the workspace id string with an existing subscription where possible.
    fn workspace_key(&self, workspace_id: &str) -> Arc<str> {
        self.workspaces.get_key_value(workspace_id).map_or_else(|| workspace_id.into(), |(k, _)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &str = "ws-1";

    fn key(job: Uuid, seq: i64) -> EventKey<'static> {
        EventKey { job_id: job, workspace_id: WS, seq, order: None }
    }

    fn job(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn events_of_unfollowed_jobs_are_ignored() {
        let subs = Subscriptions::default();
        assert_eq!(subs.classify(key(job(1), 1)), Verdict::Ignore);
    }

    #[test]
    fn a_job_subscription_delivers_after_the_snapshot_seq_in_order() {
        let mut subs = Subscriptions::default();
        subs.begin_job(job(1));
        assert_eq!(subs.activate_job(job(1), WS, 3, None), Ok(3));
        assert_eq!(subs.classify(key(job(1), 3)), Verdict::Duplicate);
        assert_eq!(subs.classify(key(job(1), 4)), Verdict::Deliver);
        subs.advance(key(job(1), 4));
        assert_eq!(subs.classify(key(job(1), 6)), Verdict::Gap { after: 4 });
    }

    #[test]
    fn events_during_set_up_are_held_as_pending() {
        let mut subs = Subscriptions::default();
        subs.begin_workspace(WS);
        assert_eq!(subs.classify(key(job(1), 2)), Verdict::Pending);
        subs.abort_workspace(WS);
        assert_eq!(subs.classify(key(job(1), 2)), Verdict::Ignore);
    }

    #[test]
    fn since_sets_a_new_cursor() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.activate_job(job(1), WS, 10, Some(2)), Ok(2));
        assert_eq!(subs.classify(key(job(1), 3)), Verdict::Deliver);
    }

    #[test]
    fn a_repeated_subscribe_never_moves_the_cursor_back() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.activate_job(job(1), WS, 7, Some(2)), Ok(2));
        for seq in 3..=7 {
            subs.advance(key(job(1), seq));
        }
        assert_eq!(subs.activate_job(job(1), WS, 7, Some(2)), Ok(7), "same since again");
        assert_eq!(subs.activate_job(job(1), WS, 7, Some(0)), Ok(7), "an older since");
        assert_eq!(subs.activate_job(job(1), WS, 7, None), Ok(7), "no since");
        assert_eq!(subs.classify(key(job(1), 5)), Verdict::Duplicate);
        assert_eq!(subs.activate_job(job(1), WS, 9, Some(8)), Ok(8), "a later since moves it forward");
    }

    #[test]
    fn following_a_job_again_resumes_after_what_was_given() {
        let mut subs = Subscriptions::default();
        let _ = subs.activate_job(job(1), WS, 0, Some(0));
        for seq in 1..=5 {
            subs.advance(key(job(1), seq));
        }
        assert!(subs.unsubscribe_job(job(1)));
        assert_eq!(subs.classify(key(job(1), 6)), Verdict::Ignore);
        assert_eq!(subs.activate_job(job(1), WS, 9, Some(0)), Ok(5), "since 0 again: from 6 on");
        assert!(subs.unsubscribe_job(job(1)));
        assert_eq!(subs.activate_job(job(1), WS, 9, None), Ok(9), "no since: from the snapshot on");
        subs.unsubscribe_job(job(1));
        subs.activate_workspace(WS, [(job(1), 9)], None);
        assert_eq!(subs.cursor(job(1)), Some(9), "a workspace snapshot starts at its own position");
        assert_eq!(subs.activate_job(job(1), WS, 9, Some(0)), Ok(5), "since goes back only to what was given");
    }

    #[test]
    fn since_may_go_back_over_what_a_snapshot_skipped_but_was_never_given() {
        let mut subs = Subscriptions::default();
        subs.activate_workspace(WS, [(job(1), 5)], None);
        assert_eq!(subs.activate_job(job(1), WS, 5, Some(0)), Ok(0), "nothing of job 1 was given yet");
    }

    #[test]
    fn a_since_behind_events_already_given_after_a_skip_is_refused() {
        let mut subs = Subscriptions::default();
        subs.activate_workspace(WS, [(job(1), 11)], None);
        subs.advance(key(job(1), 12));
        let refused = subs.activate_job(job(1), WS, 12, Some(2));
        assert_eq!(refused, Err(Unreachable { since: 2, skipped_to: 11, delivered: 12 }));
        assert_eq!(subs.activate_job(job(1), WS, 12, Some(11)), Ok(12), "from the skip on is fine");
    }

    fn ordered(job: Uuid, seq: i64, order: i64) -> EventKey<'static> {
        EventKey { job_id: job, workspace_id: WS, seq, order: Some(order) }
    }

    #[test]
    fn a_workspace_horizon_places_events_of_jobs_without_a_cursor() {
        let mut subs = Subscriptions::default();
        subs.begin_workspace(WS);
        // Job 1 was live at the snapshot (counter 100); job 2 was finished.
        subs.activate_workspace(WS, [(job(1), 4)], Some(Horizon::Counter(100)));
        assert_eq!(subs.classify(ordered(job(1), 5, 90)), Verdict::Deliver, "live jobs use their cursor");
        assert_eq!(subs.classify(ordered(job(2), 9, 99)), Verdict::Duplicate, "seen by the snapshot");
        assert_eq!(subs.classify(ordered(job(2), 10, 101)), Verdict::Resolve, "after it: where did job 2 stand?");
        subs.start(job(2), WS, 9);
        assert_eq!(subs.classify(ordered(job(2), 10, 101)), Verdict::Deliver);
        assert_eq!(subs.classify(ordered(job(3), 1, 102)), Verdict::Deliver, "a new job starts at 0");
        assert_eq!(subs.classify(ordered(job(3), 2, 102)), Verdict::Resolve, "a new job seen out of order");
        assert_eq!(subs.classify(key(job(4), 3)), Verdict::Resolve, "an event without an order");
        assert_eq!(subs.cursor(job(3)), None, "no cursor is made for what was not given");
    }

    #[test]
    fn the_memory_of_unfollowed_jobs_is_bounded() {
        let mut subs = Subscriptions::default();
        for n in 0..(RETIRED_LIMIT as u128 + 10) {
            let _ = subs.activate_job(job(n), WS, 1, None);
            subs.unsubscribe_job(job(n));
        }
        assert_eq!(subs.retired.len(), RETIRED_LIMIT);
        assert!(!subs.retired.contains_key(&job(0)));
    }

    #[test]
    fn a_workspace_subscription_starts_known_jobs_at_their_snapshot_and_new_jobs_at_zero() {
        let mut subs = Subscriptions::default();
        subs.begin_workspace(WS);
        subs.activate_workspace(WS, [(job(1), 5)], None);
        assert_eq!(subs.classify(key(job(1), 5)), Verdict::Duplicate);
        assert_eq!(subs.classify(key(job(1), 6)), Verdict::Deliver);
        assert_eq!(subs.classify(key(job(2), 1)), Verdict::Deliver);
        assert_eq!(subs.classify(key(job(2), 3)), Verdict::Gap { after: 0 });
    }

    #[test]
    fn a_subscriber_in_both_rooms_gets_each_event_once() {
        let mut subs = Subscriptions::default();
        subs.activate_workspace(WS, [(job(1), 1)], None);
        let _ = subs.activate_job(job(1), WS, 1, None);
        assert_eq!(subs.classify(key(job(1), 2)), Verdict::Deliver);
        subs.advance(key(job(1), 2));
        assert_eq!(subs.classify(key(job(1), 2)), Verdict::Duplicate, "second copy");
    }

    #[test]
    fn leaving_one_room_keeps_the_other_and_its_cursor() {
        let mut subs = Subscriptions::default();
        subs.activate_workspace(WS, [(job(1), 4)], None);
        let _ = subs.activate_job(job(1), WS, 4, None);
        assert!(subs.unsubscribe_workspace(WS));
        assert_eq!(subs.cursor(job(1)), Some(4));
        assert_eq!(subs.classify(key(job(2), 1)), Verdict::Ignore);
        assert!(subs.unsubscribe_job(job(1)));
        assert_eq!(subs.cursor(job(1)), None);
        assert_eq!(subs.classify(key(job(1), 5)), Verdict::Ignore);
        assert!(subs.is_empty());
    }

    #[test]
    fn leaving_the_job_room_keeps_the_cursor_while_the_workspace_is_followed() {
        let mut subs = Subscriptions::default();
        subs.activate_workspace(WS, [], None);
        let _ = subs.activate_job(job(1), WS, 7, None);
        subs.unsubscribe_job(job(1));
        assert_eq!(subs.classify(key(job(1), 8)), Verdict::Deliver);
        assert_eq!(subs.classify(key(job(1), 7)), Verdict::Duplicate);
    }
}
