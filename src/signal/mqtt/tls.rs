//! rustls client configuration from PEM files, with the ring provider.
//!
//! The ring provider is chosen explicitly because rumqttc's default, aws-lc-rs, needs cmake
//! and a C toolchain per target, which complicates ARM cross-builds. There is no fallback to
//! the system's certificate store: `mqtts://` requires a CA file.

use super::MqttError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

/// Builds the client configuration: trust only the certificates in `ca_file`, and present
/// `client` (certificate chain file, key file) when given.
pub(crate) fn client_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, MqttError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca_file, "CA certificate")? {
        roots.add(cert).map_err(|error| MqttError::InvalidTlsFile {
            path: ca_file.to_path_buf(),
            reason: format!("a certificate in it cannot be used as a trust anchor: {error}"),
        })?;
    }

    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange; it
    // is kept because aws-lc-rs, which has it, complicates cross-builds for ARM boards.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(MqttError::TlsSetup)?
        .with_root_certificates(roots);

    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = read_certificates(cert_file, "client certificate")?;
            let key = read_private_key(key_file)?;
            builder.with_client_auth_cert(chain, key).map_err(|error| {
                MqttError::InvalidTlsFile {
                    path: key_file.to_path_buf(),
                    reason: format!(
                        "the key does not fit the client certificate {} or is unsupported: {error}",
                        cert_file.display()
                    ),
                }
            })?
        }
    };
    Ok(Arc::new(config))
}

/// Reads every `CERTIFICATE` block of a PEM file; at least one is required.
fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let mut reader = open(path)?;
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| MqttError::InvalidTlsFile {
            path: path.to_path_buf(),
            reason: format!("cannot parse the PEM: {error}"),
        })?;
    if certs.is_empty() {
        return Err(MqttError::InvalidTlsFile {
            path: path.to_path_buf(),
            reason: format!(
                "no {what} found: expected a PEM block starting with -----BEGIN CERTIFICATE-----"
            ),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, MqttError> {
    let mut reader = open(path)?;
    match rustls_pemfile::private_key(&mut reader) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(MqttError::InvalidTlsFile {
            path: path.to_path_buf(),
            reason: "no private key found: expected a PEM block such as -----BEGIN PRIVATE \
                     KEY----- (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY"
                .into(),
        }),
        Err(error) => Err(MqttError::InvalidTlsFile {
            path: path.to_path_buf(),
            reason: format!("cannot parse the PEM: {error}"),
        }),
    }
}

fn open(path: &Path) -> Result<BufReader<File>, MqttError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|error| MqttError::ReadTlsFile {
            path: path.to_path_buf(),
            error,
        })
}
