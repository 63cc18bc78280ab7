//! Access control lists: who may do what to which resource (pure; no I/O).
//!
//! An ACL names a principal (a user, or `*` for every authenticated user), a resource (a
//! topic, a consumer group or the cluster; by literal name, `*` for every name, or by
//! prefix), an operation and whether it allows or denies. A request is allowed when an
//! allowing ACL matches it and no denying one does: nothing is allowed by default, and a
//! deny wins over any allow. As in Kafka, `read`, `write`, `delete` and `alter` on a
//! resource imply `describe` of it, and `all` matches every operation.
//!
//! The broker enforces ACLs only with `[auth] enabled`; super users bypass them.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// At most this many ACLs in a broker or cluster (each request is checked against them).
pub const MAX_ACLS: usize = 10_000;
/// Resource names and prefixes (topic and group names are shorter still).
pub const MAX_ACL_NAME_BYTES: usize = 255;
/// The principal (or resource name) that matches every one.
pub const WILDCARD: &str = "*";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Topic = 1,
    Group = 2,
    /// The broker or cluster as a whole (its name is always `cluster`).
    Cluster = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternKind {
    /// The resource named exactly (or every resource of the kind, with the name `*`).
    Literal = 1,
    /// Every resource whose name starts with the pattern's name.
    Prefix = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Read = 1,
    Write = 2,
    Create = 3,
    Delete = 4,
    Describe = 5,
    Alter = 6,
    /// Every operation.
    All = 7,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Allow = 1,
    Deny = 2,
}

/// The name the cluster resource always has.
pub const CLUSTER_NAME: &str = "cluster";

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Acl {
    pub principal: String,
    pub resource: ResourceKind,
    pub pattern: PatternKind,
    pub name: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// A resource a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource<'a> {
    pub kind: ResourceKind,
    pub name: &'a str,
}

impl<'a> Resource<'a> {
    pub fn topic(name: &'a str) -> Resource<'a> {
        Resource { kind: ResourceKind::Topic, name }
    }
    pub fn group(name: &'a str) -> Resource<'a> {
        Resource { kind: ResourceKind::Group, name }
    }
    pub fn cluster() -> Resource<'static> {
        Resource { kind: ResourceKind::Cluster, name: CLUSTER_NAME }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ResourceKind::Cluster => write!(f, "the cluster"),
            kind => write!(f, "{} {}", kind.as_str(), self.name),
        }
    }
}

impl Acl {
    /// Checks an ACL given by a client: known principal syntax, bounded names, and a cluster
    /// resource named `cluster` by literal.
    pub fn validate(&self) -> Result<(), String> {
        if self.principal != WILDCARD {
            crate::protocol::scram::validate_user_name(&self.principal)?;
        }
        if self.name.is_empty() || self.name.len() > MAX_ACL_NAME_BYTES {
            return Err(format!("an ACL's resource name must be 1 to {MAX_ACL_NAME_BYTES} bytes long"));
        }
        if self.name.chars().any(char::is_control) {
            return Err("an ACL's resource name may not hold control characters".into());
        }
        if self.resource == ResourceKind::Cluster && (self.pattern != PatternKind::Literal || self.name != CLUSTER_NAME)
        {
            return Err(format!("the cluster resource is named {CLUSTER_NAME:?}, literally"));
        }
        Ok(())
    }

    fn matches(&self, principal: &str, operation: Operation, resource: Resource<'_>) -> bool {
        (self.principal == WILDCARD || self.principal == principal)
            && self.resource == resource.kind
            && self.matches_name(resource.name)
            && self.covers(operation)
    }

    fn matches_name(&self, name: &str) -> bool {
        match self.pattern {
            PatternKind::Literal => self.name == WILDCARD || self.name == name,
            PatternKind::Prefix => name.starts_with(&self.name),
        }
    }

    /// Whether this ACL's operation covers `operation`. Only an allow implies describe: a
    /// `deny read` must not take away a `describe` allowed on its own.
    fn covers(&self, operation: Operation) -> bool {
        if self.operation == Operation::All || self.operation == operation {
            return true;
        }
        let implies_describe =
            matches!(self.operation, Operation::Read | Operation::Write | Operation::Delete | Operation::Alter);
        self.permission == Permission::Allow && operation == Operation::Describe && implies_describe
    }
}

/// Whether `principal` may do `operation` to `resource` under `acls`.
pub fn allows(acls: &BTreeSet<Acl>, principal: &str, operation: Operation, resource: Resource<'_>) -> bool {
    let mut allowed = false;
    for acl in acls.iter().filter(|a| a.matches(principal, operation, resource)) {
        match acl.permission {
            Permission::Deny => return false,
            Permission::Allow => allowed = true,
        }
    }
    allowed
}

