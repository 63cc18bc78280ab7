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

/// The broker's side: one per broker, shared by its shards and its control plane;
/// [`Self::reload`] swaps in the files' current contents (SIGHUP), and connections made
/// from then on use them. With `ca_file`, it also holds the node's side of the links it
/// opens to other nodes (its own certificate presented, theirs checked against the CA).
pub struct ServerTls {
    settings: TlsSettings,
    configs: RwLock<Configs>,
}

#[derive(Clone)]
struct Configs {
    server: Arc<rustls::ServerConfig>,
    node_client: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// An accepted TLS connection, and what its client certificate says (if it sent one).
pub struct Accepted {
    pub stream: TlsStream,
    /// The common name, when it is a valid user name (the connection's principal).
    pub principal: Option<String>,
    /// Its DNS names (subject alternative names): a node's certificate names the node.
    pub dns_names: Vec<String>,
}

impl ServerTls {
    pub fn new(settings: &TlsSettings) -> Result<ServerTls, TlsError> {
        Ok(ServerTls { settings: settings.clone(), configs: RwLock::new(load_configs(settings)?) })
    }

    /// Reads the certificate, key and CA files again. On an error the old ones stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_configs(&self.settings)?;
        *self.configs.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn configs(&self) -> Configs {
        self.configs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The acceptor's configuration (for the control plane's tokio streams).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.configs().server
    }

    /// What a link to node `node` of `cluster_id` speaks: this node's certificate, and the
    /// check that the other end's certificate names that node ([`node_name`]).
    pub fn node_connector(&self, cluster_id: &str, node: u32) -> Option<ClientTls> {
        let config = self.configs().node_client?;
        let name = ServerName::try_from(node_name(cluster_id, node)).ok()?;
        Some(ClientTls { config, server_name: Some(name) })
    }

    /// The TLS handshake of an accepted connection.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<Accepted> {
        let tls = TlsAcceptor::from(self.server_config()).accept(buffered(stream)).await?;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
        let (principal, dns_names) = leaf.map(|c| (principal_of(&c), dns_names_of(&c))).unwrap_or_default();
        Ok(Accepted { stream: futures_rustls::TlsStream::Server(tls), principal, dns_names })
    }
}

pub type TlsStream = futures_rustls::TlsStream<Transport>;

/// The TCP stream under a TLS session, buffered both ways. rustls reads at most 4 KiB of
/// records per call and writes one record (at most 16 KiB) per call on a stream without
/// vectored writes (glommio's): unbuffered, a 1 MiB data-link frame cost about 256 reads
/// and 64 writes, each a trip through io_uring. Below TLS these are copies within the
/// buffers, and the socket sees one call per buffer. The writes leave on the TLS stream's
/// flush, which `write_loop` does after every batch of frames.
pub type Transport = futures_lite::io::BufReader<futures_util::io::BufWriter<TcpStream>>;

/// Bytes buffered below TLS in each direction.
const TRANSPORT_BUFFER_BYTES: usize = 64 << 10;

fn buffered(stream: TcpStream) -> Transport {
    futures_lite::io::BufReader::with_capacity(
        TRANSPORT_BUFFER_BYTES,
        futures_util::io::BufWriter::with_capacity(TRANSPORT_BUFFER_BYTES, stream),
    )
}

/// The TCP stream of a TLS stream.
pub fn tcp_of(tls: &TlsStream) -> &TcpStream {
    tls.get_ref().0.get_ref().get_ref()
}

/// The DNS name a node's certificate must carry (a subject alternative name): the node id
/// and the cluster id, so that a certificate of one node cannot speak for another, nor for
/// a node of another cluster signed by the same CA.
pub fn node_name(cluster_id: &str, node: u32) -> String {
    format!("node-{node}.{cluster_id}")
}

fn load_configs(settings: &TlsSettings) -> Result<Configs, TlsError> {
    let server = server_config(settings)?;
    let node_client = match (&settings.ca_file, &settings.cert_file, &settings.key_file) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(ClientTls::from_files(ca, Some((cert.as_path(), key.as_path())), None)?.config)
        }
        _ => None,
    };
    Ok(Configs { server, node_client })
}

/// The DNS subject alternative names of a certificate (none if it cannot be read).
pub fn dns_names_of(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    let Ok(parsed) = x509_cert::Certificate::from_der(cert) else { return Vec::new() };
    let extensions = parsed.tbs_certificate.extensions.unwrap_or_default();
    let Some(san) = extensions.iter().find(|e| e.extn_id == x509_cert::der::oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
    else {
        return Vec::new();
    };
    let Ok(names) = x509_cert::ext::pkix::SubjectAltName::from_der(san.extn_value.as_bytes()) else {
        return Vec::new();
    };
    names
        .0
        .into_iter()
        .filter_map(|n| match n {
            GeneralName::DnsName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// The principal a verified client certificate gives its connection: its subject's common
/// name, if it is a valid user name (else none: the connection may still use SCRAM).
fn principal_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert).ok()?;
    let subject = parsed.tbs_certificate.subject;
    let cn =
        subject.0.iter().flat_map(|rdn| rdn.0.iter()).find(|atv| atv.oid == x509_cert::der::oid::db::rfc4519::CN)?;
    let name = x509_cert::der::asn1::Utf8StringRef::try_from(&cn.value)
        .map(|s| s.as_str().to_string())
        .or_else(|_| x509_cert::der::asn1::PrintableStringRef::try_from(&cn.value).map(|s| s.as_str().to_string()))
        .ok()?;
    crate::protocol::scram::validate_user_name(&name).ok()?;
    Some(name)
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

    /// The client configuration (for the control plane's tokio streams) and the name the
    /// other end's certificate must carry.
    pub fn parts(&self) -> (Arc<rustls::ClientConfig>, Option<ServerName<'static>>) {
        (self.config.clone(), self.server_name.clone())
    }

    /// The TLS handshake of a connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr, stream: TcpStream) -> io::Result<TlsStream> {
        let name = self.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let tls = TlsConnector::from(self.config.clone()).connect(name, buffered(stream)).await?;
        Ok(futures_rustls::TlsStream::Client(tls))
    }
}
