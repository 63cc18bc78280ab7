//! Client authentication on the client port: the SCRAM-SHA-256 exchange of a connection
//! (`Authenticate` requests, [`crate::protocol::scram`]), the check that every other request
//! comes from an authenticated connection when `[auth] enabled`, and user management.
//!
//! Users live in the catalog of a single node (`meta/topics.json`, copied to every shard) or
//! in the replicated metadata of a cluster. The broker holds only each user's salt,
//! iterations, `StoredKey` and `ServerKey`: a client computes them from the password.
//!
//! Who may manage users: super users (`[auth] super_users`), principals allowed to alter the
//! cluster ([`super::authz`]); and, while no user exists at all, a connection from a
//! loopback address (so that the first user can be created on the machine itself before
//! anyone can authenticate).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use super::handlers::{reply, ApiError, HandlerResult};
use crate::broker::catalog::Catalog;
use crate::cluster::meta::MetaCommand;
use crate::protocol::messages::{
    ApiKind, AuthenticateRequest, AuthenticateResponse, DeleteUserRequest, DeleteUserResponse, ListUsersResponse,
    UpsertUserRequest, UpsertUserResponse,
};
use crate::protocol::scram::{validate_user_name, Credential, ScramError, ServerExchange, DEFAULT_ITERATIONS};
use crate::protocol::{decode, ErrorCode, Frame};
use crate::shard::Shard;

/// The one SASL mechanism spoken.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// A connection's authentication: the exchange under way, then who it is.
#[derive(Default)]
pub struct ConnectionAuth {
    exchange: Option<ServerExchange>,
    principal: Option<Arc<str>>,
    /// Set once, from the peer address: a loopback connection (the first user's creation).
    loopback: bool,
}

impl ConnectionAuth {
    /// A connection from `peer`; `certified`: the principal its verified TLS client
    /// certificate names (the connection is then authenticated as it).
    pub fn new(peer: Option<IpAddr>, certified: Option<Arc<str>>) -> ConnectionAuth {
        ConnectionAuth { loopback: peer.is_some_and(|ip| ip.is_loopback()), principal: certified, exchange: None }
    }

    pub fn principal(&self) -> Option<Arc<str>> {
        self.principal.clone()
    }
}

/// Whether `frame` may be served on this connection; the refusal otherwise (the connection
/// is then closed). Node links authenticated themselves with the cluster secret.
pub fn admit(shard: &Shard, frame: &Frame, auth: &ConnectionAuth) -> Result<(), ApiError> {
    if !shard.config.auth.enabled || auth.principal.is_some() || frame.from_node.is_some() {
        return Ok(());
    }
    if frame.header.kind == ApiKind::Authenticate as u16 {
        return Ok(());
    }
    // The first user's creation, from the machine itself, before anyone can authenticate.
    let managing_users = frame.header.kind == ApiKind::UpsertUser as u16;
    if managing_users && auth.loopback && users(shard).is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::AuthenticationFailed,
        "authenticate first (SCRAM-SHA-256): this broker has [auth] enabled",
    ))
}

/// One step of the connection's SCRAM exchange; `Ok(true)` when it completed.
pub fn authenticate(
    shard: &Shard,
    frame: &Frame,
    auth: &mut ConnectionAuth,
) -> Result<(HandlerResult, bool), ApiError> {
    let req = decode::<AuthenticateRequest>(frame.archive())?;
    if req.mechanism != MECHANISM {
        return Err(ApiError::new(
            ErrorCode::AuthenticationFailed,
            format!("unsupported mechanism {:?}; this broker speaks {MECHANISM}", req.mechanism),
        ));
    }
    let failed = |e: ScramError| ApiError::new(ErrorCode::AuthenticationFailed, e.to_string());
    match auth.exchange.take() {
        None => {
            if auth.principal.is_some() {
                return Err(ApiError::new(ErrorCode::AuthenticationFailed, "this connection is authenticated already"));
            }
            let nonce = crate::protocol::node_auth::fresh_text_nonce();
            let decoy_key = decoy_key(shard);
            let (exchange, server_first) = ServerExchange::start(
                &req.message,
                &nonce,
                |user| users(shard).get(user).cloned(),
                |user| decoy(&decoy_key, user),
            )
            .map_err(failed)?;
            auth.exchange = Some(exchange);
            let response = AuthenticateResponse { message: server_first, done: false, principal: String::new() };
            Ok((reply(&response), false))
        }
        Some(exchange) => {
            let named = exchange.user().to_string();
            // (The reader logs the refusal, with the peer's address.)
            let (user, server_final) = exchange.finish(&req.message).map_err(|e| {
                ApiError::new(ErrorCode::AuthenticationFailed, format!("authentication of {named:?} failed: {e}"))
            })?;
            auth.principal = Some(user.as_str().into());
            Ok((reply(&AuthenticateResponse { message: server_final, done: true, principal: user }), true))
        }
    }
}

