//! jobstream-rooms: who may subscribe to what, and what each subscriber still needs.
//!
//! Two pure pieces, with no I/O, so that they can be tested exhaustively:
//! - [`grant`]: the token's claims against an action on a workspace, through
//!   ordered grant rules that answer allowed(reason) or denied(reason); deny by default.
//! - [`cursor`]: one subscriber's subscriptions and, per job, the last `seq` it
//!   was given; it classifies each committed event as deliver, duplicate, gap or
//!   not wanted, which is how delivery stays ordered, gap-free and exactly-once.

pub mod cursor;
pub mod grant;
pub mod horizon;

pub use cursor::{EventKey, Subscriptions, Unreachable, Verdict};
pub use grant::{authorize, Action, Claims, Decision, Denial, Scope, Workspaces};
pub use horizon::Horizon;
