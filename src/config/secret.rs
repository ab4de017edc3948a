//! Values that never show in `Debug`, `Display` or logs: secrets, and the
//! JSON of keys acmeproxy does not read (which may hold secrets of their own).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A secret value (EAB MAC key, password, connection URL). `Debug` and
/// `Display` print `***`; serializing writes the value (it is the file
/// format).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    /// Wraps a secret.
    pub fn new(s: T) -> Self {
        Self(s)
    }
}

impl Secret<String> {
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Secret<Vec<u8>> {
    /// The secret bytes; call only where they are used.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<T> std::fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// JSON that acmeproxy accepts without reading it (step-ca keys it does not
/// use, the free-form `config` of stepcas). `Debug` never prints it: it may
/// hold secrets (step-ca's top-level `password`, say).
#[derive(Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Opaque(pub Value);

impl std::fmt::Debug for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Opaque(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2\"");
        let o = Opaque(serde_json::json!({"password": "hunter2"}));
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
