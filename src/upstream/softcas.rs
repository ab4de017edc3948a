//! softcas: a local CA (being written).
