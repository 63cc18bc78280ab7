//! How nodes prove to each other that they belong: a challenge-response over the cluster's
//! shared secret (HMAC-SHA-256), on the data links (client port, frame kinds 100/103) and
//! the control links alike.
//!
//! ```text
//! initiator -> acceptor   hello     { cluster, from, to, nonce_i }
//! acceptor  -> initiator  challenge { from, nonce_a, proof_a = mac(acceptor, ...) }
//! initiator -> acceptor   proof     { proof_i = mac(initiator, ...) }
//! ```
//!
//! Both proofs cover the link kind, the cluster id, both node ids and both nonces; the role
//! is part of the message, so a proof cannot be reflected back. The acceptor's nonce is new
//! for every connection, so a recorded proof is worth nothing on another one (no replay);
//! the initiator checks the acceptor's proof before it sends anything, so a node that
//! cannot prove the secret learns nothing of the cluster's data. What this does not do is
//! protect a link from someone on the path, who can read and change what follows the
//! handshake: that takes TLS.
//!
//! Pure: the caller draws the nonces ([`fresh_nonce`] in production).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::replication::NodeId;

/// Bytes of a nonce and of a proof.
pub const NONCE_BYTES: usize = 32;
pub type Nonce = [u8; NONCE_BYTES];
pub type Proof = [u8; 32];

/// The shortest secret accepted: 128 bits (the README's recipe makes 256).
pub const MIN_SECRET_BYTES: usize = 16;

/// The cluster's shared secret: the current one, which this node proves, and during a
/// rotation the others it still accepts. Never printed.
#[derive(Clone, Default)]
pub struct ClusterSecret(std::sync::Arc<[Vec<u8>]>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lengths: Vec<usize> = self.0.iter().map(Vec::len).collect();
        write!(f, "ClusterSecret({lengths:?} bytes)")
    }
}

impl ClusterSecret {
    pub fn new(bytes: &[u8]) -> Result<ClusterSecret, AuthError> {
        ClusterSecret::rotating(&[bytes])
    }

    /// The first secret is proved; every one of them is accepted (a rotation in progress).
    pub fn rotating(secrets: &[&[u8]]) -> Result<ClusterSecret, AuthError> {
        if secrets.is_empty() {
            return Err(AuthError::SecretTooShort(0));
        }
        if let Some(short) = secrets.iter().find(|s| s.len() < MIN_SECRET_BYTES) {
            return Err(AuthError::SecretTooShort(short.len()));
        }
        Ok(ClusterSecret(secrets.iter().map(|s| s.to_vec()).collect()))
    }

    /// The text of a secret file: one secret per line (blank lines and surrounding
    /// whitespace ignored), the first the current one.
    pub fn parse(text: &[u8]) -> Result<ClusterSecret, AuthError> {
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').map(<[u8]>::trim_ascii).filter(|l| !l.is_empty()).collect();
        ClusterSecret::rotating(&lines)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A key for `purpose` derived from the current secret (the same on every node).
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.first().map_or(&[][..], Vec::as_slice))
            .expect("HMAC takes a key of any length");
        mac.update(b"quorra derived key v1");
        mac.update(purpose);
        mac.finalize().into_bytes().into()
    }
}

/// Which kind of link a handshake opens (a proof for one is no good for the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Data = 1,
    Control = 2,
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Acceptor = 1,
    Initiator = 2,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the cluster secret has {0} bytes; at least {MIN_SECRET_BYTES} are needed")]
    SecretTooShort(usize),
    #[error("node {0} could not prove it holds the cluster secret")]
    BadProof(NodeId),
    #[error("a hello meant for node {meant}, and this is node {me}")]
    NotForMe { meant: NodeId, me: NodeId },
    #[error("a hello from this node's own id {0}")]
    FromMyself(NodeId),
}

/// One handshake between `initiator` and `acceptor` of `cluster_id`.
pub struct Handshake<'a> {
    pub secret: &'a ClusterSecret,
    pub link: LinkKind,
    pub cluster_id: &'a str,
    pub initiator: NodeId,
    pub acceptor: NodeId,
    pub initiator_nonce: Nonce,
    pub acceptor_nonce: Nonce,
}

impl Handshake<'_> {
    /// What the acceptor sends with its challenge (keyed by the current secret).
    pub fn acceptor_proof(&self) -> Proof {
        self.mac(self.current(), Role::Acceptor).finalize().into_bytes().into()
    }

    /// What the initiator answers the challenge with (keyed by the current secret).
    pub fn initiator_proof(&self) -> Proof {
        self.mac(self.current(), Role::Initiator).finalize().into_bytes().into()
    }

    /// The initiator's check of the acceptor's proof (in constant time, by every secret).
    pub fn check_acceptor(&self, proof: &[u8]) -> Result<(), AuthError> {
        self.check(Role::Acceptor, proof).map_err(|_| AuthError::BadProof(self.acceptor))
    }

    /// The acceptor's check of the initiator's proof (in constant time, by every secret).
    pub fn check_initiator(&self, proof: &[u8]) -> Result<(), AuthError> {
        self.check(Role::Initiator, proof).map_err(|_| AuthError::BadProof(self.initiator))
    }

    fn current(&self) -> &[u8] {
        self.secret.0.first().map_or(&[], Vec::as_slice)
    }

    fn check(&self, role: Role, proof: &[u8]) -> Result<(), ()> {
        let ok = self.secret.0.iter().any(|key| self.mac(key, role).verify_slice(proof).is_ok());
        if ok {
            Ok(())
        } else {
            Err(())
        }
    }

    fn mac(&self, key: &[u8], role: Role) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(b"quorra node auth v1");
        mac.update(&[role as u8, self.link as u8]);
        mac.update(&(self.cluster_id.len() as u32).to_le_bytes());
        mac.update(self.cluster_id.as_bytes());
        mac.update(&self.initiator.to_le_bytes());
        mac.update(&self.acceptor.to_le_bytes());
        mac.update(&self.initiator_nonce);
        mac.update(&self.acceptor_nonce);
        mac
    }
}

