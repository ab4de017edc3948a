//! softcas: a local two-level CA (root and intermediate, EC P-256, rcgen) kept in
//! the data directory — the embedded default upstream for a first run and for
//! tests. It issues RFC 5280 server certificates for the
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
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
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
    /// Waits this long before each signature (benchmarks: a slow upstream).
    pub sign_delay: std::time::Duration,
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
    sign_delay: std::time::Duration,
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
            sign_delay: opts.sign_delay,
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
        // Not a CA: a critical basicConstraints holding an empty SEQUENCE,
        // as Let's Encrypt writes it. rcgen's `ExplicitNoCa` encodes
        // `cA FALSE`, a DEFAULT value that DER forbids (X.690 11.5) and that
        // current Python `cryptography` (certbot) refuses to parse.
        params.is_ca = IsCa::NoCa;
        params.custom_extensions = vec![not_a_ca()];
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

    fn signs_locally(&self) -> bool {
        true
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
        // A CSR the RA verified already (finalize's policy check) is not
        // verified twice: the signature check is the most expensive step of
        // a local issuance after the signing itself.
        if !req.csr_verified {
            csr.verify_signature()
                .map_err(|_| rejected(ProblemType::BadCsr, "the CSR signature does not verify"))?;
        }
        let spki = &csr.certification_request_info.subject_pki;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| {
            rejected(
                ProblemType::BadPublicKey,
                "the CSR key type is not supported",
            )
        })?;
        let is_rsa = matches!(spki.parsed(), Ok(PublicKey::RSA(_)));
        if !self.sign_delay.is_zero() {
            tokio::time::sleep(self.sign_delay).await;
        }

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

/// basicConstraints (RFC 5280 4.2.1.9) with `cA` left at its DEFAULT FALSE,
/// marked critical: `SEQUENCE {}`.
fn not_a_ca() -> CustomExtension {
    const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
    let mut ext = CustomExtension::from_oid_content(BASIC_CONSTRAINTS, vec![0x30, 0x00]);
    ext.set_criticality(true);
    ext
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
mod tests;
