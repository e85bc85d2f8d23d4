//! TLS for the connections a host opens itself: agents' granted outbound HTTPS and HTTPS model
//! servers. One client configuration: ring, TLS 1.2 and 1.3, Mozilla's roots compiled in
//! (webpki-roots, so nothing is read from the system or fetched), plus roots the operator adds.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Why a TLS client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A root certificate the operator gave is not usable.
    #[error("a trust root is not a usable certificate: {0}")]
    BadRoot(rustls::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// A PEM file could not be read or holds no certificate.
    #[error("reading certificates from {path}: {reason}")]
    Pem {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A client configuration trusting Mozilla's roots and `extra_roots` (DER-encoded).
pub(crate) fn client_config(
    extra_roots: &[Vec<u8>],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra_roots {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(TlsError::BadRoot)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a server's certificate must carry: the host name, or the IP address.
pub(crate) fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Some(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.to_owned()).ok(),
    }
}

/// The certificates in a PEM file, DER-encoded: an operator's own certificate authority.
pub fn read_pem_certificates(path: &Path) -> Result<Vec<Vec<u8>>, TlsError> {
    let error = |reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no CERTIFICATE block".into()));
    }
    Ok(certificates)
}
