//! softcas: a local two-level CA (root and intermediate, EC P-256, rcgen) kept in
//! the data directory — the embedded default upstream for a first run and for
//! tests (DESIGN.md §1, §2). It issues RFC 5280 server certificates for the
//! identifiers the RA validated (RFC 8555 §7.4, IP addresses per RFC 8738) and
//! records revocations (RFC 8555 §7.6).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::{error, fmt};

use async_trait::async_trait;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::{
    CertificateAuthorityService, Checkpoint, IssuedChain, RevokeRequest, SignRequest, UpstreamError,
};
use crate::acme::{Identifier, ProblemType};

const ROOT_CRT: &str = "root.crt";
const ROOT_KEY: &str = "root.key";
const INTERMEDIATE_CRT: &str = "intermediate.crt";
const INTERMEDIATE_KEY: &str = "intermediate.key";
const REVOKED: &str = "revoked.json";
const ROOT_LIFETIME: time::Duration = time::Duration::days(3650);
const INTERMEDIATE_LIFETIME: time::Duration = time::Duration::days(1826);
/// How far back a leaf's notBefore goes by default, for clients with slow clocks.
const BACKDATE: time::Duration = time::Duration::minutes(1);
/// RFC 5280 upper bound for a commonName (ub-common-name).
const MAX_CN_LEN: usize = 64;

/// Where and how the soft CA keeps its keys.
#[derive(Clone, Debug)]
pub struct SoftCasOptions {
    /// The directory holding the CA files (`<dataDir>/softcas`).
    pub dir: PathBuf,
    /// The CA's name: certificates are `<name> Root CA` and `<name> Intermediate CA`.
    pub name: String,
    /// Leaf lifetime when the request names no notAfter.
    pub default_lifetime: std::time::Duration,
}

/// A local CA: a root and an intermediate kept in a directory, the intermediate
/// signing every leaf.
pub struct SoftCas {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    root_der: Vec<u8>,
    intermediate_der: Vec<u8>,
    intermediate_not_after: OffsetDateTime,
    default_lifetime: time::Duration,
    revocations: Arc<Revocations>,
}

