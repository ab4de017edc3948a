//! acmeproxy in front of each upstream CA: Pebble (externalcas), step-ca
//! (stepcas), Vault and OpenBao (vaultcas), and a server killed while an
//! upstream call is in flight (`crash`).

mod chaos;
mod crash;
mod openbao;
mod pebble;
mod profiles;
mod routes;
mod stepca;
mod vault;
