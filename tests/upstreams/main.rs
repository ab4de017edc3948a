//! acmeproxy in front of each upstream CA: Pebble (externalcas), step-ca
//! (stepcas), Vault and OpenBao (vaultcas), and a server killed while an
//! upstream call is in flight (`crash`); and Pebble validating dns-01 at a
//! real BIND that the RA writes into (`dns01`).

mod chaos;
mod crash;
mod dns01;
mod openbao;
mod pebble;
mod profiles;
mod routes;
mod stepca;
mod vault;
