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

/// Settings that name the TLS files, as error messages show them: the config key, then the
/// command-line option.
const CA_FILE: &str = "mqtt.ca_file (--mqtt-ca-file)";
const CLIENT_CERT: &str = "mqtt.client_cert (--mqtt-client-cert)";
const CLIENT_KEY: &str = "mqtt.client_key (--mqtt-client-key)";

/// Builds the client configuration: trust only the certificates in `ca_file`, and present
/// `client` (certificate chain file, key file) when given.
pub(crate) fn client_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, MqttError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca_file, CA_FILE, "CA certificate")? {
        roots.add(cert).map_err(|error| MqttError::InvalidTlsFile {
            setting: CA_FILE,
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
            let chain = read_certificates(cert_file, CLIENT_CERT, "client certificate")?;
            // rustls (through webpki) rejects a version 1 certificate with only
            // `UnsupportedCertVersion`, in an error that reads like a key mismatch.
            if x509_version(&chain[0]) == Some(1) {
                return Err(MqttError::InvalidTlsFile {
                    setting: CLIENT_CERT,
                    path: cert_file.to_path_buf(),
                    reason: "the certificate is X.509 version 1, but rustls accepts only \
                             version 3: issue it again with extensions, e.g. `openssl x509 \
                             -req ... -extfile client.ext` where client.ext contains \
                             `extendedKeyUsage = clientAuth`"
                        .into(),
                });
            }
            let key = read_private_key(key_file)?;
            builder.with_client_auth_cert(chain, key).map_err(|error| {
                MqttError::InvalidTlsFile {
                    setting: CLIENT_KEY,
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
    setting: &'static str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let mut reader = open(path, setting)?;
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| MqttError::InvalidTlsFile {
            setting,
            path: path.to_path_buf(),
            reason: format!("cannot parse the PEM: {error}"),
        })?;
    if certs.is_empty() {
        return Err(MqttError::InvalidTlsFile {
            setting,
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
    let mut reader = open(path, CLIENT_KEY)?;
    match rustls_pemfile::private_key(&mut reader) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(MqttError::InvalidTlsFile {
            setting: CLIENT_KEY,
            path: path.to_path_buf(),
            reason: "no private key found: expected a PEM block such as -----BEGIN PRIVATE \
                     KEY----- (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY"
                .into(),
        }),
        Err(error) => Err(MqttError::InvalidTlsFile {
            setting: CLIENT_KEY,
            path: path.to_path_buf(),
            reason: format!("cannot parse the PEM: {error}"),
        }),
    }
}

fn open(path: &Path, setting: &'static str) -> Result<BufReader<File>, MqttError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|error| MqttError::ReadTlsFile {
            setting,
            path: path.to_path_buf(),
            error,
        })
}

/// Returns the X.509 version (1, 2 or 3) of a DER certificate, or `None` if the DER does
/// not start like a certificate.
///
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { version [0] EXPLICIT INTEGER
/// DEFAULT v1, ... }, ... }` (RFC 5280, section 4.1): a version 1 certificate omits the
/// `[0]` element, and versions 2 and 3 store 1 and 2.
fn x509_version(der: &[u8]) -> Option<u8> {
    const SEQUENCE: u8 = 0x30;
    const EXPLICIT_0: u8 = 0xa0;
    const INTEGER: u8 = 0x02;

    let (SEQUENCE, certificate) = der_element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs) = der_element(certificate)? else {
        return None;
    };
    let (tag, version) = der_element(tbs)?;
    if tag != EXPLICIT_0 {
        return Some(1);
    }
    match der_element(version)? {
        (INTEGER, [value @ 0..=2]) => Some(value + 1),
        _ => None,
    }
}

/// Splits the first DER element of `bytes` into its tag and its content.
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits count the length bytes that follow, big-endian.
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(count);
        let len = len_bytes
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        (len, rest)
    };
    Some((tag, rest.get(..len)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wraps `content` in a DER element with a short or long length.
    fn element(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            len @ 0..=0x7f => out.push(len as u8),
            len => {
                out.push(0x82);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(content);
        out
    }

    /// Builds a certificate skeleton in which only the fields `x509_version` reads are real.
    fn certificate(version: Option<u8>, padding: usize) -> Vec<u8> {
        let mut tbs = Vec::new();
        if let Some(version) = version {
            tbs.extend(element(0xa0, &element(0x02, &[version])));
        }
        tbs.extend(element(0x02, &[0x01])); // serial number
        tbs.extend([0x05, 0x00].repeat(padding)); // NULLs in place of the other fields
        element(0x30, &element(0x30, &tbs))
    }

    #[test]
    fn x509_version_reads_v1_v2_v3() {
        assert_eq!(x509_version(&certificate(None, 1)), Some(1));
        assert_eq!(x509_version(&certificate(Some(1), 1)), Some(2));
        assert_eq!(x509_version(&certificate(Some(2), 1)), Some(3));
        // Long-form lengths, as every real certificate has.
        assert_eq!(x509_version(&certificate(None, 300)), Some(1));
        assert_eq!(x509_version(&certificate(Some(2), 300)), Some(3));
    }

    #[test]
    fn x509_version_of_non_certificate_is_none() {
        assert_eq!(x509_version(&[]), None);
        assert_eq!(x509_version(b"-----BEGIN"), None);
        // A truncated certificate: the outer length runs past the end.
        let mut truncated = certificate(Some(2), 300);
        truncated.truncate(100);
        assert_eq!(x509_version(&truncated), None);
    }
}
