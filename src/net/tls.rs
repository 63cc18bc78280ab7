//! TLS on the client port (rustls with the ring provider, over glommio's streams through
//! `futures-rustls`): the broker's acceptor, whose certificate and key are reloaded on
//! SIGHUP without a restart; the client's connector; and the principal a client
//! certificate names (mTLS).
//!
//! A verified client certificate authenticates its connection as the common name (CN) of
//! its subject, as SCRAM would as a user name: ACLs name it the same way.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures_rustls::{TlsAcceptor, TlsConnector};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use thiserror::Error;

use super::TcpStream;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Whether the broker asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// A client may present one (then it must chain to `ca_file`); others use SCRAM.
    Optional,
    /// Every client must present one that chains to `ca_file`.
    Required,
}

/// `[tls]` of the broker's config: TLS on the client port when `cert_file` is set.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// The broker's certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The CA(s) client certificates must chain to (PEM).
    pub ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// Checks that the keys that go together are given together.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) | (None, Some(_)) => return Err("[tls] cert_file and key_file go together".into()),
            (None, None) if self.ca_file.is_some() || self.client_auth != ClientAuth::None => {
                return Err("[tls] ca_file and client_auth need cert_file and key_file".into())
            }
            _ => {}
        }
        if self.client_auth != ClientAuth::None && self.ca_file.is_none() {
            return Err("[tls] client_auth needs ca_file: the CA client certificates must chain to".into());
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { path: path.to_path_buf(), message: e.to_string() })
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |message: String| TlsError::File { path: path.to_path_buf(), message };
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it (PEM, \"BEGIN CERTIFICATE\")".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?)
        .map_err(|e| TlsError::File { path: path.to_path_buf(), message: format!("no usable private key: {e}") })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::File { path: path.to_path_buf(), message: e.to_string() })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) else {
        return Err(TlsError::Config("[tls] cert_file and key_file are required".into()));
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&settings.ca_file, settings.client_auth) {
        (Some(ca), auth @ (ClientAuth::Optional | ClientAuth::Required)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider());
            let verifier = if auth == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?;
    Ok(Arc::new(config))
}

/// The broker's side: one per broker, shared by its shards; [`Self::reload`] swaps in the
/// files' current contents (SIGHUP), and connections accepted from then on use them.
pub struct ServerTls {
    settings: TlsSettings,
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl ServerTls {
    pub fn new(settings: &TlsSettings) -> Result<ServerTls, TlsError> {
        Ok(ServerTls { settings: settings.clone(), config: RwLock::new(server_config(settings)?) })
    }

    /// Reads the certificate, key and CA files again. On an error the old ones stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_config(&self.settings)?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The TLS handshake of an accepted connection; the principal its client certificate
    /// names, if it presented one.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<(TlsStream, Option<String>)> {
        let config = self.config.read().unwrap_or_else(|e| e.into_inner()).clone();
        let tls = TlsAcceptor::from(config).accept(stream).await?;
        let principal = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(principal_of).transpose()?;
        Ok((futures_rustls::TlsStream::Server(tls), principal))
    }
}

pub type TlsStream = futures_rustls::TlsStream<TcpStream>;

/// The name a verified client certificate gives its connection: its subject's common name.
fn principal_of(cert: &CertificateDer<'_>) -> io::Result<String> {
    use x509_cert::der::Decode;
    let refuse = |m: String| io::Error::new(io::ErrorKind::PermissionDenied, m);
    let parsed = x509_cert::Certificate::from_der(cert).map_err(|e| refuse(format!("unreadable certificate: {e}")))?;
    let cn = parsed
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == x509_cert::der::oid::db::rfc4519::CN)
        .ok_or_else(|| refuse("the client certificate's subject has no common name (CN)".into()))?;
    let name = x509_cert::der::asn1::Utf8StringRef::try_from(&cn.value)
        .map(|s| s.as_str().to_string())
        .or_else(|_| x509_cert::der::asn1::PrintableStringRef::try_from(&cn.value).map(|s| s.as_str().to_string()))
        .map_err(|e| refuse(format!("the certificate's common name is not a string: {e}")))?;
    crate::protocol::scram::validate_user_name(&name).map_err(|e| refuse(format!("certificate common name: {e}")))?;
    Ok(name)
}

/// The client's side: the CA it trusts, and its own certificate for mTLS.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// The name the broker's certificate must carry; by default the address connected to.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl ClientTls {
    pub fn from_files(
        ca: &Path,
        cert_and_key: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> Result<ClientTls, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(load_roots(ca)?);
        let config = match cert_and_key {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?,
            None => builder.with_no_client_auth(),
        };
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_string()).map_err(|e| TlsError::Config(format!("server name {n:?}: {e}")))
            })
            .transpose()?;
        Ok(ClientTls { config: Arc::new(config), server_name })
    }

    /// The TLS handshake of a connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr, stream: TcpStream) -> io::Result<TlsStream> {
        let name = self.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let tls = TlsConnector::from(self.config.clone()).connect(name, stream).await?;
        Ok(futures_rustls::TlsStream::Client(tls))
    }
}