/// The acceptor's checks of the ids in a hello, before any proof: meant for this node, not
/// from it.
pub fn check_addressing(from: NodeId, to: NodeId, me: NodeId) -> Result<(), AuthError> {
    if to != me {
        return Err(AuthError::NotForMe { meant: to, me });
    }
    if from == me {
        return Err(AuthError::FromMyself(me));
    }
    Ok(())
}

/// A nonce from the operating system's generator (never repeats in practice: 256 bits).
pub fn fresh_nonce() -> Nonce {
    let mut nonce = [0u8; NONCE_BYTES];
    // The kernel's generator does not fail once the machine has booted; a broker that
    // cannot draw a nonce cannot authenticate anyone, so this is not worth an error path.
    getrandom::fill(&mut nonce).expect("the OS random generator works");
    nonce
}

/// A fresh nonce as SCRAM wants one: 18 random bytes in base64 (printable, no commas).
pub fn fresh_text_nonce() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&fresh_nonce()[..18])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::new(s.as_bytes()).unwrap()
    }

    fn handshake(s: &ClusterSecret, ni: Nonce, na: Nonce) -> Handshake<'_> {
        Handshake {
            secret: s,
            link: LinkKind::Data,
            cluster_id: "c",
            initiator: 1,
            acceptor: 2,
            initiator_nonce: ni,
            acceptor_nonce: na,
        }
    }

    #[test]
    fn both_sides_prove_the_secret_and_nothing_else_passes() {
        let s = secret("0123456789abcdef0123");
        let h = handshake(&s, [1; 32], [2; 32]);
        assert_eq!(h.check_acceptor(&h.acceptor_proof()), Ok(()));
        assert_eq!(h.check_initiator(&h.initiator_proof()), Ok(()));
        // A reflected proof (the acceptor's, sent back as the initiator's) fails.
        assert_eq!(h.check_initiator(&h.acceptor_proof()), Err(AuthError::BadProof(1)));
        // Another secret, another acceptor nonce (a replay), another link kind, another id.
        let other = secret("fedcba9876543210fedc");
        assert!(h.check_initiator(&handshake(&other, [1; 32], [2; 32]).initiator_proof()).is_err());
        let replayed = handshake(&s, [1; 32], [3; 32]);
        assert!(replayed.check_initiator(&h.initiator_proof()).is_err());
        let control = Handshake { link: LinkKind::Control, ..handshake(&s, [1; 32], [2; 32]) };
        assert!(control.check_initiator(&h.initiator_proof()).is_err());
        let as_node_3 = Handshake { initiator: 3, ..handshake(&s, [1; 32], [2; 32]) };
        assert!(as_node_3.check_initiator(&h.initiator_proof()).is_err());
        assert!(h.check_initiator(&[]).is_err() && h.check_initiator(&[0; 64]).is_err());
    }

    #[test]
    fn a_rotation_accepts_the_old_and_the_new_secret_and_proves_the_first() {
        let (old, new) = ("old secret 0123456789", "new secret 0123456789");
        let only_old = ClusterSecret::parse(old.as_bytes()).unwrap();
        let both_new_first = ClusterSecret::parse(format!("  {new}\n\n{old}\n").as_bytes()).unwrap();
        let only_new = ClusterSecret::parse(new.as_bytes()).unwrap();
        let proof_by = |s: &ClusterSecret| handshake(s, [1; 32], [2; 32]).initiator_proof();
        // A node in the middle of the rotation accepts nodes not yet rotated and those done.
        let middle = handshake(&both_new_first, [1; 32], [2; 32]);
        assert!(middle.check_initiator(&proof_by(&only_old)).is_ok());
        assert!(middle.check_initiator(&proof_by(&only_new)).is_ok());
        // It proves the new one: a node done with the rotation accepts it, one that never
        // heard of it does not.
        assert!(handshake(&only_new, [1; 32], [2; 32]).check_initiator(&proof_by(&both_new_first)).is_ok());
        assert!(handshake(&only_old, [1; 32], [2; 32]).check_initiator(&proof_by(&both_new_first)).is_err());
    }

    #[test]
    fn short_secrets_and_misaddressed_hellos_are_refused() {
        assert_eq!(ClusterSecret::new(b"short").unwrap_err(), AuthError::SecretTooShort(5));
        assert!(format!("{:?}", secret("0123456789abcdef")).contains("[16] bytes"));
        assert_eq!(ClusterSecret::parse(b"\n  \n").unwrap_err(), AuthError::SecretTooShort(0));
        assert_eq!(ClusterSecret::parse(b"0123456789abcdef\nshort\n").unwrap_err(), AuthError::SecretTooShort(5));
        assert_eq!(check_addressing(1, 2, 2), Ok(()));
        assert_eq!(check_addressing(1, 3, 2), Err(AuthError::NotForMe { meant: 3, me: 2 }));
        assert_eq!(check_addressing(2, 2, 2), Err(AuthError::FromMyself(2)));
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(fresh_nonce(), fresh_nonce());
    }
}
