//! Certificates made at run time with rcgen for the TLS and auth tests: a CA per test and
//! leaf certificates it signs, written under the test's temp dir. None is committed.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;

/// A self-signed CA made for one test.
pub struct Ca {
    /// The CA certificate.
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    /// A new CA whose Common Name is `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        Ca { cert, key }
    }

    /// A leaf certificate (server and client use) for `cn`, valid from `not_before` to
    /// `not_after`, with 127.0.0.1 and localhost as names; returns (cert PEM, key PEM).
    pub fn leaf_valid(
        &self,
        cn: &str,
        serial: u64,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> (String, String) {
        self.leaf_with_uris(cn, serial, not_before, not_after, &[])
    }

    /// [`Ca::leaf_valid`] with `uris` added to the subject alternative names.
    pub fn leaf_with_uris(
        &self,
        cn: &str,
        serial: u64,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        uris: &[&str],
    ) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("leaf params");
        for uri in uris {
            let uri = rcgen::Ia5String::try_from(uri.to_string()).expect("an ASCII URI");
            params.subject_alt_names.push(rcgen::SanType::URI(uri));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.serial_number = Some(serial.into());
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// [`Ca::leaf_valid`] from yesterday to 30 days from now.
    pub fn leaf(&self, cn: &str, serial: u64) -> (String, String) {
        let now = OffsetDateTime::now_utc();
        self.leaf_valid(cn, serial, now - time::Duration::days(1), now + time::Duration::days(30))
    }

    /// Writes a leaf's PEMs under `dir` as `<name>.pem` and `<name>-key.pem`; returns their paths.
    pub fn write_leaf(&self, dir: &Path, name: &str, pems: (String, String)) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, pems.0).expect("write cert");
        std::fs::write(&key, pems.1).expect("write key");
        (cert, key)
    }

    /// Writes the CA certificate under `dir` as `<name>.pem`; returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.cert.pem()).expect("write CA");
        path
    }
}
