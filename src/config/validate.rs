//! Cross-field validation of a parsed `ca.json`: the one place start-up and
//! `check-config` decide what is an error and what only a warning.

use std::collections::BTreeSet;

use super::{
    ClaimsConfig, Config, ConfigError, MetricsListenSource, StoreChoice, Warnings,
    parse_go_duration,
};

impl Config {
    pub(super) fn validate(&self) -> Result<Warnings, ConfigError> {
        let mut warnings = Vec::new();
        let mut ignored = BTreeSet::new();
        for (name, present) in [
            ("federatedRoots", self.federated_roots.is_some()),
            ("crt", self.crt.is_some()),
            ("key", self.key.is_some()),
            ("ssh", self.ssh.is_some()),
            ("templates", self.templates.is_some()),
            ("commonName", self.common_name.is_some()),
            ("insecureAddress", self.insecure_address.is_some()),
            ("kms", self.kms.is_some()),
            ("crl", self.crl.is_some()),
            ("password", self.password.is_some()),
            ("authority.template", self.authority.template.is_some()),
            ("authority.backdate", self.authority.backdate.is_some()),
            ("authority.options", self.authority.options.is_some()),
            (
                "authority.enableAdmin",
                self.authority.enable_admin.is_some(),
            ),
            (
                "authority.disableIssuedAtCheck",
                self.authority.disable_issued_at_check.is_some(),
            ),
            ("authority.admins", self.authority.admins.is_some()),
        ] {
            if present {
                ignored.insert(name.to_owned());
            }
        }
        if let Ok(MetricsListenSource { top, plugin }) = self.metrics_sources() {
            if top.is_some_and(|m| m.data_source.is_some()) {
                ignored.insert("metrics.dataSource".to_owned());
            }
            if plugin.is_some_and(|m| m.data_source.is_some()) {
                ignored.insert("authority.config.metrics.dataSource".to_owned());
            }
        }
        if let Some(tls) = &self.tls {
            if tls.renegotiation.is_some() {
                ignored.insert("tls.renegotiation".to_owned());
            }
            if tls.cipher_suites.is_some() {
                ignored.insert("tls.cipherSuites".to_owned());
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError::invalid(
                    "tls",
                    "certFile and keyFile go together: give both or neither",
                ));
            }
        }
        if let Some(db) = &self.db {
            if db.badger_file_loading_mode.is_some() {
                ignored.insert("db.badgerFileLoadingMode".to_owned());
            }
            if matches!(
                db.kind.as_str(),
                "badgerv2" | "badger" | "badgerV2" | "bbolt"
            ) {
                warnings.push(format!(
                    "db.type {:?} is read as the embedded sled store in {} (the step-ca database is not read)",
                    db.kind,
                    self.data_dir().join("db").display()
                ));
            }
        }
        for c in self.authority.claims.iter().chain(
            self.authority
                .provisioners
                .iter()
                .filter_map(|p| p.claims.as_ref()),
        ) {
            collect_claims_ignored(c, &mut ignored);
            for (k, v) in [
                ("minTLSCertDuration", &c.min_tls_cert_duration),
                ("maxTLSCertDuration", &c.max_tls_cert_duration),
                ("defaultTLSCertDuration", &c.default_tls_cert_duration),
            ] {
                if let Some(v) = v {
                    parse_go_duration(v)
                        .map_err(|m| ConfigError::invalid(format!("claims.{k}"), m))?;
                }
            }
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.authority.provisioners.iter().enumerate() {
            let key = format!("authority.provisioners[{i}]");
            if p.kind != "ACME" {
                return Err(ConfigError::invalid(
                    format!("{key}.type"),
                    format!("only ACME provisioners are served, not {:?}", p.kind),
                ));
            }
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    "a provisioner name must be non-empty and use only letters, digits, '-', '_' and '.'",
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("provisioner {:?} is defined twice", p.name),
                ));
            }
            if matches!(&p.challenges, Some(c) if c.is_empty()) {
                return Err(ConfigError::invalid(
                    format!("{key}.challenges"),
                    "offer at least one challenge type",
                ));
            }
            for (k, present) in [
                ("options", p.options.is_some()),
                ("forceCN", p.force_cn.is_some()),
                ("attestationFormats", p.attestation_formats.is_some()),
            ] {
                if present {
                    ignored.insert(format!("{key}.{k}"));
                }
            }
        }
        for (key, policy) in
            std::iter::once(("authority.policy".to_owned(), &self.authority.policy)).chain(
                self.authority
                    .provisioners
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("authority.provisioners[{i}].policy"), &p.policy)),
            )
        {
            let Some(policy) = policy else { continue };
            if policy.ssh.is_some() {
                ignored.insert(format!("{key}.ssh"));
            }
            if let Some(x) = &policy.x509 {
                for (side, names) in [("allow", &x.allow), ("deny", &x.deny)] {
                    let Some(n) = names else { continue };
                    for (k, v) in [
                        ("email", &n.email),
                        ("uri", &n.uri),
                        ("commonName", &n.common_name),
                    ] {
                        if !v.is_empty() {
                            ignored.insert(format!("{key}.x509.{side}.{k}"));
                        }
                    }
                }
            }
        }
        if self.authority.provisioners.is_empty() {
            return Err(ConfigError::invalid(
                "authority.provisioners",
                "define at least one provisioner, e.g. {\"type\": \"ACME\", \"name\": \"acme\"}",
            ));
        }
        self.check_values()?;
        self.upstream_concurrency()?;
        self.rate_limits()?;
        match self.authority.kind.as_str() {
            "softcas" => {
                self.softcas()?.sign_delay()?;
            }
            "externalcas" => {
                // ca_url was checked with the other values (`check_values`).
                let ext = self.externalcas()?;
                let key = ext.eab_hmac_key()?;
                if key.is_some() == ext.eab_kid.is_empty() {
                    return Err(ConfigError::invalid(
                        "authority.config.eab_kid",
                        "eab_kid and the EAB MAC key go together: give both or neither",
                    ));
                }
                if let Some(b) = &ext.ca_bundle {
                    if !b.is_file() {
                        return Err(ConfigError::invalid(
                            "authority.config.ca_bundle",
                            format!("{} is not a readable file", b.display()),
                        ));
                    }
                }
                if ext.dns01_txt.is_some() {
                    ignored.insert("authority.config.dns01_txt".to_owned());
                }
            }
            "vaultcas" => {
                self.vaultcas()?;
            }
            "stepcas" => {
                self.stepcas()?;
            }
            other => {
                return Err(ConfigError::invalid(
                    "authority.type",
                    format!(
                        "unknown upstream {other:?}; use \"softcas\", \"externalcas\", \"stepcas\" or \"vaultcas\""
                    ),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if tls.max_version.is_some_and(|v| v < 1.2) {
                return Err(ConfigError::invalid(
                    "tls.maxVersion",
                    "acmeproxy speaks TLS 1.2 and 1.3 only; set maxVersion to 1.2 or 1.3",
                ));
            }
            if let (Some(lo), Some(hi)) = (tls.min_version, tls.max_version) {
                if lo > hi {
                    return Err(ConfigError::invalid(
                        "tls.minVersion",
                        "minVersion is above maxVersion",
                    ));
                }
            }
            for (k, v) in [
                ("minVersion", tls.min_version),
                ("maxVersion", tls.max_version),
            ] {
                if let Some(v) = v {
                    if !(1.0..=1.3).contains(&v) {
                        return Err(ConfigError::invalid(
                            format!("tls.{k}"),
                            format!("{v} is not a TLS version (1.2 or 1.3)"),
                        ));
                    }
                }
            }
        }
        if self
            .tls
            .as_ref()
            .and_then(|t| t.cert_file.as_ref())
            .is_none()
            && self.dns_names.is_empty()
        {
            return Err(ConfigError::invalid(
                "dnsNames",
                "name at least one DNS name (or IP) for the server's own certificate",
            ));
        }
        self.listen_addr()?;
        if let StoreChoice::Postgres(_) = self.store()? {
            return Err(ConfigError::invalid(
                "db.type",
                "the PostgreSQL store is not available in this version of acmeproxy; use \"sled\"",
            ));
        }
        self.metrics_listen()?;
        warnings.extend(self.metrics_port_warning());
        self.connection_limits()?;
        self.resolvers()?;
        if self.validation.timeout_seconds == 0 {
            return Err(ConfigError::invalid(
                "validation.timeoutSeconds",
                "must be at least 1",
            ));
        }
        warnings.extend(super::egress::loopback_warning(
            &self.validation.deny_networks,
            self.listen_addr().ok(),
        ));
        if !ignored.is_empty() {
            warnings.insert(
                0,
                format!(
                    "ignoring step-ca keys that acmeproxy does not use: {}",
                    ignored.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        Ok(Warnings(warnings))
    }
}

fn collect_claims_ignored(c: &ClaimsConfig, ignored: &mut BTreeSet<String>) {
    for (k, present) in [
        ("enableSSHCA", c.enable_ssh_ca.is_some()),
        ("disableRenewal", c.disable_renewal.is_some()),
        (
            "allowRenewalAfterExpiry",
            c.allow_renewal_after_expiry.is_some(),
        ),
        (
            "disableSmallstepExtensions",
            c.disable_smallstep_extensions.is_some(),
        ),
    ] {
        if present {
            ignored.insert(format!("claims.{k}"));
        }
    }
}
