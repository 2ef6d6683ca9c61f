//! One subscriber's subscriptions and delivery cursors.
//!
//! A subscriber (a socket, an SSE stream) follows jobs directly and workspaces
//! as a whole. Whatever the number of subscriptions that cover a job, the
//! subscriber has one cursor for it: the `seq` of the last event it was given.
//! Every committed event is then classified against that cursor, so an event
//! reaching it twice (through both rooms, through the live path and a replay)
//! is given once, and an event arriving early shows the gap to fill first.

use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// The part of an event that delivery decisions look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKey<'a> {
    /// The job.
    pub job_id: Uuid,
    /// The job's workspace.
    pub workspace_id: &'a str,
    /// The event's position in the job.
    pub seq: i64,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Active,
}

#[derive(Debug, Clone)]
struct Cursor {
    workspace_id: Arc<str>,
    seq: i64,
}

/// The subscriptions and cursors of one subscriber.
#[derive(Debug, Default)]
pub struct Subscriptions {
    jobs: HashMap<Uuid, State>,
    workspaces: HashMap<Arc<str>, State>,
    /// Per job: the last `seq` given. A job of a followed workspace without a
    /// cursor was created after the workspace subscription, so it starts at 0.
    cursors: HashMap<Uuid, Cursor>,
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

    /// Activates a job subscription. `since` (the client's replay cursor) sets the
    /// cursor; without it, an existing cursor is kept, else it starts at `last_seq`.
    /// Returns the cursor: the subscriber needs every event after it.
    pub fn activate_job(&mut self, job_id: Uuid, workspace_id: &str, last_seq: i64, since: Option<i64>) -> i64 {
        self.jobs.insert(job_id, State::Active);
        let workspace_id = self.workspace_key(workspace_id);
        let cursor = self.cursors.entry(job_id).or_insert(Cursor { workspace_id, seq: last_seq });
        if let Some(since) = since {
            cursor.seq = since;
        }
        cursor.seq
    }

    /// Activates a workspace subscription with the workspace's jobs and their
    /// `lastSeq` as of the snapshot; jobs with a cursor already keep it.
    pub fn activate_workspace(&mut self, workspace_id: &str, baseline: impl IntoIterator<Item = (Uuid, i64)>) {
        let key = self.workspace_key(workspace_id);
        self.workspaces.insert(key.clone(), State::Active);
        for (job_id, last_seq) in baseline {
            self.cursors.entry(job_id).or_insert_with(|| Cursor { workspace_id: key.clone(), seq: last_seq });
        }
    }

    /// Ends a job subscription; returns whether there was one. The cursor stays
    /// while the job's workspace is followed.
    pub fn unsubscribe_job(&mut self, job_id: Uuid) -> bool {
        let existed = self.jobs.remove(&job_id).is_some();
        let keep = self.cursors.get(&job_id).is_some_and(|c| self.workspace_active(&c.workspace_id));
        if !keep {
            self.cursors.remove(&job_id);
        }
        existed
    }

    /// Ends a workspace subscription; returns whether there was one.
    pub fn unsubscribe_workspace(&mut self, workspace_id: &str) -> bool {
        let existed = self.workspaces.remove(workspace_id).is_some();
        let jobs = &self.jobs;
        self.cursors.retain(|job, c| &*c.workspace_id != workspace_id || jobs.get(job) == Some(&State::Active));
        existed
    }

    /// Classifies a committed event.
    pub fn classify(&self, event: EventKey<'_>) -> Verdict {
        let job = self.jobs.get(&event.job_id);
        let workspace = self.workspaces.get(event.workspace_id);
        if job != Some(&State::Active) && workspace != Some(&State::Active) {
            return if job.is_some() || workspace.is_some() { Verdict::Pending } else { Verdict::Ignore };
        }
        let cursor = self.cursors.get(&event.job_id).map_or(0, |c| c.seq);
        match event.seq - cursor {
            d if d <= 0 => Verdict::Duplicate,
            1 => Verdict::Deliver,
            _ => Verdict::Gap { after: cursor },
        }
    }

    /// Records that `event` was given: its `seq` becomes the job's cursor.
    pub fn advance(&mut self, event: EventKey<'_>) {
        match self.cursors.get_mut(&event.job_id) {
            Some(cursor) => cursor.seq = cursor.seq.max(event.seq),
            None => {
                let workspace_id = self.workspace_key(event.workspace_id);
                self.cursors.insert(event.job_id, Cursor { workspace_id, seq: event.seq });
            }
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
        EventKey { job_id: job, workspace_id: WS, seq }
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
        assert_eq!(subs.activate_job(job(1), WS, 3, None), 3);
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
    fn since_replaces_the_cursor() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.activate_job(job(1), WS, 10, Some(2)), 2);
        assert_eq!(subs.classify(key(job(1), 3)), Verdict::Deliver);
    }

    #[test]
    fn a_workspace_subscription_starts_known_jobs_at_their_snapshot_and_new_jobs_at_zero() {
        let mut subs = Subscriptions::default();
        subs.begin_workspace(WS);
        subs.activate_workspace(WS, [(job(1), 5)]);
        assert_eq!(subs.classify(key(job(1), 5)), Verdict::Duplicate);
        assert_eq!(subs.classify(key(job(1), 6)), Verdict::Deliver);
        assert_eq!(subs.classify(key(job(2), 1)), Verdict::Deliver);
        assert_eq!(subs.classify(key(job(2), 3)), Verdict::Gap { after: 0 });
    }

    #[test]
    fn a_subscriber_in_both_rooms_gets_each_event_once() {
        let mut subs = Subscriptions::default();
        subs.activate_workspace(WS, [(job(1), 1)]);
        subs.activate_job(job(1), WS, 1, None);
        assert_eq!(subs.classify(key(job(1), 2)), Verdict::Deliver);
        subs.advance(key(job(1), 2));
        assert_eq!(subs.classify(key(job(1), 2)), Verdict::Duplicate, "second copy");
    }

    #[test]
    fn leaving_one_room_keeps_the_other_and_its_cursor() {
        let mut subs = Subscriptions::default();
        subs.activate_workspace(WS, [(job(1), 4)]);
        subs.activate_job(job(1), WS, 4, None);
        assert!(subs.unsubscribe_workspace(WS));
        assert_eq!(subs.cursor(job(1)), Some(4));
        assert_eq!(subs.classify(key(job(2), 1)), Verdict::Ignore);
        assert!(subs.unsubscribe_job(job(1)));
        assert_eq!(subs.cursor(job(1)), None);
        assert!(subs.is_empty());
    }

    #[test]
    fn leaving_the_job_room_keeps_the_cursor_while_the_workspace_is_followed() {
        let mut subs = Subscriptions::default();
        subs.activate_workspace(WS, []);
        subs.activate_job(job(1), WS, 7, None);
        subs.unsubscribe_job(job(1));
        assert_eq!(subs.classify(key(job(1), 8)), Verdict::Deliver);
        assert_eq!(subs.classify(key(job(1), 7)), Verdict::Duplicate);
    }
}
