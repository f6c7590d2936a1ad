//! sloguard's own HTTP/1.1 request-head reader (`proxy::connections::plain`) on arbitrary bytes,
//! fed whole and in pieces: no panic, the same outcome however the input is split, and a plain
//! head written back out reads the same.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sloguard::proxy::fuzz_request(data);
});
