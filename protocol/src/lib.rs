//! Everything that crosses a process boundary: digest and id newtypes, rkyv messages,
//! length-prefixed framing on QUIC streams, mutual TLS, and the protocol version.
//! No business logic lives here.
