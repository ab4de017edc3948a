//! The one place the tests write a `ca.json`: a loopback server with one
//! ACME provisioner `acme`. [`CaJson::to_json`] is the only function that
//! lays out the document, and what it returns is written by the server's own
//! configuration types (`acmeproxy::config::Config`, parsed strictly and
//! serialized again): a key the server does not know fails the test at
//! set-up, naming its path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// A test server's configuration.
#[derive(Clone, Debug)]
pub struct CaJson {
    /// `address`; `127.0.0.1:0` picks a free port (in-process servers).
    pub address: String,
    /// `dataDir`.
    pub data_dir: PathBuf,
    /// `db.type` (`memory`, `sled` or `postgresql`); `None` leaves the default.
    pub db: Option<&'static str>,
    /// Further keys of `db` (`dataSource`, `database`, `passwordFile`...,
    /// see [`CaJson::postgres`]).
    pub db_keys: Value,
    /// `metrics.address`; `None` turns metrics off.
    pub metrics: Option<String>,
    /// The whole `authority` block (see [`CaJson::softcas`]).
    pub authority: Value,
    /// The `validation` block (see [`CaJson::validation`]); `None` leaves it out.
    pub validation: Option<Value>,
    /// Further top-level keys (`root`, `connections`...), merged last.
    pub extra: Value,
}

impl CaJson {
    /// softcas, the memory store, metrics off, no validation block.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            address: "127.0.0.1:0".to_owned(),
            data_dir: data_dir.into(),
            db: Some("memory"),
            db_keys: json!({}),
            metrics: None,
            authority: Self::softcas(),
            validation: None,
            extra: json!({}),
        }
    }

    /// Listening on 127.0.0.1:`port`.
    pub fn port(mut self, port: u16) -> Self {
        self.address = format!("127.0.0.1:{port}");
        self
    }

    /// The store.
    pub fn db(mut self, db: Option<&'static str>) -> Self {
        self.db = db;
        self
    }

    /// The PostgreSQL store: `dataSource` (a URL without the password),
    /// `database`, and the password in `passwordFile` when given.
    pub fn postgres(
        mut self,
        data_source: &str,
        database: &str,
        password_file: Option<&Path>,
    ) -> Self {
        self.db = Some("postgresql");
        self.db_keys = json!({"dataSource": data_source, "database": database});
        if let Some(file) = password_file {
            self.db_keys["passwordFile"] = json!(file);
        }
        self
    }

    /// The `authority` block.
    pub fn authority(mut self, authority: Value) -> Self {
        self.authority = authority;
        self
    }

    /// Validation against loopback responders, within `timeout_seconds`.
    pub fn validation(
        mut self,
        http_port: u16,
        tls_alpn_port: u16,
        dns: SocketAddr,
        timeout_seconds: u64,
    ) -> Self {
        self.validation = Some(json!({
            "httpPort": http_port,
            "tlsAlpnPort": tls_alpn_port,
            "resolvers": [dns.to_string()],
            "timeoutSeconds": timeout_seconds,
            // The responders listen on loopback, which the default denies.
            "denyNetworks": []
        }));
        self
    }

    /// The one ACME provisioner, `acme`.
    pub fn provisioner() -> Value {
        json!({"type": "ACME", "name": "acme"})
    }

    /// A softcas `authority` block with [`CaJson::provisioner`].
    pub fn softcas() -> Value {
        json!({"type": "softcas", "provisioners": [Self::provisioner()]})
    }

    /// The document.
    pub fn to_json(&self) -> Value {
        let mut doc = json!({
            "address": self.address,
            "dnsNames": ["localhost", "127.0.0.1"],
            "dataDir": self.data_dir,
            "logger": {"format": "text"},
            "metrics": match &self.metrics {
                Some(address) => json!({"address": address}),
                None => json!({"enabled": false}),
            },
            "authority": self.authority,
        });
        if let Some(db) = self.db {
            doc["db"] = json!({"type": db});
            if let Some(keys) = self.db_keys.as_object() {
                for (k, v) in keys {
                    doc["db"][k] = v.clone();
                }
            }
        }
        if let Some(validation) = &self.validation {
            doc["validation"] = validation.clone();
        }
        if let Some(extra) = self.extra.as_object() {
            for (k, v) in extra {
                doc[k] = v.clone();
            }
        }
        let typed = acmeproxy::config::Config::from_json(&doc.to_string())
            .unwrap_or_else(|e| panic!("the test's ca.json is not one the server reads: {e}"));
        serde_json::to_value(&typed).expect("the configuration types serialize")
    }

    /// Writes the document to `path`.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        std::fs::write(path, self.to_json().to_string())
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}
