//! TLS for STARTTLS (RFC 3207) to receiving MX hosts. Opportunistic TLS (RFC 7435)
//! encrypts against passive listeners without authenticating the server, so the
//! handshake's verifier accepts any certificate while still checking the handshake's
//! signatures. Where a domain asks for authenticated TLS (MTA-STS, RFC 8461 §4.2), the
//! certificate the server presented is then judged by a [`CertificateVerifier`]
//! (WebPKI: a chain to a trusted root, valid now, naming the MX host) before any mail
//! command is sent; what it finds is reported in RFC 8460 (TLS-RPT) terms.
//! aws-lc-rs is the crypto provider, as everywhere in Sendmill.

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, LazyLock};

/// Opportunistic TLS authenticates nobody (RFC 7435): any certificate is accepted, the
/// handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(crate) static TLS_CONFIG: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
});

/// The client configuration of opportunistic TLS (RFC 7435): any certificate is taken.
/// For sessions whose peer is not authenticated by TLS (the dispatcher without MTA-STS,
/// the submission bench against its self-made certificate).
pub fn opportunistic_client_config() -> Arc<rustls::ClientConfig> {
    TLS_CONFIG.clone()
}

/// Why a server's TLS did not authenticate it, as RFC 8460 §4.3 names the result types
/// of a TLS-RPT report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    #[error("the server does not offer STARTTLS")]
    StarttlsNotSupported,
    #[error("the certificate does not name the MX host")]
    CertificateHostMismatch,
    #[error("the certificate has expired or is not yet valid")]
    CertificateExpired,
    #[error("the certificate does not chain to a trusted root: {0}")]
    CertificateNotTrusted(String),
    #[error("TLS validation failed: {0}")]
    ValidationFailure(String),
}

impl TlsFailure {
    /// The RFC 8460 `result-type` of this failure.
    pub fn result_type(&self) -> &'static str {
        match self {
            TlsFailure::StarttlsNotSupported => "starttls-not-supported",
            TlsFailure::CertificateHostMismatch => "certificate-host-mismatch",
            TlsFailure::CertificateExpired => "certificate-expired",
            TlsFailure::CertificateNotTrusted(_) => "certificate-not-trusted",
            TlsFailure::ValidationFailure(_) => "validation-failure",
        }
    }
}

/// Judges MX certificates for authenticated TLS (RFC 8461 §4.2): the system's trust
/// anchors plus any extra ones (a private CA), rustls' WebPKI verifier.
#[derive(Debug, Clone)]
pub struct CertificateVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

/// Errors of [`CertificateVerifier::new`].
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("cannot read the certificates in {path}: {error}")]
    Read { path: String, error: String },
    #[error("{path} holds no certificate")]
    Empty { path: String },
    #[error("no trust anchor: the system has none and no extra root was given")]
    NoRoots,
    #[error("cannot build the verifier: {0}")]
    Verifier(String),
}

impl CertificateVerifier {
    /// The system's roots (rustls-native-certs; unreadable ones are skipped) and every
    /// certificate in the PEM files `extra_roots`.
    pub fn new(extra_roots: &[String]) -> Result<Self, RootsError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        for path in extra_roots {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<_, _>>())
                .map_err(|e| RootsError::Read {
                    path: path.clone(),
                    error: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(RootsError::Empty { path: path.clone() });
            }
            roots.add_parsable_certificates(certs);
        }
        if roots.is_empty() {
            return Err(RootsError::NoRoots);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| RootsError::Verifier(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Whether `chain` (the server's certificate first) is valid now for `host_name`.
    pub fn check(&self, chain: &[CertificateDer<'_>], host_name: &str) -> Result<(), TlsFailure> {
        use rustls::client::danger::ServerCertVerifier;
        let (end_entity, intermediates) = chain.split_first().ok_or_else(|| {
            TlsFailure::ValidationFailure("the server presented no certificate".into())
        })?;
        let name = ServerName::try_from(host_name.to_owned())
            .map_err(|_| TlsFailure::ValidationFailure(format!("bad host name {host_name:?}")))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|error| match error {
                rustls::Error::InvalidCertificate(reason) => match reason {
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. } => {
                        TlsFailure::CertificateHostMismatch
                    }
                    rustls::CertificateError::Expired
                    | rustls::CertificateError::ExpiredContext { .. }
                    | rustls::CertificateError::NotValidYet
                    | rustls::CertificateError::NotValidYetContext { .. } => {
                        TlsFailure::CertificateExpired
                    }
                    rustls::CertificateError::UnknownIssuer
                    | rustls::CertificateError::BadSignature
                    | rustls::CertificateError::UnhandledCriticalExtension => {
                        TlsFailure::CertificateNotTrusted(format!("{reason:?}"))
                    }
                    other => TlsFailure::ValidationFailure(format!("{other:?}")),
                },
                other => TlsFailure::ValidationFailure(other.to_string()),
            })
    }
}
