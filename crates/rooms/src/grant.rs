//! Subscription and write permissions: ordered grant rules, deny by default.

use std::collections::BTreeSet;

/// What a token allows, decoded from its JWT claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Who (`sub`).
    pub subject: String,
    /// Workspace ids the bearer may read or write; `*` means all.
    pub workspaces: Workspaces,
    /// `subscribe` and/or `publish`.
    pub scopes: BTreeSet<Scope>,
}

/// The workspace ids a token names, sorted, without repeats.
///
/// A boxed slice, not a set: a socket keeps its token's claims for its whole
/// life, tokens name one or a few workspaces, and a `BTreeSet` of even one id
/// allocates a node of eleven (about 280 bytes per socket).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workspaces(Box<[String]>);

impl Workspaces {
    /// Whether `id` is named (exactly; `*` is a name like any other here).
    pub fn contains(&self, id: &str) -> bool {
        self.0.binary_search_by(|named| named.as_str().cmp(id)).is_ok()
    }

    /// The ids, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }

    /// How many ids are named.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no id is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<String> for Workspaces {
    fn from_iter<I: IntoIterator<Item = String>>(ids: I) -> Self {
        let mut ids: Vec<String> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        Self(ids.into_boxed_slice())
    }
}

impl IntoIterator for Workspaces {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_vec().into_iter()
    }
}

impl<'a> IntoIterator for &'a Workspaces {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A token scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read: Socket.IO subscriptions and GET endpoints.
    Subscribe,
    /// Write: the producer endpoints.
    Publish,
}

impl Scope {
    /// The claim's word for the scope.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Subscribe => "subscribe",
            Scope::Publish => "publish",
        }
    }
}

impl Claims {
    /// Reads the `scope` claim: space-separated words; absent means `subscribe`.
    /// Unknown words are ignored (they grant nothing).
    pub fn parse_scopes(scope: Option<&str>) -> BTreeSet<Scope> {
        match scope {
            None => BTreeSet::from([Scope::Subscribe]),
            Some(text) => text
                .split_whitespace()
                .filter_map(|w| match w {
                    "subscribe" => Some(Scope::Subscribe),
                    "publish" => Some(Scope::Publish),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Whether the token names every workspace (`*`).
    pub fn all_workspaces(&self) -> bool {
        self.workspaces.contains(jobstream_protocol::requests::ALL_WORKSPACES)
    }
}

/// What the bearer wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Subscribe, replay, or GET.
    Read,
    /// Create jobs and append events.
    Write,
}

impl Action {
    fn scope(self) -> Scope {
        match self {
            Action::Read => Scope::Subscribe,
            Action::Write => Scope::Publish,
        }
    }
}

/// The answer of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, and which rule allowed it.
    Allowed(&'static str),
    /// Denied, and why.
    Denied(Denial),
}

/// Why an action is denied, in words a client may be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The reason, naming what is missing.
    pub reason: String,
}

impl Decision {
    /// Whether the action is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }
}

/// One rule: `Some` decides, `None` passes to the next rule.
type Rule = fn(&Claims, Action, &str) -> Option<Decision>;

/// The rules in order; the first that decides wins, and nothing decided is a denial.
const RULES: &[(&str, Rule)] = &[
    ("scope", |claims, action, _| {
        let scope = action.scope();
        (!claims.scopes.contains(&scope))
            .then(|| Decision::Denied(Denial { reason: format!("the token lacks the `{}` scope", scope.as_str()) }))
    }),
    ("all workspaces", |claims, _, _| {
        claims.all_workspaces().then_some(Decision::Allowed("the token grants every workspace"))
    }),
    ("named workspace", |claims, _, workspace| {
        claims.workspaces.contains(workspace).then_some(Decision::Allowed("the token names the workspace"))
    }),
];

/// Decides whether `claims` may do `action` on `workspace`.
pub fn authorize(claims: &Claims, action: Action, workspace: &str) -> Decision {
    RULES
        .iter()
        .find_map(|(_, rule)| rule(claims, action, workspace))
        .unwrap_or_else(|| Decision::Denied(Denial { reason: format!("workspace `{workspace}` is not in the token") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(workspaces: &[&str], scope: Option<&str>) -> Claims {
        Claims {
            subject: "user-1".into(),
            workspaces: workspaces.iter().map(|w| w.to_string()).collect(),
            scopes: Claims::parse_scopes(scope),
        }
    }

    #[test]
    fn a_named_workspace_with_the_subscribe_scope_may_be_read() {
        assert_eq!(
            authorize(&claims(&["ws-1"], None), Action::Read, "ws-1"),
            Decision::Allowed("the token names the workspace")
        );
    }

    #[test]
    fn a_workspace_not_in_the_token_is_denied() {
        let decision = authorize(&claims(&["ws-1"], None), Action::Read, "ws-2");
        assert!(matches!(decision, Decision::Denied(d) if d.reason.contains("ws-2")));
    }

    #[test]
    fn the_wildcard_grants_every_workspace() {
        assert!(authorize(&claims(&["*"], Some("subscribe publish")), Action::Write, "any").is_allowed());
    }

    #[test]
    fn a_missing_scope_is_denied_even_for_a_named_workspace() {
        let read_only = claims(&["ws-1"], Some("subscribe"));
        assert!(
            matches!(authorize(&read_only, Action::Write, "ws-1"), Decision::Denied(d) if d.reason.contains("publish"))
        );
        let write_only = claims(&["*"], Some("publish"));
        assert!(
            matches!(authorize(&write_only, Action::Read, "ws-1"), Decision::Denied(d) if d.reason.contains("subscribe"))
        );
    }

    #[test]
    fn an_absent_scope_means_subscribe_only() {
        assert_eq!(Claims::parse_scopes(None), BTreeSet::from([Scope::Subscribe]));
        assert_eq!(Claims::parse_scopes(Some("publish admin")), BTreeSet::from([Scope::Publish]));
        assert!(Claims::parse_scopes(Some("")).is_empty());
    }

    #[test]
    fn a_token_without_workspaces_is_denied_by_default() {
        assert!(!authorize(&claims(&[], Some("subscribe publish")), Action::Read, "ws-1").is_allowed());
    }

    #[test]
    fn named_workspaces_are_kept_sorted_once_and_found_exactly() {
        let named: Workspaces = ["b", "a", "b", "*", "ab"].iter().map(|w| (*w).to_owned()).collect();
        assert_eq!(named.iter().map(String::as_str).collect::<Vec<_>>(), vec!["*", "a", "ab", "b"]);
        for id in ["*", "a", "ab", "b"] {
            assert!(named.contains(id), "{id}");
        }
        for id in ["", "A", "aa", "c", "b "] {
            assert!(!named.contains(id), "{id}");
        }
        assert!(Workspaces::default().is_empty() && !Workspaces::default().contains("*"));
    }
}
