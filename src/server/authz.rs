//! Authorization on the client port: which operation on which resource each request is,
//! the check of it against the ACLs ([`crate::protocol::acl`]) when `[auth] enabled`, and
//! ACL management.
//!
//! The check runs on the connection's reader, before the request is routed to its shard or
//! forwarded to another node: a denied request goes nowhere, and the denial is logged with
//! the peer's address. Super users bypass ACLs; node links (authenticated with the cluster
//! secret) are not subject to them. ACLs live where the users live: a single node's catalog
//! or a cluster's replicated metadata.

use std::collections::BTreeSet;
use std::rc::Rc;

use super::handlers::{reply, ApiError, HandlerResult};
use super::placement::{Placement, Subject};
use crate::cluster::meta::MetaCommand;
use crate::protocol::acl::{allows, allows_some, Acl, Operation, Resource, ResourceKind, MAX_ACLS};
use crate::protocol::messages::{
    AclSpec, ApiKind, CreateAclRequest, CreateAclResponse, CreateTopicRequest, DeleteAclRequest, DeleteAclResponse,
    DeleteTopicRequest, DescribeTopicRequest, ListAclsResponse, MetadataRequest,
};
use crate::protocol::{access, decode, DecodeError, ErrorCode, Frame};
use crate::shard::Shard;

/// Whether the request's sender may do what it asks; the refusal, naming the operation and
/// the resource, otherwise. Requests that cannot be decoded pass: their handler refuses them.
pub fn authorize(shard: &Shard, frame: &Frame, placement: &Placement<'_>) -> Result<(), ApiError> {
    if !shard.config.auth.enabled || frame.from_node.is_some() {
        return Ok(());
    }
    // No principal: the first user's creation from loopback, which `auth::admit` let in.
    let Some(principal) = frame.principal.as_deref() else { return Ok(()) };
    if is_super_user(shard, principal) {
        return Ok(());
    }
    with_acls(shard, |acls| check(acls, principal, frame, placement))
}

/// Whether the request's sender may see that `topic` exists (metadata and topic lists leave
/// out the topics it may not describe).
pub fn may_describe_topic(shard: &Shard, frame: &Frame, topic: &str) -> bool {
    match frame.principal.as_deref() {
        _ if !shard.config.auth.enabled || frame.from_node.is_some() => true,
        None => true,
        Some(p) if is_super_user(shard, p) => true,
        Some(p) => with_acls(shard, |acls| allows(acls, p, Operation::Describe, Resource::topic(topic))),
    }
}

fn is_super_user(shard: &Shard, principal: &str) -> bool {
    shard.config.auth.super_users.iter().any(|s| s == principal)
}

/// The check of one request against the ACLs.
fn check(acls: &BTreeSet<Acl>, principal: &str, frame: &Frame, placement: &Placement<'_>) -> Result<(), ApiError> {
    let need = |operation: Operation, resource: Resource<'_>| {
        if allows(acls, principal, operation, resource) {
            Ok(())
        } else {
            Err(denied(principal, operation, resource))
        }
    };
    let Some(api) = placement.api else { return Ok(()) };
    // (The partition and group requests were validated once, by `Placement::of`; one that
    // did not validate is `Subject::Here` and left to its handler's error.)
    match (api, &placement.subject) {
        (ApiKind::Produce, Subject::Partition { topic, .. }) => need(Operation::Write, Resource::topic(topic)),
        (ApiKind::Fetch, Subject::Partition { topic, .. }) => need(Operation::Read, Resource::topic(topic)),
        (ApiKind::ListOffsets, Subject::Partition { topic, .. }) => need(Operation::Describe, Resource::topic(topic)),
        (ApiKind::CommitOffset, Subject::GroupOffset { group, topic }) => {
            need(Operation::Read, Resource::group(group))?;
            need(Operation::Read, Resource::topic(topic))
        }
        (ApiKind::FetchOffset, Subject::GroupOffset { group, topic }) => {
            need(Operation::Describe, Resource::group(group))?;
            need(Operation::Describe, Resource::topic(topic))
        }
        (api, _) => check_control(acls, principal, api, frame, need),
    }
}

