//! Identifier newtypes for stored resources. Ids are random, URL-safe and
//! carry no meaning; URLs are built from them in `http::links`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// `n` random bytes, base64url without padding (for ids, tokens and nonces).
pub fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // SystemRandom reads the OS generator; if that ever fails the process
    // cannot make safe tokens at all, so fall back to nothing weaker.
    if SystemRandom::new().fill(&mut buf).is_err() {
        tracing::error!("the operating system's random generator failed");
        std::process::abort();
    }
    URL_SAFE_NO_PAD.encode(buf)
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A new random id.
            pub fn random() -> Self {
                Self(random_token(16))
            }

            /// Takes an id from a URL path segment. Only URL-safe base64
            /// characters are accepted, so an id can never smuggle a separator
            /// into a store key.
            pub fn parse(s: &str) -> Option<Self> {
                let ok = !s.is_empty()
                    && s.len() <= 64
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                ok.then(|| Self(s.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An account id.
    AccountId
);
id_type!(
    /// An order id.
    OrderId
);
id_type!(
    /// An authorization id.
    AuthzId
);
id_type!(
    /// A certificate id.
    CertId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_url_safe_and_parse_back() {
        let id = OrderId::random();
        assert_eq!(id.as_str().len(), 22);
        assert_eq!(OrderId::parse(id.as_str()), Some(id));
        assert_eq!(OrderId::parse("a/b"), None);
        assert_eq!(OrderId::parse(""), None);
    }
}
