//! SCRAM-SHA-256 (RFC 5802, RFC 7677), both sides, without channel binding: how a client
//! proves its password to the broker without sending it, and the broker proves it holds
//! the client's verifier. The broker stores per user only the salt, the iteration count,
//! `StoredKey` and `ServerKey` ([`Credential`]), never the password.
//!
//! ```text
//! client-first  n,,n=<user>,r=<client nonce>
//! server-first  r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>
//! client-final  c=biws,r=<both nonces>,p=<base64 ClientProof>
//! server-final  v=<base64 ServerSignature>        (or e=<error>)
//! ```
//!
//! Pure: the caller draws the nonces and salts. Every message is at most
//! [`MAX_MESSAGE_BYTES`]; anything malformed is an error, never a panic (untrusted input:
//! `fuzz` and the proptest below).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest SCRAM message accepted, either way.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest user name.
pub const MAX_USER_BYTES: usize = 255;
/// Iterations of a new credential (RFC 7677's minimum is 4096).
pub const DEFAULT_ITERATIONS: u32 = 8192;
/// Iterations a client accepts from a server: at least RFC 7677's minimum, and few enough
/// that a hostile server cannot make the client spin for minutes.
pub const CLIENT_ITERATIONS: std::ops::RangeInclusive<u32> = 4096..=1_000_000;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM message of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("the nonce does not continue the client's")]
    NonceMismatch,
    /// Wrong password or unknown user (the same error for both, so that names cannot be
    /// probed).
    #[error("authentication failed")]
    Failed,
    #[error("the server did not prove it knows the password's verifier")]
    ServerNotVerified,
    #[error("the server asked for {0} iterations")]
    Iterations(u32),
}

/// What the broker keeps of a user's password (RFC 5802, section 3).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({} iterations)", self.iterations)
    }
}

impl Credential {
    pub fn new(password: &str, salt: &[u8], iterations: u32) -> Credential {
        let keys = Keys::derive(password, salt, iterations);
        Credential {
            salt: salt.to_vec(),
            iterations,
            stored_key: Sha256::digest(keys.client_key).into(),
            server_key: keys.server_key,
        }
    }
}

struct Keys {
    client_key: [u8; 32],
    server_key: [u8; 32],
}

impl Keys {
    fn derive(password: &str, salt: &[u8], iterations: u32) -> Keys {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
        Keys { client_key: hmac(&salted, b"Client Key"), server_key: hmac(&salted, b"Server Key") }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn check_length(message: &str) -> Result<(), ScramError> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(ScramError::TooLong(message.len()));
    }
    Ok(())
}

/// The value of attribute `name` (`n=...`) in a field.
fn attribute(field: Option<&str>, name: char) -> Result<&str, ScramError> {
    let field = field.ok_or(ScramError::Malformed("a field is missing"))?;
    let mut chars = field.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("fields out of order"));
    }
    Ok(&field[2..])
}

