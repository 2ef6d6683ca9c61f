//! Which commits a read snapshot saw.
//!
//! Every stored event carries a `commit_order` (see the `commit_order`
//! migration): on PostgreSQL the id of the transaction that wrote it, on SQLite
//! a counter that the single writer takes in each write transaction. A
//! workspace subscription keeps the [`Horizon`] of its snapshot, so that for a
//! job it holds no cursor for (every job that was finished at the snapshot),
//! an event can be placed before or after the snapshot from the event alone.

/// The commits a snapshot saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Horizon {
    /// SQLite: the commit counter as the snapshot read it; it saw every
    /// transaction that took a value up to this one.
    Counter(i64),
    /// PostgreSQL `pg_snapshot` (`xmin:xmax:xip_list`): transactions below
    /// `xmin` had ended, those at or above `xmax` had not started, and those
    /// in between had ended unless listed as in progress.
    Xids {
        /// The oldest transaction still running.
        xmin: i64,
        /// One past the newest transaction started.
        xmax: i64,
        /// Transactions in `xmin..xmax` still running, ascending.
        in_progress: Vec<i64>,
    },
}

impl Horizon {
    /// Whether the snapshot saw the commit of the transaction with this order.
    pub fn saw(&self, order: i64) -> bool {
        match self {
            Self::Counter(counter) => order <= *counter,
            Self::Xids { xmin, xmax, in_progress } => {
                order < *xmin || (order < *xmax && in_progress.binary_search(&order).is_err())
            }
        }
    }

    /// The smallest commit order the snapshot may not have seen: every event
    /// after the snapshot has at least this order.
    pub fn lower_bound(&self) -> i64 {
        match self {
            Self::Counter(counter) => counter + 1,
            Self::Xids { xmin, .. } => *xmin,
        }
    }

    /// Parses PostgreSQL's text form of a `pg_snapshot`, `xmin:xmax:xip,xip`.
    pub fn parse_pg_snapshot(text: &str) -> Option<Self> {
        let mut parts = text.trim().split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let mut in_progress = match parts.next()? {
            "" => Vec::new(),
            list => list.split(',').map(|x| x.parse().ok()).collect::<Option<Vec<i64>>>()?,
        };
        if parts.next().is_some() {
            return None;
        }
        in_progress.sort_unstable();
        Some(Self::Xids { xmin, xmax, in_progress })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_horizon_saw_what_was_counted_up_to_it() {
        let h = Horizon::Counter(10);
        assert!(h.saw(1) && h.saw(10));
        assert!(!h.saw(11));
        assert_eq!(h.lower_bound(), 11);
    }

    #[test]
    fn a_postgres_snapshot_saw_ended_transactions_only() {
        let h = Horizon::parse_pg_snapshot("100:105:101,103").unwrap_or(Horizon::Counter(0));
        assert!(h.saw(99), "below xmin");
        assert!(h.saw(100) && h.saw(102) && h.saw(104), "ended between xmin and xmax");
        assert!(!h.saw(101) && !h.saw(103), "in progress");
        assert!(!h.saw(105) && !h.saw(200), "not started");
        assert_eq!(h.lower_bound(), 100);
        assert_eq!(Horizon::parse_pg_snapshot("7:7:"), Some(Horizon::Xids { xmin: 7, xmax: 7, in_progress: vec![] }));
        assert_eq!(Horizon::parse_pg_snapshot("x:7:"), None);
    }
}