/// Whether `principal` may do `operation` to at least one resource of `kind` (an idempotent
/// producer's id needs write permission on some topic, as in Kafka): some allowing ACL whose
/// names are not all covered by a denying one.
pub fn allows_some(acls: &BTreeSet<Acl>, principal: &str, operation: Operation, kind: ResourceKind) -> bool {
    let applies = |a: &&Acl, permission| {
        a.permission == permission
            && (a.principal == WILDCARD || a.principal == principal)
            && a.resource == kind
            && a.covers(operation)
    };
    let denies: Vec<&Acl> = acls.iter().filter(|a| applies(a, Permission::Deny)).collect();
    acls.iter().filter(|a| applies(a, Permission::Allow)).any(|allow| !denies.iter().any(|d| d.covers_all_of(allow)))
}

impl Acl {
    /// Whether every name `other` matches is matched by this ACL's pattern too.
    fn covers_all_of(&self, other: &Acl) -> bool {
        match (self.pattern, other.pattern) {
            (PatternKind::Literal, _) if self.name == WILDCARD => true,
            (PatternKind::Literal, PatternKind::Literal) => self.name == other.name,
            (PatternKind::Literal, PatternKind::Prefix) => false,
            (PatternKind::Prefix, PatternKind::Literal) => other.name != WILDCARD && other.name.starts_with(&self.name),
            (PatternKind::Prefix, PatternKind::Prefix) => other.name.starts_with(&self.name),
        }
    }
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Topic => "topic",
            ResourceKind::Group => "group",
            ResourceKind::Cluster => "cluster",
        }
    }
    pub fn from_u8(v: u8) -> Option<ResourceKind> {
        [ResourceKind::Topic, ResourceKind::Group, ResourceKind::Cluster].into_iter().find(|k| *k as u8 == v)
    }
}

impl PatternKind {
    pub fn from_u8(v: u8) -> Option<PatternKind> {
        [PatternKind::Literal, PatternKind::Prefix].into_iter().find(|k| *k as u8 == v)
    }
}

impl Operation {
    pub const EVERY: [Operation; 7] = [
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Describe,
        Operation::Alter,
        Operation::All,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Describe => "describe",
            Operation::Alter => "alter",
            Operation::All => "all",
        }
    }
    pub fn from_u8(v: u8) -> Option<Operation> {
        Operation::EVERY.into_iter().find(|o| *o as u8 == v)
    }
    pub fn parse(s: &str) -> Option<Operation> {
        Operation::EVERY.into_iter().find(|o| o.as_str().eq_ignore_ascii_case(s))
    }
}

