//! The security options of the command-line tools (`quorra` and `quorra-load` share them):
//! the user to authenticate as, and TLS.

use std::path::PathBuf;

use super::{ClientConfig, ClientError, Credentials};
use crate::net::tls::ClientTls;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct SecurityArgs {
    /// Authenticate as this user (SCRAM-SHA-256); the password comes from QUORRA_PASSWORD
    #[arg(long, env = "QUORRA_USER")]
    pub user: Option<String>,
    /// Speak TLS, trusting the CA(s) in this PEM file
    #[arg(long, env = "QUORRA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Present this certificate (PEM) to brokers that take client certificates (mTLS:
    /// its common name is the principal)
    #[arg(long, env = "QUORRA_TLS_CERT", requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, env = "QUORRA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the broker's certificate must carry [default: the address connected to]
    #[arg(long, env = "QUORRA_TLS_SERVER_NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl SecurityArgs {
    /// `config` with these credentials and TLS settings.
    pub fn apply(&self, config: ClientConfig) -> Result<ClientConfig, ClientError> {
        // (An empty variable, `QUORRA_USER= quorra ...`, means none.)
        let credentials = match self.user.as_ref().filter(|u| !u.is_empty()) {
            Some(user) => {
                let password = std::env::var("QUORRA_PASSWORD").map_err(|_| {
                    ClientError::Invalid(format!("--user {user} needs its password in QUORRA_PASSWORD"))
                })?;
                Some(Credentials { user: user.clone(), password })
            }
            None => None,
        };
        Ok(ClientConfig { credentials, tls: self.client_tls()?, ..config })
    }

    /// The client's TLS settings; None without --tls-ca (plain TCP).
    fn client_tls(&self) -> Result<Option<ClientTls>, ClientError> {
        let Some(ca) = self.tls_ca.as_ref().filter(|p| !p.as_os_str().is_empty()) else { return Ok(None) };
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        ClientTls::from_files(ca, identity, self.tls_server_name.as_deref())
            .map(Some)
            .map_err(|e| ClientError::Invalid(e.to_string()))
    }
}