/// A saslname (`=2C` for ',', `=3D` for '='), decoded.
fn decode_name(raw: &str) -> Result<String, ScramError> {
    if raw.is_empty() || raw.len() > MAX_USER_BYTES {
        return Err(ScramError::Malformed("user name empty or too long"));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in a user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The rules for a user name: 1 to [`MAX_USER_BYTES`] bytes, no control characters.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_BYTES {
        return Err(format!("a user name has 1 to {MAX_USER_BYTES} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err("a user name has no control characters".into());
    }
    Ok(())
}

fn encode_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// A nonce: printable ASCII but ','.
fn check_nonce(nonce: &str) -> Result<(), ScramError> {
    if nonce.is_empty() || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
        return Err(ScramError::Malformed("bad nonce"));
    }
    Ok(())
}

/// The broker's side of one exchange, after the client's first message.
pub struct ServerExchange {
    user: String,
    credential: Credential,
    /// The user is unknown: the exchange goes on (so that it looks like any other) and fails.
    unknown: bool,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ServerExchange {
    /// Reads the client's first message. `lookup` finds the user's credential; for an
    /// unknown user, `decoy` (derived from the name by the caller, the same every time) is
    /// used so that the answer does not tell. Returns the exchange and the server-first
    /// message.
    pub fn start(
        client_first: &str,
        server_nonce: &str,
        lookup: impl FnOnce(&str) -> Option<Credential>,
        decoy: impl FnOnce(&str) -> Credential,
    ) -> Result<(ServerExchange, String), ScramError> {
        check_length(client_first)?;
        check_nonce(server_nonce)?;
        let (gs2, bare) = split_gs2(client_first)?;
        if gs2.authzid.is_some_and(|a| a != gs2.user_hint(bare)) {
            return Err(ScramError::Malformed("an authorization identity other than the user"));
        }
        let mut fields = bare.split(',');
        let user = decode_name(attribute(fields.next(), 'n')?)?;
        let client_nonce = attribute(fields.next(), 'r')?;
        check_nonce(client_nonce)?;
        if fields.next().is_some() {
            return Err(ScramError::Malformed("extensions are not supported"));
        }
        let (credential, unknown) = match lookup(&user) {
            Some(c) => (c, false),
            None => (decoy(&user), true),
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={}", BASE64.encode(&credential.salt), credential.iterations);
        let exchange =
            ServerExchange { user, credential, unknown, nonce, client_first_bare: bare.to_string(), server_first };
        let reply = exchange.server_first.clone();
        Ok((exchange, reply))
    }

    /// The user the client names (authenticated only once [`ServerExchange::finish`] says so).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Checks the client's proof: the authenticated user and the server-final message.
    pub fn finish(self, client_final: &str) -> Result<(String, String), ScramError> {
        check_length(client_final)?;
        let (without_proof, proof) =
            client_final.rsplit_once(",p=").ok_or(ScramError::Malformed("no proof in the final message"))?;
        let mut fields = without_proof.split(',');
        let binding = attribute(fields.next(), 'c')?;
        // Without channel binding the client sends its gs2 header back: "n,," or "y,,".
        if binding != "biws" && binding != "eSws" {
            return Err(ScramError::ChannelBinding);
        }
        if attribute(fields.next(), 'r')? != self.nonce {
            return Err(ScramError::NonceMismatch);
        }
        if fields.next().is_some() {
            return Err(ScramError::Malformed("extensions are not supported"));
        }
        let proof: [u8; 32] = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("the proof is not 32 base64 bytes"))?;
        let auth_message = format!("{},{},{without_proof}", self.client_first_bare, self.server_first);
        let client_signature = hmac(&self.credential.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let matches: bool = stored_key.ct_eq(&self.credential.stored_key).into();
        if !matches || self.unknown {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok((self.user, format!("v={}", BASE64.encode(server_signature))))
    }
}

struct Gs2<'a> {
    authzid: Option<&'a str>,
}

impl Gs2<'_> {
    /// The user named in the bare message (for comparing with the authzid, still escaped).
    fn user_hint<'b>(&self, bare: &'b str) -> &'b str {
        bare.strip_prefix("n=").and_then(|r| r.split(',').next()).unwrap_or("")
    }
}

/// Splits `gs2-header client-first-message-bare`, refusing channel binding.
fn split_gs2(message: &str) -> Result<(Gs2<'_>, &str), ScramError> {
    let mut parts = message.splitn(3, ',');
    match parts.next() {
        Some("n" | "y") => {}
        Some(p) if p.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad gs2 header")),
    }
    let authzid = match parts.next() {
        Some("") => None,
        Some(a) => Some(a.strip_prefix("a=").ok_or(ScramError::Malformed("bad authorization identity"))?),
        None => return Err(ScramError::Malformed("bad gs2 header")),
    };
    let bare = parts.next().ok_or(ScramError::Malformed("no client-first message"))?;
    Ok((Gs2 { authzid }, bare))
}

/// The client's side of one exchange.
pub struct ClientExchange {
    password: String,
    client_first_bare: String,
    client_nonce: String,
}

/// The client's side after the server's first message: what it expects in the server-final.
pub struct ClientAwaitingVerdict {
    server_signature: [u8; 32],
}

impl ClientExchange {
    /// The client-first message for `user`.
    pub fn start(user: &str, password: &str, client_nonce: &str) -> Result<(ClientExchange, String), ScramError> {
        check_nonce(client_nonce)?;
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            return Err(ScramError::Malformed("user name empty or too long"));
        }
        let bare = format!("n={},r={client_nonce}", encode_name(user));
        let first = format!("n,,{bare}");
        let exchange = ClientExchange {
            password: password.to_string(),
            client_first_bare: bare,
            client_nonce: client_nonce.into(),
        };
        Ok((exchange, first))
    }

    /// Answers the server-first message with the client-final one.
    pub fn answer(self, server_first: &str) -> Result<(ClientAwaitingVerdict, String), ScramError> {
        check_length(server_first)?;
        let mut fields = server_first.split(',');
        let nonce = attribute(fields.next(), 'r')?;
        let salt = BASE64.decode(attribute(fields.next(), 's')?).map_err(|_| ScramError::Malformed("bad salt"))?;
        let iterations: u32 =
            attribute(fields.next(), 'i')?.parse().map_err(|_| ScramError::Malformed("bad iteration count"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        check_nonce(nonce)?;
        if !CLIENT_ITERATIONS.contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let keys = Keys::derive(&self.password, &salt, iterations);
        let stored_key: [u8; 32] = Sha256::digest(keys.client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let proof = xor(&keys.client_key, &hmac(&stored_key, auth_message.as_bytes()));
        let server_signature = hmac(&keys.server_key, auth_message.as_bytes());
        Ok((ClientAwaitingVerdict { server_signature }, format!("{without_proof},p={}", BASE64.encode(proof))))
    }
}

impl ClientAwaitingVerdict {
    /// Checks the server-final message: the server knew the verifier.
    pub fn verify(self, server_final: &str) -> Result<(), ScramError> {
        check_length(server_final)?;
        if server_final.starts_with("e=") {
            return Err(ScramError::Failed);
        }
        let signature = server_final.strip_prefix("v=").ok_or(ScramError::Malformed("bad server-final message"))?;
        let signature = BASE64.decode(signature).map_err(|_| ScramError::Malformed("bad server signature"))?;
        if bool::from(signature.ct_eq(&self.server_signature)) {
            Ok(())
        } else {
            Err(ScramError::ServerNotVerified)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // RFC 7677, section 3.
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn pencil() -> Credential {
        Credential::new("pencil", &BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(), 4096)
    }

    fn decoy(_: &str) -> Credential {
        Credential::new("decoy", b"decoy salt 16 b!", 4096)
    }

    #[test]
    fn the_rfc_7677_exchange_passes_both_ways() {
        let (client, first) = ClientExchange::start("user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first, CLIENT_FIRST);
        let (server, server_first) = ServerExchange::start(&first, SERVER_NONCE, |_| Some(pencil()), decoy).unwrap();
        assert_eq!(server_first, SERVER_FIRST);
        let (verdict, client_final) = client.answer(&server_first).unwrap();
        assert_eq!(client_final, CLIENT_FINAL);
        let (user, server_final) = server.finish(&client_final).unwrap();
        assert_eq!((user.as_str(), server_final.as_str()), ("user", SERVER_FINAL));
        verdict.verify(&server_final).unwrap();
    }

    #[test]
    fn wrong_passwords_unknown_users_replays_and_forged_servers_fail() {
        let run = |password: &str, known: bool| {
            let (client, first) = ClientExchange::start("user", password, "rOprNGfwEbeRWgbNEkqO").unwrap();
            let lookup = |_: &str| known.then(pencil);
            let (server, server_first) = ServerExchange::start(&first, SERVER_NONCE, lookup, decoy).unwrap();
            let (_, client_final) = client.answer(&server_first).unwrap();
            (server_first, server.finish(&client_final))
        };
        assert_eq!(run("pencil2", true).1.unwrap_err(), ScramError::Failed);
        // An unknown user gets a challenge like any other, and the same error at the end,
        // even with the decoy's own password.
        let (first_unknown, result) = run("decoy", false);
        assert!(first_unknown.starts_with("r=rOprNGfwEbeRWgbNEkqO") && first_unknown.contains(",i=4096"));
        assert_eq!(result.unwrap_err(), ScramError::Failed);
        // A recorded client-final replayed against a new server nonce.
        let (server, _) = ServerExchange::start(CLIENT_FIRST, "anotherNonce", |_| Some(pencil()), decoy).unwrap();
        assert_eq!(server.finish(CLIENT_FINAL).unwrap_err(), ScramError::NonceMismatch);
        // A server that does not hold the verifier cannot forge the server-final.
        let (client, _) = ClientExchange::start("user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
        let (verdict, _) = client.answer(SERVER_FIRST).unwrap();
        assert_eq!(
            verdict.verify("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap_err(),
            ScramError::ServerNotVerified
        );
    }

    #[test]
    fn hostile_messages_are_refused() {
        let start = |m: &str| ServerExchange::start(m, SERVER_NONCE, |_| Some(pencil()), decoy).map(|_| ());
        assert_eq!(start("p=tls-unique,,n=user,r=abc").unwrap_err(), ScramError::ChannelBinding);
        assert!(start("n,,n=user,r=abc,m=ext").is_err());
        assert!(start("n,,r=abc,n=user").is_err());
        assert!(start("n,a=admin,n=user,r=abc").is_err(), "an authzid other than the user");
        assert!(start("n,,n=us=er,r=abc").is_err());
        assert!(start("n,,n=,r=abc").is_err());
        assert_eq!(start(&format!("n,,n=user,r={}", "x".repeat(2000))).unwrap_err(), ScramError::TooLong(2012));
        start("n,a=user,n=user,r=abc").unwrap();
        // A client refuses a server that does not extend its nonce or asks for too much work.
        let client = || ClientExchange::start("user", "pencil", "abc").unwrap().0;
        assert_eq!(client().answer("r=abc,s=AAAA,i=4096").err(), Some(ScramError::NonceMismatch));
        assert_eq!(client().answer("r=xyzdef,s=AAAA,i=4096").err(), Some(ScramError::NonceMismatch));
        assert_eq!(client().answer("r=abcdef,s=AAAA,i=999999999").err(), Some(ScramError::Iterations(999_999_999)));
        assert_eq!(client().answer("r=abcdef,s=AAAA,i=1").err(), Some(ScramError::Iterations(1)));
    }

    #[test]
    fn user_names_with_commas_and_equals_signs_round_trip() {
        let (_, first) = ClientExchange::start("a,b=c", "pw", "n0nce").unwrap();
        assert_eq!(first, "n,,n=a=2Cb=3Dc,r=n0nce");
        let (server, _) = ServerExchange::start(&first, "srv", |_| None, decoy).unwrap();
        assert_eq!(server.user(), "a,b=c");
    }

    proptest! {
        #[test]
        fn garbage_never_panics_either_side(text in "[ -~]{0,200}") {
            if let Ok((server, _)) = ServerExchange::start(&text, "srv", |_| Some(pencil()), decoy) {
                let _ = server.finish(&text);
            }
            let (client, _) = ClientExchange::start("user", "pencil", "abc").unwrap();
            if let Ok((verdict, _)) = client.answer(&text) {
                let _ = verdict.verify(&text);
            }
        }
    }
}
