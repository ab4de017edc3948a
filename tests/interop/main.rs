//! Real ACME clients (certbot, lego, acme.sh, uacme, dehydrated...) against
//! the real `acmeproxy` binary: with softcas (`clients`) and in front of
//! Pebble (`upstream`). The shell helpers they use live next to this file.

mod clients;
mod replicas;
mod upstream;