impl SoftCas {
    /// Opens the CA in `opts.dir`, creating the root and intermediate on first
    /// start. An incomplete or corrupt set of files is an error naming the file;
    /// existing keys are never overwritten.
    pub fn open(opts: SoftCasOptions) -> Result<Self, UpstreamError> {
        let dir = opts.dir;
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| internal(format!("softcas: cannot create {}", dir.display()), e))?;
        }
        let files = [ROOT_CRT, ROOT_KEY, INTERMEDIATE_CRT, INTERMEDIATE_KEY];
        let mut present = Vec::new();
        for name in files {
            let path = dir.join(name);
            let exists = path
                .try_exists()
                .map_err(|e| internal(format!("softcas: cannot stat {}", path.display()), e))?;
            if exists {
                present.push(name);
            }
        }
        if present.is_empty() {
            generate(&dir, &opts.name)?;
        } else if let Some(missing) = files.iter().find(|f| !present.contains(f)) {
            return Err(msg(format!(
                "softcas: {} is missing while {} exist; refusing to create a new CA over existing \
                 keys (restore the file, or remove the directory if nothing depends on this CA)",
                dir.join(missing).display(),
                present.join(", ")
            )));
        }

        let root_path = dir.join(ROOT_CRT);
        let int_path = dir.join(INTERMEDIATE_CRT);
        let root_der = read_pem_cert(&root_path)?;
        let intermediate_der = read_pem_cert(&int_path)?;
        let root = parse_ca(&root_path, &root_der)?;
        let intermediate = parse_ca(&int_path, &intermediate_der)?;
        read_key(&dir.join(ROOT_KEY), &root)?;
        let intermediate_key = read_key(&dir.join(INTERMEDIATE_KEY), &intermediate)?;
        if intermediate.issuer() != root.subject()
            || intermediate
                .verify_signature(Some(root.public_key()))
                .is_err()
        {
            return Err(msg(format!(
                "softcas: {} is not signed by {}",
                int_path.display(),
                root_path.display()
            )));
        }
        let intermediate_not_after = intermediate.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(
            &CertificateDer::from(intermediate_der.as_slice()),
            intermediate_key,
        )
        .map_err(|e| internal(format!("softcas: cannot use {}", int_path.display()), e))?;
        if intermediate_not_after < OffsetDateTime::now_utc() {
            tracing::warn!(path = %int_path.display(), "softcas intermediate has expired");
        }

        let default_lifetime = time::Duration::try_from(opts.default_lifetime)
            .map_err(|e| internal("softcas: default lifetime is out of range", e))?;
        let revocations = Arc::new(Revocations::load(dir.join(REVOKED))?);
        Ok(Self {
            dir,
            issuer,
            root_der,
            intermediate_der,
            intermediate_not_after,
            default_lifetime,
            revocations,
        })
    }

    /// The root certificate as PEM, for trust stores and `/roots.pem`.
    pub fn root_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.root_der.clone()))
    }

    /// The intermediate certificate, DER.
    pub fn intermediate_der(&self) -> &[u8] {
        &self.intermediate_der
    }

    /// Whether the certificate with this serial (hex, any case, colons allowed)
    /// has been revoked here.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.revocations
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&normalize_serial(serial_hex))
    }

    fn leaf_params(
        &self,
        req: &SignRequest,
        is_rsa: bool,
    ) -> Result<CertificateParams, UpstreamError> {
        if req.identifiers.is_empty() {
            return Err(rejected(ProblemType::BadCsr, "no identifiers to certify"));
        }
        let now = OffsetDateTime::now_utc();
        let not_before = req.not_before.unwrap_or(now - BACKDATE);
        let not_after = req
            .not_after
            .unwrap_or(now + self.default_lifetime)
            .min(self.intermediate_not_after);
        if self.intermediate_not_after <= now {
            return Err(msg(format!(
                "softcas: the intermediate in {} expired at {}",
                self.dir.display(),
                self.intermediate_not_after
            )));
        }
        if not_after <= not_before {
            return Err(rejected(
                ProblemType::Malformed,
                format!("notAfter {not_after} is not after notBefore {not_before}"),
            ));
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let cn = req.identifiers.iter().find_map(|id| match id {
            Identifier::Dns(name) if name.len() <= MAX_CN_LEN => Some(name.clone()),
            _ => None,
        });
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        for id in &req.identifiers {
            params.subject_alt_names.push(match id {
                Identifier::Dns(name) => {
                    SanType::DnsName(Ia5String::try_from(name.as_str()).map_err(|_| {
                        rejected(
                            ProblemType::RejectedIdentifier,
                            format!("{id} is not an IA5 string"),
                        )
                    })?)
                }
                Identifier::Ip(ip) => SanType::IpAddress(*ip),
            });
        }
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if is_rsa {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

#[async_trait]
impl CertificateAuthorityService for SoftCas {
    fn name(&self) -> &'static str {
        "softcas"
    }

    async fn create_certificate(
        &self,
        req: &SignRequest,
        _checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        // x509-parser rather than rcgen's CSR parser: rcgen refuses CSRs carrying
        // extensions it does not know (must-staple, basicConstraints), and the
        // only thing taken from the CSR is its verified public key.
        let Ok(([], csr)) = X509CertificationRequest::from_der(&req.csr_der) else {
            return Err(rejected(ProblemType::BadCsr, "the CSR is not valid DER"));
        };
        csr.verify_signature()
            .map_err(|_| rejected(ProblemType::BadCsr, "the CSR signature does not verify"))?;
        let spki = &csr.certification_request_info.subject_pki;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| {
            rejected(
                ProblemType::BadPublicKey,
                "the CSR key type is not supported",
            )
        })?;
        let is_rsa = matches!(spki.parsed(), Ok(PublicKey::RSA(_)));

        let params = self.leaf_params(req, is_rsa)?;
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| internal("softcas: cannot sign the certificate", e))?;
        Ok(IssuedChain {
            certificates: vec![
                leaf.der().to_vec(),
                self.intermediate_der.clone(),
                self.root_der.clone(),
            ],
        })
    }

    async fn revoke_certificate(&self, req: &RevokeRequest) -> Result<(), UpstreamError> {
        if req.reason > 10 || req.reason == 7 {
            return Err(rejected(
                ProblemType::BadRevocationReason,
                format!("{} is not an RFC 5280 reason code", req.reason),
            ));
        }
        let serial = if req.certificate_der.is_empty() {
            normalize_serial(&req.serial_hex)
        } else {
            let (_, intermediate) = X509Certificate::from_der(&self.intermediate_der)
                .map_err(|e| internal("softcas: cannot parse the intermediate", e))?;
            let (_, cert) = X509Certificate::from_der(&req.certificate_der).map_err(|_| {
                rejected(ProblemType::Malformed, "the certificate is not valid DER")
            })?;
            if cert
                .verify_signature(Some(intermediate.public_key()))
                .is_err()
            {
                return Err(rejected(
                    ProblemType::Unauthorized,
                    "the certificate was not issued by this CA",
                ));
            }
            normalize_serial(&hex(cert.raw_serial()))
        };
        let revocations = Arc::clone(&self.revocations);
        let reason = req.reason;
        tokio::task::spawn_blocking(move || revocations.record(serial, reason))
            .await
            .map_err(|e| internal("softcas: revocation task failed", e))?
    }

    fn roots(&self) -> Vec<Vec<u8>> {
        vec![self.root_der.clone()]
    }

    async fn health(&self) -> Result<(), UpstreamError> {
        if self.intermediate_not_after <= OffsetDateTime::now_utc() {
            return Err(UpstreamError::Unavailable {
                context: format!(
                    "softcas: the intermediate in {} has expired",
                    self.dir.display()
                ),
                source: None,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for SoftCas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftCas")
            .field("dir", &self.dir)
            .field("intermediate_not_after", &self.intermediate_not_after)
            .finish_non_exhaustive()
    }
}

/// The revocation list in `revoked.json`: serial (lower-case hex) to entry.
#[derive(Debug)]
struct Revocations {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Revocation>>,
}

impl Revocations {
    fn load(path: PathBuf) -> Result<Self, UpstreamError> {
        let entries = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| internal(format!("softcas: {} is corrupt", path.display()), e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(internal(
                    format!("softcas: cannot read {}", path.display()),
                    e,
                ));
            }
        };
        Ok(Self {
            path,
            entries: Mutex::new(entries),
        })
    }

    fn record(&self, serial: String, reason: u8) -> Result<(), UpstreamError> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.contains_key(&serial) {
            return Err(rejected(
                ProblemType::AlreadyRevoked,
                format!("certificate {serial} is already revoked"),
            ));
        }
        let revoked_at = OffsetDateTime::now_utc();
        entries.insert(serial.clone(), Revocation { reason, revoked_at });
        let written = serde_json::to_vec_pretty(&*entries)
            .map_err(|e| internal("softcas: cannot encode the revocation list", e))
            .and_then(|json| {
                write_atomic(&self.path, &json, 0o644).map_err(|e| {
                    internal(format!("softcas: cannot write {}", self.path.display()), e)
                })
            });
        if written.is_err() {
            entries.remove(&serial);
        }
        written
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Revocation {
    reason: u8,
    #[serde(with = "time::serde::rfc3339")]
    revoked_at: OffsetDateTime,
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory (created with `mode`), fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates the root and intermediate in `dir` (first start).
fn generate(dir: &Path, name: &str) -> Result<(), UpstreamError> {
    let now = OffsetDateTime::now_utc();
    let ca_params = |cn: String, path_len: u8, lifetime: time::Duration| {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, name);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + lifetime;
        params
    };
    let key = || {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| internal("softcas: cannot generate a key", e))
    };

    let mut root_params = ca_params(format!("{name} Root CA"), 1, ROOT_LIFETIME);
    root_params.serial_number = Some(random_serial()?);
    let root = CertifiedIssuer::self_signed(root_params, key()?)
        .map_err(|e| internal("softcas: cannot create the root", e))?;
    let mut int_params = ca_params(format!("{name} Intermediate CA"), 0, INTERMEDIATE_LIFETIME);
    int_params.serial_number = Some(random_serial()?);
    int_params.use_authority_key_identifier_extension = true;
    let intermediate = CertifiedIssuer::signed_by(int_params, key()?, &root)
        .map_err(|e| internal("softcas: cannot create the intermediate", e))?;

    let writes = [
        (ROOT_KEY, root.key().serialize_pem(), 0o600),
        (ROOT_CRT, root.pem(), 0o644),
        (INTERMEDIATE_KEY, intermediate.key().serialize_pem(), 0o600),
        (INTERMEDIATE_CRT, intermediate.pem(), 0o644),
    ];
    for (file, contents, mode) in writes {
        let path = dir.join(file);
        write_atomic(&path, contents.as_bytes(), mode)
            .map_err(|e| internal(format!("softcas: cannot write {}", path.display()), e))?;
    }
    tracing::info!(dir = %dir.display(), "softcas created a new root and intermediate");
    Ok(())
}

/// Reads one PEM certificate, DER out.
fn read_pem_cert(path: &Path) -> Result<Vec<u8>, UpstreamError> {
    let text = fs::read_to_string(path)
        .map_err(|e| internal(format!("softcas: cannot read {}", path.display()), e))?;
    match pem::parse(&text) {
        Ok(block) if block.tag() == "CERTIFICATE" => Ok(block.into_contents()),
        _ => Err(msg(format!(
            "softcas: {} is corrupt: not a PEM CERTIFICATE",
            path.display()
        ))),
    }
}

/// Parses a CA certificate read from `path`.
fn parse_ca<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, UpstreamError> {
    match X509Certificate::from_der(der) {
        Ok((rest, cert)) if rest.is_empty() && cert.is_ca() => Ok(cert),
        _ => Err(msg(format!(
            "softcas: {} is corrupt: not a valid X.509 CA certificate",
            path.display()
        ))),
    }
}

/// Reads a PKCS#8 PEM key and checks that it belongs to `cert`.
fn read_key(path: &Path, cert: &X509Certificate<'_>) -> Result<KeyPair, UpstreamError> {
    let text = fs::read_to_string(path)
        .map_err(|e| internal(format!("softcas: cannot read {}", path.display()), e))?;
    let key = KeyPair::from_pem(&text)
        .map_err(|e| internal(format!("softcas: {} is corrupt", path.display()), e))?;
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(msg(format!(
            "softcas: {} does not match its certificate",
            path.display()
        )));
    }
    Ok(key)
}

/// A positive random serial of 159 bits at most (RFC 5280 §4.1.2.2: at most 20 octets).
fn random_serial() -> Result<SerialNumber, UpstreamError> {
    let mut bytes = [0u8; 20];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| msg("softcas: the system random generator failed".to_owned()))?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex without colons or leading zeros.
fn normalize_serial(serial: &str) -> String {
    let digits: String = serial
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match digits.trim_start_matches('0') {
        "" => "0".to_owned(),
        rest => rest.to_owned(),
    }
}

fn msg(context: String) -> UpstreamError {
    UpstreamError::Internal {
        context,
        source: None,
    }
}

fn internal(
    context: impl Into<String>,
    source: impl error::Error + Send + Sync + 'static,
) -> UpstreamError {
    UpstreamError::Internal {
        context: context.into(),
        source: Some(Box::new(source)),
    }
}

fn rejected(kind: ProblemType, detail: impl Into<String>) -> UpstreamError {
    UpstreamError::Rejected {
        kind,
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use rcgen::PKCS_ED25519;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    use super::*;
    use crate::upstream::NoCheckpoint;

    /// A fixed RSA-2048 test key: ring cannot generate RSA keys.
    const RSA_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDHkHGhEmmTsagz
J4QrDprNanwSnjDWO4fwvr0A70sd+e+TEm1r82Kibqy0ssbe9T87kK7bSJYTDuHU
mpCVF0LHCvLgEPfMsCVNcnzupXCIcEmGOoGZlHUPCeOYS5jKdVdI9OX4A+SjCWVK
h8+fAAC0Mqmh1x3OdZZ6vIXlkyvEeNtoMaA4K3dUaHoH3GpxRYbZhLpOk3DtnNwA
d+v1Z+DL7rzj7eQlt1xJ40sAncLCPWpiUS1caReyMEtkqUtLKp6ftJh81nPwutRC
7EqBX1lLo1A8FQgeOOM3Q42L85UZd8+HbbsVlLe2rzYf3xi8rW3veFubbvOGgoIz
iyl86G/rAgMBAAECggEANqz07NfyFBR7DFTZycAtGnV/u8wafj9+La/ccZqeHn7h
LA7C6u4aSn1/FNzcTq6rneK0fYDEGUGdDtYwIaDnW0g9JbWQZsSl27Ov1eR+0erN
whhadJzve2jOseWYXXPLr8HlFc/fPunulf5inGHwT26H+j7JPE0MJuFq3+yz85Zb
Kyxkm/pJCB5px36uRDAsCq8MXPaVsKySx8h6I/ua44s+IY4+xN9bCHA+jvs6JVtK
+hd4KJ6yk50kNNi/+2Pwarjha+DoX8/9K/XOBhhZ0H0Urg+j6YhAAqPgaMr6OIff
Hzwqvh9vKHi3nH/a/QAZg3YxcgYyNa2i1bG1t16WgQKBgQDtMKK03jsP4w3xuAVr
Jty3wm7MD93GNLj23L3haE6Hd+ndBSlWIDhOMUVMlN+EqXR7itznLC+qOQMFptu6
sPAPekJGktpe43rqCm6IZTw4fllpKl3fCcGv7ZJSoR2IoPWZB0FejkeKRqF7PG4Q
PScpdB+oxc0NJduHmORQSiePgQKBgQDXY/DfCrY58QI5IJAIuU4NMM4LN0oT7KXw
nJrh8kuHqbC3n80rNVmH30UIzeFfBCBu9fzB4omUkBmJGAgxqsaR/QPoeBzbRwBi
RPA3qgeDQITgUPbT3E9ts8ij5IWNBBaEVKfGQCsemNbCWWE6nX4P6BIs4enIYbH8
SfYB1on1awKBgQC296ybr06KS9GG5Dix1rGuwzrrCVY/vo3sSI3lIqxpTfRGfePM
P2CP2OwnTjQ6RunHH3CWl3xRaFdPdc7Mbg9RMTOM812mkv5PKirn5ogU4EqimH7/
Pax+xNn6CbUZn2i1WmZvxXukTCXnRc91kWbzUFPXwnYSLWDycdu1n+5ygQKBgDeP
9nDzCHMF8vbdqYo2kyXf8yb9ikR9hYj+PQ4QPN+wLIAR3xFIX+Im/F37Dio+nEdD
eYJid+81BQFSi7qUPUknpbxwT7FZLYYsFnOlju6S1DQxbprUeEDqYdW1e6YW6eAV
HnqLzxPDhZL5D5XZTs23pgih9nbUjN9yDN4Ig+olAoGAC1V93MA/KRnHHEwUD5je
OGtEGydbNhoE8w0yzjmUGPZWfilZVJkH6WTGCxJ+OmLOlFwE89olUBk4P+NNEII9
WK6DNM1m1RR5/74mjHZ3zwtp6wbmBcClZB7Yy2yEZM47Nl+UmjR1694sP54ldhrs
KY+0YUUDO5EGMG8ZfORW3UY=
-----END PRIVATE KEY-----
";

    fn open(dir: &Path, lifetime_secs: u64) -> Result<SoftCas, UpstreamError> {
        SoftCas::open(SoftCasOptions {
            dir: dir.to_owned(),
            name: "acmeproxy".to_owned(),
            default_lifetime: std::time::Duration::from_secs(lifetime_secs),
        })
    }

    /// A request whose CSR names `csr_name` but whose identifiers are `ids`.
    fn request(key: &KeyPair, csr_name: &str, ids: Vec<Identifier>) -> SignRequest {
        let params = CertificateParams::new(vec![csr_name.to_owned()]).unwrap();
        let csr = params.serialize_request(key).unwrap();
        let (not_before, not_after, resume, replaces) = (None, None, None, None);
        let csr_der = csr.der().to_vec();
        SignRequest {
            csr_der,
            identifiers: ids,
            not_before,
            not_after,
            resume,
            replaces,
        }
    }

    fn ids() -> Vec<Identifier> {
        let dns = |n: &str| Identifier::Dns(n.to_owned());
        let ip = |a: &str| Identifier::Ip(a.parse().unwrap());
        vec![
            dns("www.example.test"),
            dns("*.example.test"),
            ip("192.0.2.7"),
            ip("2001:db8::1"),
        ]
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        X509Certificate::from_der(der).unwrap().1
    }

    fn kind(err: UpstreamError) -> Option<ProblemType> {
        match err {
            UpstreamError::Rejected { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// Checks the chain with x509-parser only, never with rcgen.
    fn check_chain(chain: &IssuedChain, ids: &[Identifier], rsa: bool) {
        let [leaf, int, root] = chain.certificates.as_slice() else {
            panic!("expected leaf, intermediate and root");
        };
        let (leaf, int, root) = (parse(leaf), parse(int), parse(root));
        assert_eq!(
            (leaf.issuer(), int.issuer()),
            (int.subject(), root.subject())
        );
        assert_eq!(root.issuer(), root.subject());
        leaf.verify_signature(Some(int.public_key())).unwrap();
        int.verify_signature(Some(root.public_key())).unwrap();
        root.verify_signature(None).unwrap();
        let path_len = |c: &X509Certificate<'_>| {
            let bc = c.basic_constraints().unwrap().unwrap().value;
            (bc.ca, bc.path_len_constraint)
        };
        assert_eq!(path_len(&leaf), (false, None));
        assert_eq!(
            (path_len(&int), path_len(&root)),
            ((true, Some(0)), (true, Some(1)))
        );

        let sans = &leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        let got: Vec<String> = sans
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => (*dns).to_owned(),
                GeneralName::IPAddress([a, b, c, d]) => IpAddr::from([*a, *b, *c, *d]).to_string(),
                GeneralName::IPAddress(v6) => {
                    IpAddr::from(<[u8; 16]>::try_from(*v6).unwrap()).to_string()
                }
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        let want: Vec<String> = ids.iter().map(Identifier::value).collect();
        assert_eq!(got, want, "SANs are exactly the identifiers, not the CSR's");
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert_eq!(ku.key_encipherment(), rsa);
        let key_id = |c: &X509Certificate<'_>, authority: bool| {
            c.iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(a) if authority => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    ParsedExtension::SubjectKeyIdentifier(k) if !authority => Some(k.0.to_vec()),
                    _ => None,
                })
        };
        assert_eq!(key_id(&leaf, true).unwrap(), key_id(&int, false).unwrap());
        assert!(leaf.raw_serial().len() >= 16 && leaf.raw_serial()[0] & 0x80 == 0);
        let cn = leaf
            .subject()
            .iter_common_name()
            .next()
            .map(|c| c.as_str().unwrap());
        assert_eq!(cn, Some("www.example.test"));
    }

    /// `openssl verify` as a second, independent check, when openssl is installed.
    fn openssl_verify(dir: &Path, chain: &IssuedChain) {
        if Command::new("openssl").arg("version").output().is_err() {
            return;
        }
        for (name, der) in ["leaf.pem", "int.pem", "root.pem"]
            .iter()
            .zip(&chain.certificates)
        {
            fs::write(
                dir.join(name),
                pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())),
            )
            .unwrap();
        }
        let out = Command::new("openssl")
            .args([
                "verify",
                "-x509_strict",
                "-purpose",
                "sslserver",
                "-CAfile",
                "root.pem",
            ])
            .args(["-untrusted", "int.pem", "leaf.pem"])
            .current_dir(dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), "leaf.pem: OK");
    }

    #[test]
    fn reopening_reuses_the_ca_and_refuses_a_broken_set() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("softcas");
        let first = open(&dir, 3600).unwrap();
        let files = [ROOT_CRT, ROOT_KEY, INTERMEDIATE_CRT, INTERMEDIATE_KEY];
        let read_all = || files.map(|f| fs::read(dir.join(f)).unwrap());
        let before = read_all();
        let second = open(&dir, 3600).unwrap();
        assert_eq!(before, read_all());
        assert_eq!(first.roots(), second.roots());
        assert_eq!(first.intermediate_der(), second.intermediate_der());
        assert_eq!(
            pem::parse(second.root_pem()).unwrap().contents(),
            second.roots()[0]
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode(&dir.join(ROOT_KEY)), mode(&dir.join(INTERMEDIATE_KEY))),
            (0o600, 0o600)
        );
        assert_eq!(mode(&dir), 0o700);
        let root = parse(&second.root_der);
        let cn = root
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "acmeproxy Root CA");
        let validity = root.validity();
        let lifetime = validity.not_after.to_datetime() - validity.not_before.to_datetime();
        assert!(lifetime > time::Duration::days(3649));

        fs::remove_file(dir.join(INTERMEDIATE_CRT)).unwrap();
        let err = open(&dir, 3600).unwrap_err().to_string();
        assert!(err.contains("intermediate.crt is missing"), "{err}");
        assert!(!dir.join(INTERMEDIATE_CRT).exists(), "nothing regenerated");
        assert_eq!(fs::read(dir.join(ROOT_KEY)).unwrap(), before[1]);
        fs::write(dir.join(INTERMEDIATE_CRT), &before[2]).unwrap();
        fs::write(
            dir.join(INTERMEDIATE_KEY),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = open(&dir, 3600).unwrap_err().to_string();
        assert!(err.contains("intermediate.key is corrupt"), "{err}");
        fs::write(dir.join(ROOT_CRT), "garbage").unwrap();
        let err = open(&dir, 3600).unwrap_err().to_string();
        assert!(err.contains("root.crt is corrupt"), "{err}");
    }

    #[tokio::test]
    async fn issues_verifiable_chains_for_ec_ed25519_and_rsa_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = open(tmp.path(), 7200).unwrap();
        let keys = [
            (
                KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
                false,
            ),
            (KeyPair::generate_for(&PKCS_ED25519).unwrap(), false),
            (KeyPair::from_pem(RSA_KEY).unwrap(), true),
        ];
        for (key, rsa) in keys {
            let req = request(&key, "not-asked-for.example", ids());
            let now = OffsetDateTime::now_utc();
            let chain = ca.create_certificate(&req, &NoCheckpoint).await.unwrap();
            check_chain(&chain, &ids(), rsa);
            assert_eq!(
                chain.certificates[1..],
                [ca.intermediate_der().to_vec(), ca.roots()[0].clone()]
            );
            let validity = parse(&chain.certificates[0]).validity().clone();
            let (nb, na) = (
                validity.not_before.to_datetime(),
                validity.not_after.to_datetime(),
            );
            assert!(nb <= now && now - nb <= time::Duration::minutes(2));
            assert!((na - now - time::Duration::hours(2)).abs() <= time::Duration::seconds(5));
            openssl_verify(tmp.path(), &chain);
        }
    }

    #[tokio::test]
    async fn honours_requested_validity_within_the_intermediate() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = open(tmp.path(), 3600).unwrap();
        let key = KeyPair::generate().unwrap();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let mut req = request(
            &key,
            "x.example",
            vec![Identifier::Ip("10.0.0.1".parse().unwrap())],
        );
        (req.not_before, req.not_after) = (Some(now), Some(now + time::Duration::days(10)));
        let chain = ca.create_certificate(&req, &NoCheckpoint).await.unwrap();
        let leaf = parse(&chain.certificates[0]);
        assert_eq!(leaf.validity().not_before.to_datetime(), now);
        assert_eq!(
            leaf.validity().not_after.to_datetime(),
            now + time::Duration::days(10)
        );
        assert_eq!(
            leaf.subject().iter_common_name().count(),
            0,
            "IP-only: no CN"
        );

        req.not_after = Some(now + time::Duration::days(365 * 50));
        let chain = ca.create_certificate(&req, &NoCheckpoint).await.unwrap();
        let end = parse(&chain.certificates[0])
            .validity()
            .not_after
            .to_datetime();
        assert_eq!(
            end,
            parse(ca.intermediate_der())
                .validity()
                .not_after
                .to_datetime()
        );

        req.not_after = Some(now - time::Duration::days(1));
        let err = ca
            .create_certificate(&req, &NoCheckpoint)
            .await
            .unwrap_err();
        assert_eq!(kind(err), Some(ProblemType::Malformed));
        req.csr_der[40] ^= 1;
        let err = ca
            .create_certificate(&req, &NoCheckpoint)
            .await
            .unwrap_err();
        assert_eq!(kind(err), Some(ProblemType::BadCsr));
    }

    #[tokio::test]
    async fn revoking_twice_is_already_revoked() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = open(tmp.path(), 3600).unwrap();
        let key = KeyPair::generate().unwrap();
        let chain = ca
            .create_certificate(&request(&key, "a.example", ids()), &NoCheckpoint)
            .await
            .unwrap();
        let serial = hex(parse(&chain.certificates[0]).raw_serial());
        let certificate_der = chain.certificates[0].clone();
        let mut req = RevokeRequest {
            certificate_der,
            serial_hex: serial.clone(),
            reason: 7,
        };
        let err = ca.revoke_certificate(&req).await.unwrap_err();
        assert_eq!(kind(err), Some(ProblemType::BadRevocationReason));
        req.reason = 1;
        ca.revoke_certificate(&req).await.unwrap();
        assert!(ca.is_revoked(&serial));
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(tmp.path().join(REVOKED)).unwrap()).unwrap();
        assert_eq!(json[normalize_serial(&serial)]["reason"], 1);

        let by_serial = RevokeRequest {
            certificate_der: Vec::new(),
            serial_hex: serial.to_uppercase(),
            reason: 4,
        };
        let err = ca.revoke_certificate(&by_serial).await.unwrap_err();
        assert_eq!(kind(err), Some(ProblemType::AlreadyRevoked));
        let reopened = open(tmp.path(), 3600).unwrap();
        assert!(reopened.is_revoked(&serial));
        let err = reopened.revoke_certificate(&req).await.unwrap_err();
        assert_eq!(kind(err), Some(ProblemType::AlreadyRevoked));

        let other = tempfile::tempdir().unwrap();
        let foreign = open(other.path(), 3600).unwrap();
        let chain = foreign
            .create_certificate(&request(&key, "a.example", ids()), &NoCheckpoint)
            .await
            .unwrap();
        req.certificate_der = chain.certificates[0].clone();
        let err = ca.revoke_certificate(&req).await.unwrap_err();
        assert_eq!(kind(err), Some(ProblemType::Unauthorized));
    }
}
