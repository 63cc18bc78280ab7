//! SCRAM-SHA-256 messages from an untrusted peer, on both sides: the broker reads a
//! client-first then a client-final message; the client reads a server-first then a
//! server-final one. Every malformed message is an error, never a panic; a forged final
//! message never authenticates. Also the certificate reader of mTLS (`dns_names_of`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use quorra::protocol::scram::{ClientExchange, Credential, ServerExchange};

fuzz_target!(|data: &[u8]| {
    let (first, rest) = data.split_at(data.len() / 2);
    let (first, rest) = (String::from_utf8_lossy(first), String::from_utf8_lossy(rest));
    // Few iterations: the fuzzer explores the parser, not PBKDF2.
    let credential = Credential::new("password", b"0123456789abcdef", 16);
    let decoy = credential.clone();
    if let Ok((exchange, _)) =
        ServerExchange::start(&first, "server-nonce-0123456789", |_| Some(credential), |_| decoy)
    {
        assert!(exchange.finish(&rest).is_err(), "a fuzzed client-final never authenticates");
    }
    if let Ok((client, _)) = ClientExchange::start("alice", "password", "client-nonce-0123456789") {
        if let Ok((awaiting, _)) = client.answer(&first) {
            let _ = awaiting.verify(&rest);
        }
    }
    let _ = quorra::net::tls::dns_names_of(&rustls::pki_types::CertificateDer::from(data));
});
