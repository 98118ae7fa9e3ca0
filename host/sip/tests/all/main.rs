//! The SIP stack's driver over real sockets on loopback (one test binary, a module per area).

mod tcp_limits;
