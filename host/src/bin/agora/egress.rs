//! `agora host`'s options for where its agents' outbound HTTP may go, with what credentials and
//! at what price.

use std::path::{Path, PathBuf};

use agora_host::egress::{Credential, EgressConfig, IpNetwork};
use agora_registry::egress::OriginPattern;
use anyhow::Context;

/// Outbound HTTP for agents whose manifests declare the origins (`agora publish --egress`).
#[derive(Debug, clap::Args)]
pub(crate) struct EgressArgs {
    /// Let agents that declare it send requests to this origin (repeatable):
    /// `https://api.example.com`, `https://*.example.com`, `http://127.0.0.1:8080`. Nothing is
    /// granted by default.
    #[arg(long = "grant-egress", value_name = "ORIGIN")]
    grants: Vec<OriginPattern>,
    /// Let granted requests reach this network although it is loopback, private or link-local
    /// (repeatable), e.g. 127.0.0.1/32 for a server on this machine. By default only public
    /// addresses are reached.
    #[arg(long = "egress-allow-network", value_name = "CIDR")]
    networks: Vec<IpNetwork>,
    /// Add the header in FILE (one line, `Name: value`, e.g. `Authorization: Bearer …`) to every
    /// request to ORIGIN (repeatable). The file must not be readable by group or others; its
    /// value is never shown to agents, logged, or put in a transcript or receipt.
    #[arg(long = "egress-credential", value_name = "ORIGIN=FILE")]
    credentials: Vec<String>,
    /// Also trust TLS certificates issued by the CA certificates in this PEM file (Mozilla's
    /// roots are always trusted).
    #[arg(long, value_name = "PEM")]
    egress_ca: Option<PathBuf>,
    /// Price per million bytes sent or received, in the marketplace's smallest unit.
    #[arg(long, value_name = "PRICE", default_value_t = 0)]
    egress_price: u64,
}

impl EgressArgs {
    /// The configuration these options describe: nothing granted without --grant-egress.
    pub(crate) fn config(&self) -> anyhow::Result<EgressConfig> {
        let mut config = EgressConfig::default().price_per_mbyte(self.egress_price);
        for grant in &self.grants {
            config = config.grant(grant.clone());
        }
        if let Some(path) = &self.egress_ca {
            for der in agora_host::tls::read_pem_certificates(path)? {
                config = config.trust_root(der);
            }
        }
        for network in &self.networks {
            config = config.allow_network(*network);
        }
        for credential in &self.credentials {
            let (origin, path) = credential.split_once('=').with_context(|| {
                format!("--egress-credential {credential:?} is not ORIGIN=FILE")
            })?;
            let origin: OriginPattern = origin.parse()?;
            let line = crate::secret_file::read(Path::new(path))?;
            let credential = Credential::from_header_line(origin.clone(), &line)
                .with_context(|| format!("reading the credential for {origin} from {path}"))?;
            config = config.credential(credential);
        }
        Ok(config)
    }
}
