//! What the guard's TLS clients and servers share: the crypto provider and the system's roots.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The system's roots in the guard's image (Debian's bundle).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The crypto provider of every TLS session the guard makes (ring).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's roots (none when the bundle is missing).
pub(crate) fn system_roots() -> Vec<CertificateDer<'static>> {
    std::fs::read(SYSTEM_ROOTS)
        .map(|b| CertificateDer::pem_slice_iter(&b).flatten().collect())
        .unwrap_or_default()
}