impl Permission {
    pub fn from_u8(v: u8) -> Option<Permission> {
        [Permission::Allow, Permission::Deny].into_iter().find(|p| *p as u8 == v)
    }
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let permission = match self.permission {
            Permission::Allow => "allow",
            Permission::Deny => "deny",
        };
        let pattern = match self.pattern {
            PatternKind::Literal => "",
            PatternKind::Prefix => " (prefix)",
        };
        write!(
            f,
            "{permission} {} {} on {} {}{pattern}",
            self.principal,
            self.operation.as_str(),
            self.resource.as_str(),
            self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acl(principal: &str, resource: ResourceKind, pattern: PatternKind, name: &str, op: Operation) -> Acl {
        Acl {
            principal: principal.into(),
            resource,
            pattern,
            name: name.into(),
            operation: op,
            permission: Permission::Allow,
        }
    }

    fn set(acls: impl IntoIterator<Item = Acl>) -> BTreeSet<Acl> {
        acls.into_iter().collect()
    }

    #[test]
    fn nothing_is_allowed_without_an_acl() {
        let acls = BTreeSet::new();
        for op in Operation::EVERY {
            assert!(!allows(&acls, "alice", op, Resource::topic("orders")));
            assert!(!allows(&acls, "alice", op, Resource::cluster()));
        }
    }

    #[test]
    fn literal_prefix_and_wildcard_names_match_what_they_say() {
        use {Operation::*, PatternKind::*, ResourceKind::*};
        let acls = set([
            acl("alice", Topic, Literal, "orders", Read),
            acl("alice", Topic, Prefix, "audit.", Write),
            acl("bob", Group, Literal, "*", Read),
        ]);
        assert!(allows(&acls, "alice", Read, Resource::topic("orders")));
        assert!(!allows(&acls, "alice", Read, Resource::topic("orders2")));
        assert!(!allows(&acls, "alice", Write, Resource::topic("orders")));
        assert!(allows(&acls, "alice", Write, Resource::topic("audit.eu")));
        assert!(!allows(&acls, "alice", Write, Resource::topic("audit")));
        assert!(!allows(&acls, "alice", Read, Resource::group("orders")), "the resource kind must match");
        assert!(allows(&acls, "bob", Read, Resource::group("any-group")));
        assert!(!allows(&acls, "bob", Read, Resource::topic("orders")));
        assert!(!allows(&acls, "carol", Read, Resource::topic("orders")), "another principal");
    }

    #[test]
    fn a_deny_wins_and_only_an_allow_implies_describe() {
        use {Operation::*, PatternKind::*, ResourceKind::*};
        let mut deny = acl("alice", Topic, Literal, "secret", Read);
        deny.permission = Permission::Deny;
        let acls = set([acl("*", Topic, Prefix, "", All), deny, acl("bob", Topic, Literal, "t", Write)]);
        assert!(allows(&acls, "alice", Write, Resource::topic("secret")));
        assert!(!allows(&acls, "alice", Read, Resource::topic("secret")));
        assert!(allows(&acls, "alice", Describe, Resource::topic("secret")), "deny read leaves describe");
        assert!(allows(&acls, "carol", Read, Resource::topic("secret")));
        let bob_only = set([acl("bob", Topic, Literal, "t", Write)]);
        assert!(allows(&bob_only, "bob", Describe, Resource::topic("t")), "write implies describe");
        assert!(!allows(&bob_only, "bob", Create, Resource::topic("t")));
        assert!(allows_some(&bob_only, "bob", Write, Topic));
        assert!(!allows_some(&bob_only, "alice", Write, Topic));
        let mut covered = acl("bob", Topic, Prefix, "", Write);
        covered.permission = Permission::Deny;
        let denied_everywhere = set([acl("bob", Topic, Literal, "t", Write), covered.clone()]);
        assert!(!allows_some(&denied_everywhere, "bob", Write, Topic));
        covered.name = "u".into();
        let denied_elsewhere = set([acl("bob", Topic, Literal, "t", Write), covered]);
        assert!(allows_some(&denied_elsewhere, "bob", Write, Topic));
    }

    #[test]
    fn validation_refuses_malformed_acls() {
        use {Operation::*, PatternKind::*, ResourceKind::*};
        assert!(acl("alice", Topic, Literal, "orders", Read).validate().is_ok());
        assert!(acl("*", Cluster, Literal, "cluster", Alter).validate().is_ok());
        assert!(acl("alice", Cluster, Prefix, "c", Alter).validate().is_err());
        assert!(acl("alice", Cluster, Literal, "other", Alter).validate().is_err());
        assert!(acl("alice", Topic, Literal, "", Read).validate().is_err());
        assert!(acl("alice", Topic, Literal, &"x".repeat(256), Read).validate().is_err());
        assert!(acl("al ice\n", Topic, Literal, "t", Read).validate().is_err());
    }

    fn any_acl() -> impl Strategy<Value = Acl> {
        let kinds = prop_oneof![Just(ResourceKind::Topic), Just(ResourceKind::Group)];
        let patterns = prop_oneof![Just(PatternKind::Literal), Just(PatternKind::Prefix)];
        let ops = (1u8..=7).prop_map(|v| Operation::from_u8(v).unwrap());
        let perms = prop_oneof![Just(Permission::Allow), Just(Permission::Deny)];
        ("(a|b|\\*)", kinds, patterns, "[xy*]{0,2}", ops, perms).prop_map(
            |(principal, resource, pattern, name, operation, permission)| Acl {
                principal,
                resource,
                pattern,
                name,
                operation,
                permission,
            },
        )
    }

    proptest! {
        /// Adding an allow never takes a permission away; adding a deny never grants one.
        #[test]
        fn allows_and_denies_are_monotonic(acls in proptest::collection::btree_set(any_acl(), 0..8),
                                           extra in any_acl(), op in 1u8..=6, name in "[xy]{0,2}") {
            let op = Operation::from_u8(op).unwrap();
            let resource = Resource::topic(&name);
            let before = allows(&acls, "a", op, resource);
            let mut after = acls.clone();
            after.insert(extra.clone());
            let now = allows(&after, "a", op, resource);
            match extra.permission {
                Permission::Allow => prop_assert!(now || !before),
                Permission::Deny => prop_assert!(!now || before),
            }
        }

        /// A principal allowed on one topic is allowed on "some topic".
        #[test]
        fn allowed_somewhere_is_allowed_some(acls in proptest::collection::btree_set(any_acl(), 0..8),
                                              op in 1u8..=6, name in "[xy]{0,2}") {
            let op = Operation::from_u8(op).unwrap();
            if allows(&acls, "a", op, Resource::topic(&name)) {
                prop_assert!(allows_some(&acls, "a", op, ResourceKind::Topic));
            }
        }
    }
}
