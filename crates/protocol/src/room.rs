//! Room names: `workspace:{workspaceId}:jobs` and `job:{jobId}`.

use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A room a socket can be subscribed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Room {
    /// Every job of a workspace.
    Workspace(String),
    /// One job.
    Job(Uuid),
}

/// A string that is not a room name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a room name: {0:?} (expected `workspace:{{id}}:jobs` or `job:{{uuid}}`)")]
pub struct RoomParseError(pub String);

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Room::Workspace(id) => write!(f, "workspace:{id}:jobs"),
            Room::Job(id) => write!(f, "job:{id}"),
        }
    }
}

impl FromStr for Room {
    type Err = RoomParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || RoomParseError(text.to_owned());
        if let Some(id) = text.strip_prefix("job:") {
            return Uuid::parse_str(id).map(Room::Job).map_err(|_| fail());
        }
        match text.strip_prefix("workspace:").and_then(|t| t.strip_suffix(":jobs")) {
            Some(id) if !id.is_empty() => Ok(Room::Workspace(id.to_owned())),
            _ => Err(fail()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_format_and_parse_back() {
        let job = Uuid::from_u128(7);
        for room in [Room::Workspace("acme".into()), Room::Job(job)] {
            assert_eq!(room.to_string().parse::<Room>().ok(), Some(room));
        }
        assert_eq!(Room::Workspace("acme".into()).to_string(), "workspace:acme:jobs");
        assert_eq!(Room::Job(job).to_string(), format!("job:{job}"));
    }

    #[test]
    fn malformed_room_names_are_refused() {
        for text in ["", "job:", "job:nope", "workspace::jobs", "workspace:a", "jobs:a"] {
            assert!(text.parse::<Room>().is_err(), "{text}");
        }
    }
}
