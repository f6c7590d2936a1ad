//! sloguard's HTTP/1.1 response decoder (`upstream::h1::decode`) on arbitrary bytes, fed whole
//! and in pieces: no panic, and the same head and body however the input is split.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sloguard::upstream::h1::fuzz_response(data);
});