/// The users of this broker (a single node's catalog, or a cluster's metadata).
pub fn users(shard: &Shard) -> Arc<BTreeMap<String, Credential>> {
    match &shard.cluster {
        Some(c) => c.meta.borrow().users.clone(),
        None => Arc::new(shard.catalog.borrow().users.clone()),
    }
}

pub async fn upsert_user(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<UpsertUserRequest>(frame.archive())?;
    validate_user_name(&req.name).map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
    if req.iterations < 4096 || req.salt.len() < 16 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "a credential needs at least 4096 iterations and 16 bytes of salt",
        ));
    }
    let credential = Credential {
        salt: req.salt,
        iterations: req.iterations,
        stored_key: req.stored_key,
        server_key: req.server_key,
    };
    let created = !users(shard).contains_key(&req.name);
    let command = MetaCommand::PutUser { name: req.name.clone(), credential: credential.clone() };
    let applied = |s: &Shard| users(s).get(&req.name) == Some(&credential);
    let change = |catalog: &mut Catalog| {
        catalog.users.insert(req.name.clone(), credential.clone());
        Ok(())
    };
    change_access(shard, change, command, applied).await?;
    log::info!("user {} {}", req.name, if created { "created" } else { "changed" });
    reply(&UpsertUserResponse { name: req.name, created })
}

pub async fn delete_user(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<DeleteUserRequest>(frame.archive())?;
    let name = req.name.clone();
    let change = |catalog: &mut Catalog| match catalog.users.remove(&name) {
        Some(_) => Ok(()),
        None => Err(ApiError::new(ErrorCode::InvalidRequest, format!("no such user: {name}"))),
    };
    let applied = |s: &Shard| !users(s).contains_key(&req.name);
    change_access(shard, change, MetaCommand::RemoveUser { name: req.name.clone() }, applied).await?;
    log::info!("user {} deleted", req.name);
    reply(&DeleteUserResponse { name: req.name })
}

pub fn list_users(shard: &Shard) -> HandlerResult {
    reply(&ListUsersResponse { users: users(shard).keys().cloned().collect() })
}

/// Applies a change to the users or ACLs: in a cluster, a metadata command (and a short wait
/// until this node applied it, `applied`); on a single node, the catalog (persisted first,
/// then copied to every shard).
pub(super) async fn change_access(
    shard: &Rc<Shard>,
    change: impl FnOnce(&mut Catalog) -> Result<(), ApiError>,
    command: MetaCommand,
    applied: impl Fn(&Shard) -> bool,
) -> Result<(), ApiError> {
    if let Some(c) = &shard.cluster {
        c.control.write(command).await?;
        super::cluster_handlers::wait_applied(shard, applied).await;
        return Ok(());
    }
    let _guard =
        shard.catalog_lock.acquire_permit(1).await.map_err(|e| ApiError::new(ErrorCode::Unknown, e.to_string()))?;
    let mut next = shard.catalog.borrow().clone();
    change(&mut next)?;
    super::handlers::persist_catalog(shard, &next).await?;
    let (users, acls) = (next.users, next.acls);
    let replies = super::handlers::broadcast(shard, || crate::shard::mesh::MeshRequest::AccessChanged {
        users: users.clone(),
        acls: acls.clone(),
    })
    .await;
    super::handlers::check_all(replies)
}

/// The key of the decoy credentials answered for unknown users (`AuthSettings::decoy_key`).
fn decoy_key(shard: &Shard) -> [u8; 32] {
    shard.config.auth.decoy_key
}

/// What an unknown user is challenged with: a salt derived from its name, so that asking
/// twice gives the same answer, as for a real user.
fn decoy(key: &[u8], user: &str) -> Credential {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(user.as_bytes());
    let digest: [u8; 32] = mac.finalize().into_bytes().into();
    Credential { salt: digest[..16].to_vec(), iterations: DEFAULT_ITERATIONS, stored_key: digest, server_key: digest }
}
