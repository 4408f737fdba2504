//! QUIC transport for Syncable (quinn, rustls with the ring provider).
//!
//! This crate is where identity, pairing, framing, sessions and parallel
//! broadcast will live. It has no public API yet: the protocol it carries is
//! being built in `sync-core` first, and this crate is deliberately empty
//! until then rather than exposing placeholders.