/// The check of a request that is not about one partition or group offset (decoded here:
/// these are rare); exhaustive, so that a new kind of request must say what it needs.
fn check_control(
    acls: &BTreeSet<Acl>,
    principal: &str,
    api: ApiKind,
    frame: &Frame,
    need: impl Fn(Operation, Resource<'_>) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    let cluster = Resource::cluster();
    let a = frame.archive();
    match api {
        ApiKind::Metadata => on(access::<MetadataRequest>(a), |r| {
            r.topics.iter().try_for_each(|t| need(Operation::Describe, Resource::topic(t)))
        }),
        ApiKind::DescribeTopic => {
            on(access::<DescribeTopicRequest>(a), |r| need(Operation::Describe, Resource::topic(&r.name)))
        }
        // Create on the cluster allows every topic's creation (as in Kafka).
        ApiKind::CreateTopic => on(access::<CreateTopicRequest>(a), |r| {
            need(Operation::Create, Resource::topic(&r.name))
                .or_else(|e| need(Operation::Create, cluster).map_err(|_| e))
        }),
        ApiKind::DeleteTopic => {
            on(access::<DeleteTopicRequest>(a), |r| need(Operation::Delete, Resource::topic(&r.name)))
        }
        // An idempotent producer's id: write permission on some topic, or on the cluster.
        ApiKind::InitProducer => {
            if allows_some(acls, principal, Operation::Write, ResourceKind::Topic) {
                Ok(())
            } else {
                need(Operation::Write, cluster)
            }
        }
        ApiKind::ListTopics => Ok(()), // filtered by `may_describe_topic`
        ApiKind::ClusterStatus | ApiKind::ListUsers | ApiKind::ListAcls => need(Operation::Describe, cluster),
        ApiKind::UpsertUser | ApiKind::DeleteUser | ApiKind::CreateAcl | ApiKind::DeleteAcl => {
            need(Operation::Alter, cluster)
        }
        ApiKind::Authenticate => Ok(()),
        // Checked by `check` on their `Subject`; here only when it is `Here` (the archive did
        // not validate: the handler refuses it).
        ApiKind::Produce | ApiKind::Fetch | ApiKind::ListOffsets | ApiKind::CommitOffset | ApiKind::FetchOffset => {
            Ok(())
        }
    }
}

/// Runs `f` on a decoded request; an undecodable one is left to its handler's error.
fn on<T>(decoded: Result<&T, DecodeError>, f: impl FnOnce(&T) -> Result<(), ApiError>) -> Result<(), ApiError> {
    decoded.map_or(Ok(()), f)
}

fn denied(principal: &str, operation: Operation, resource: Resource<'_>) -> ApiError {
    ApiError::new(
        ErrorCode::NotAuthorized,
        format!("{principal} may not {} {resource}: no ACL allows it", operation.as_str()),
    )
}

/// Runs `f` on this broker's ACLs (borrowed, not copied: it runs for every request).
fn with_acls<R>(shard: &Shard, f: impl FnOnce(&BTreeSet<Acl>) -> R) -> R {
    match &shard.cluster {
        Some(c) => f(&c.meta.borrow().acls),
        None => f(&shard.catalog.borrow().acls),
    }
}

pub async fn create_acl(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<CreateAclRequest>(frame.archive())?;
    let acl = req.acl.to_acl().map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
    let created = !with_acls(shard, |acls| acls.contains(&acl));
    let command = MetaCommand::PutAcl { acl: acl.clone() };
    let applied = |s: &Shard| with_acls(s, |acls| acls.contains(&acl));
    let change = |catalog: &mut crate::broker::catalog::Catalog| {
        if !catalog.acls.contains(&acl) && catalog.acls.len() >= MAX_ACLS {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("this broker holds {MAX_ACLS} ACLs, the most it may"),
            ));
        }
        catalog.acls.insert(acl.clone());
        Ok(())
    };
    super::auth::change_access(shard, change, command, applied).await?;
    if created {
        log::info!("ACL added: {acl}");
    }
    reply(&CreateAclResponse { created })
}

pub async fn delete_acl(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<DeleteAclRequest>(frame.archive())?;
    let acl = req.acl.to_acl().map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
    let change = |catalog: &mut crate::broker::catalog::Catalog| match catalog.acls.remove(&acl) {
        true => Ok(()),
        false => Err(ApiError::new(ErrorCode::InvalidRequest, format!("no such ACL: {acl}"))),
    };
    let applied = |s: &Shard| !with_acls(s, |acls| acls.contains(&acl));
    super::auth::change_access(shard, change, MetaCommand::RemoveAcl { acl: acl.clone() }, applied).await?;
    log::info!("ACL removed: {acl}");
    reply(&DeleteAclResponse {})
}

pub fn list_acls(shard: &Shard) -> HandlerResult {
    let acls = with_acls(shard, |acls| acls.iter().map(AclSpec::from).collect());
    reply(&ListAclsResponse { acls })
}
